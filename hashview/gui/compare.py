"""Side-by-side comparison: a second viewer on a hit, optionally zoom-synchronised with the first.

Synchronising compares downsamples rather than trusting a re-entrancy flag alone, so a viewer
that reports its view change later (from a timer or an animation) cannot start a ping-pong.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLabel, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

RELATIVE_TOLERANCE = 1e-3  # downsamples this close count as equal


def _caption_label() -> QLabel:
    """A one-line caption that never widens the viewers (long names are just cut)."""
    label = QLabel("")
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class ViewerSync(QObject):
    """Keeps two viewers at the same downsample (zoom); each keeps its own centre."""

    def __init__(self, first, second, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.viewers = (first, second)
        self.enabled = True
        self._views: dict[int, tuple[float, float, float]] = {}
        self._applying = False
        first.viewChanged.connect(lambda cx, cy, ds: self._on_view_changed(0, cx, cy, ds))
        second.viewChanged.connect(lambda cx, cy, ds: self._on_view_changed(1, cx, cy, ds))

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        if self.enabled and 0 in self._views:
            self._on_view_changed(0, *self._views[0])  # bring the comparison in line now

    @contextlib.contextmanager
    def paused(self):
        """No synchronising inside (e.g. while a viewer opens a slide and fits it)."""
        applying, self._applying = self._applying, True
        try:
            yield
        finally:
            self._applying = applying

    def note_view(self, which: int, cx: float, cy: float, downsample: float) -> None:
        """Record a viewer's view without synchronising (after a paused change)."""
        self._views[which] = (cx, cy, downsample)

    def forget(self, which: int) -> None:
        """A viewer opened another slide: its old centre means nothing any more."""
        self._views.pop(which, None)

    def _on_view_changed(self, which: int, cx: float, cy: float, downsample: float) -> None:
        self._views[which] = (cx, cy, downsample)
        if not self.enabled or self._applying or downsample <= 0:
            return
        other = 1 - which
        if other not in self._views:
            return
        ocx, ocy, ods = self._views[other]
        if abs(ods - downsample) <= RELATIVE_TOLERANCE * downsample:
            return  # already in step: this is the echo of our own change
        self._applying = True
        try:
            self._views[other] = (ocx, ocy, downsample)
            self.viewers[other].center_on(ocx, ocy, downsample)
        finally:
            self._applying = False


class ComparePane(QWidget):
    """A header (what is shown, "Synchronise zoom", close) above a second slide viewer."""

    closeRequested = Signal()
    syncToggled = Signal(bool)

    def __init__(self, viewer: QWidget, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = viewer
        self.caption = _caption_label()
        self.sync = QCheckBox("Synchronise zoom")
        self.sync.setToolTip("Zooming either slide zooms the other to the same magnification")
        self.sync.toggled.connect(self.syncToggled)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Close the comparison")
        close.clicked.connect(self.closeRequested)
        header = QHBoxLayout()
        header.setContentsMargins(6, 2, 2, 2)
        header.addWidget(self.caption, 1)
        header.addWidget(self.sync)
        header.addWidget(close)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(header)
        layout.addWidget(viewer, 1)

    def show_hit(self, hit) -> None:
        label = hit.label or "no label"
        self.caption.setText(f"<b>#{hit.rank + 1}</b> d={hit.distance} · {label} · "
                             f"{hit.source_name}")
        self.caption.setToolTip(f"{hit.source_path}\nx {hit.x}, y {hit.y}, {hit.size} px")


class QueryPane(QWidget):
    """The main viewer with a caption that shows only while a comparison is open, so the two
    viewers side by side are labelled alike."""

    def __init__(self, viewer: QWidget, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = viewer
        self.caption = _caption_label()
        self.caption.setContentsMargins(6, 4, 6, 4)
        self.caption.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.caption)
        layout.addWidget(viewer, 1)

    def show_caption(self, text: Optional[str]) -> None:
        self.caption.setText(text or "")
        self.caption.setVisible(bool(text))
