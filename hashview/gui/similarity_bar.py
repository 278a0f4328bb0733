"""The similarity map's controls: a threshold and an opacity slider, and what the map shows.

A toolbar of the main window, shown while View ▸ Similarity map (H) is on. The threshold keeps
only tiles at most that many bits from the query coloured; at its right end every tile is.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QSlider, QWidget

DEFAULT_OPACITY = 55  # percent


class SimilarityBar(QWidget):
    thresholdChanged = Signal(object)  # int bits, or None for every tile
    opacityChanged = Signal(float)     # 0..1

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 32)
        self.threshold.setValue(32)
        self.threshold.setFixedWidth(160)
        self.threshold.setToolTip("Colour only tiles at most this many bits from the query")
        self.threshold_label = QLabel()
        self.threshold_label.setMinimumWidth(90)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(10, 100)
        self.opacity.setValue(DEFAULT_OPACITY)
        self.opacity.setFixedWidth(110)
        self.opacity.setToolTip("How strongly the map covers the tissue")
        self.status = QLabel("")
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.addWidget(QLabel("<b>Similarity map</b>"))
        layout.addSpacing(12)
        layout.addWidget(QLabel("Within"))
        layout.addWidget(self.threshold)
        layout.addWidget(self.threshold_label)
        layout.addWidget(QLabel("Opacity"))
        layout.addWidget(self.opacity)
        layout.addSpacing(12)
        layout.addWidget(self.status, 1)
        self.threshold.valueChanged.connect(self._on_threshold)
        self.opacity.valueChanged.connect(lambda v: self.opacityChanged.emit(v / 100.0))
        self._on_threshold(self.threshold.value())

    def set_scale(self, scale_max: int) -> None:
        """The slider's range for a map whose colour scale ends at ``scale_max`` bits; a new
        range starts at "every tile", the same range keeps the user's threshold."""
        if self.threshold.maximum() != scale_max:
            self.threshold.setRange(0, scale_max)
            self.threshold.setValue(scale_max)
        self._on_threshold(self.threshold.value())

    def current_threshold(self) -> int | None:
        value = self.threshold.value()
        return None if value >= self.threshold.maximum() else value

    def current_opacity(self) -> float:
        return self.opacity.value() / 100.0

    def show_status(self, text: str) -> None:
        self.status.setText(text)
        self.status.setToolTip(text)

    def _on_threshold(self, value: int) -> None:
        at_end = value >= self.threshold.maximum()
        self.threshold_label.setText("every tile" if at_end else f"≤ {value} bits")
        self.thresholdChanged.emit(self.current_threshold())
