"""Fixtures of the app tests: offscreen Qt, isolated user data and settings, no blocking boxes.

``tests/conftest.py`` already points HASHVIEW_HOME at a temporary folder (autouse) and builds the
session's small library (``slide_library``: the CMU slide and the Kather patches). Test modules
here import ``conftest`` by name, which pytest resolves to this file: the data paths are
repeated here for them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

DATA = Path(__file__).resolve().parents[1] / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"
TINY_SLIDE = DATA / "tiny-16px.svs"
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"
KATHER = DATA / "kather"
TUMOUR_PATCH = sorted((KATHER / "01_TUMOR").iterdir())[0]


@pytest.fixture(autouse=True)
def _gui_home(tmp_path, monkeypatch):
    """Each test gets its own HASHVIEW_HOME (settings file, jobs folder, user models)."""
    home = tmp_path / "hashview-home"
    home.mkdir()
    monkeypatch.setenv("HASHVIEW_HOME", str(home))
    return home


class MessageBoxes:
    """Stands in for QMessageBox's static functions: records them, answers Yes / Ok."""

    def __init__(self):
        self.calls: list[tuple[str, str, str]] = []

    def patch(self, monkeypatch):
        from PySide6.QtWidgets import QMessageBox

        for kind in ("warning", "critical", "information", "question"):
            monkeypatch.setattr(QMessageBox, kind, staticmethod(self._recorder(kind)))
        return self

    def _recorder(self, kind):
        from PySide6.QtWidgets import QMessageBox

        def record(parent, title, text, *args, **kwargs):
            self.calls.append((kind, title, text))
            return (QMessageBox.StandardButton.Yes if kind == "question"
                    else QMessageBox.StandardButton.Ok)
        return record

    def of(self, kind: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] == kind]


@pytest.fixture(autouse=True)
def message_boxes(monkeypatch):
    """No modal box can block a test; tests read what would have been shown."""
    return MessageBoxes().patch(monkeypatch)


@pytest.fixture
def library_path(slide_library):
    return Path(slide_library[0])


@pytest.fixture
def window(qtbot, library_path):
    """The main window with the session library open (its searcher loads in the background)."""
    from hashview.gui.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    assert win.open_library(library_path)
    yield win
    win.jobs.cancel_all()
    qtbot.waitUntil(lambda: win.jobs.running_count() == 0, timeout=30_000)
    win.close()


class StallMeter:
    """A 10 ms timer on the UI thread. ``ticks`` counts its firings: ticks while a job runs show
    the event loop kept turning (a load-independent check; a busy machine only adds ticks).
    ``max_gap`` is the longest stall, printed for information only: wall-clock limits in unit
    tests flake on a loaded machine, so the figure is not asserted."""

    def __init__(self):
        from PySide6.QtCore import QTimer

        self.max_gap = 0.0
        self.ticks = 0
        self._last = time.monotonic()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        now = time.monotonic()
        self.max_gap = max(self.max_gap, now - self._last)
        self._last = now
        self.ticks += 1

    def stop(self):
        self.timer.stop()


VIEWER_SIZE = (800, 600)


@pytest.fixture
def slide():
    """The CMU slide, open (closed after the test)."""
    from hashview.slides import open_source

    source = open_source(SLIDE)
    yield source
    source.close()


@pytest.fixture
def viewer(qtbot, slide):  # depends on ``slide`` so that the slide is closed after the viewer
    """A shown SlideViewer of VIEWER_SIZE with no slide open."""
    from hashview.gui.viewer import SlideViewer

    widget = SlideViewer()
    widget.resize(*VIEWER_SIZE)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    yield widget
    widget.close_source()  # before the fixture closes the slide: no worker may touch it
