"""``hashview`` without a sub-command: the desktop app.

``run_app(paths)`` opens what is given (slides, images, folders, libraries); with nothing given
it reopens the last library, or else the demo library (built in the background on first run:
indexing the sample slide and patches takes a few seconds) and shows the demo slide.

When a HashView window is already running for this user, ``run_app`` hands it the paths (it opens
them as if they were dropped on it, and comes to the front) and returns at once without opening
a second window: ``hashview.gui.single_instance``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from hashview.desktop_entry import window_icon_path
from hashview.errors import HashViewError
from hashview.gui.single_instance import InstanceServer, send_to_running


class DemoLibraryBuilder(QObject):
    """Builds (or just checks) the demo library on a worker thread.

    Signals: ``progress(str)`` for the status bar, ``finished(path)``, ``failed(message)``.
    """

    progress = Signal(str)
    finished = Signal(str)
    failed = Signal(str)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)

    def start(self, library_path: Optional[str | Path] = None) -> None:
        builder = self

        class Task(QRunnable):
            def run(self) -> None:
                from hashview.demo import build_demo_library

                def report(p) -> None:
                    total = f"/{p.total}" if p.total else ""
                    builder._emit(builder.progress,
                                  f"Building the demo library: {p.stage} {p.done}{total}"
                                  + (f" ({p.message})" if p.message else ""))
                try:
                    path, result = build_demo_library(library_path, progress=report)
                except HashViewError as exc:
                    builder._emit(builder.failed, exc.message)
                except Exception as exc:  # noqa: BLE001  (first run must not crash the app)
                    builder._emit(builder.failed, f"demo library: {exc}")
                else:
                    builder._emit(builder.finished, str(path))

        self.progress.emit("Building the demo library (first run, a few seconds)…")
        self.pool.start(Task())

    @staticmethod
    def _emit(signal, value: str) -> None:
        try:
            signal.emit(value)
        except RuntimeError:
            pass  # the app closed meanwhile

    def wait(self, msecs: int = 120000) -> bool:
        return self.pool.waitForDone(msecs)


def open_demo(window, show_slide: bool = True) -> DemoLibraryBuilder:
    """Show the demo slide now; open the demo library once it is built (or found)."""
    from hashview.demo import DEMO_SLIDE, default_demo_library

    if show_slide:
        window.open_slide(DEMO_SLIDE)
    builder = DemoLibraryBuilder(window)
    builder.progress.connect(lambda text: window.statusBar().showMessage(text))
    builder.finished.connect(window.open_library)
    builder.failed.connect(lambda message: window.warn(message, "Demo library"))
    window.demo_builder = builder
    builder.start(default_demo_library())
    return builder


def open_initial(window, paths: Sequence[str]) -> None:
    """What ``run_app`` opens: the given paths, else the last library and slide, else the demo."""
    if paths:
        libraries = [p for p in paths if Path(p).suffix.lower() in (".h5", ".hdf5")]
        others = [p for p in paths if p not in libraries]
        for library in libraries[:1]:
            window.open_library(library)
        if not libraries and not _open_last_library(window):
            open_demo(window, show_slide=False)  # something to search the given images in
        if others:
            window.handle_dropped_paths(others)
        return
    if not _open_last_library(window):
        open_demo(window)
        return
    _open_last_slide(window)


def _open_last_library(window) -> bool:
    last = window.settings.last_library
    return bool(last) and Path(last).is_file() and window.open_library(last)


def _open_last_slide(window) -> None:
    """Where the user left off: the slide open when the app last closed, if it is still there
    (one status-bar line, no box, when it no longer opens)."""
    last = window.settings.last_slide
    if last and Path(last).is_file():
        window.open_slide(last, quiet=True)


def create_app(argv: Optional[list[str]] = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationName("HashView")
    app.setOrganizationName("HashView")
    app.setApplicationDisplayName("HashView")
    app.setDesktopFileName("org.hashview.HashView")  # Wayland app id: matches the menu entry
    icon = window_icon_path()
    if icon is not None:
        app.setWindowIcon(QIcon(str(icon)))
    return app


def bring_to_front(window) -> None:
    window.show()
    window.setWindowState(window.windowState() & ~Qt.WindowState.WindowMinimized)
    window.raise_()
    window.activateWindow()


def open_in_running_window(window, paths: Sequence[str]) -> None:
    """What a later ``hashview PATH...`` does in this window: the same as dropping the paths."""
    bring_to_front(window)
    if paths:
        window.handle_dropped_paths(list(paths))


def serve_later_starts(window, name: Optional[str] = None) -> InstanceServer:
    """Make ``window`` the one later ``hashview`` starts hand their paths to."""
    server = InstanceServer(name, parent=window)
    server.paths_received.connect(lambda paths: open_in_running_window(window, paths))
    if not server.listen():  # the app works without it; later starts then open their own window
        print(f"hashview: {server.name}: cannot listen for later starts "
              f"({server.error_string()})", file=sys.stderr)
    return server


def run_app(paths: Sequence[str] = ()) -> int:
    app = create_app()
    paths = [str(p) for p in paths]
    if send_to_running(paths):
        return 0
    from hashview.gui.main_window import MainWindow  # after the hand-off check: it is slow

    window = MainWindow()
    window.show()
    serve_later_starts(window)
    open_initial(window, paths)
    return app.exec()
