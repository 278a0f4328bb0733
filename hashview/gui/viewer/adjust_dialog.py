"""View ▸ Adjust display…: a small non-modal window with brightness, contrast and gamma sliders.

It only emits the setting (``adjustmentChanged``); the viewers apply it to what they paint.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel,
                               QSlider, QVBoxLayout, QWidget)

from .display import DisplayAdjustment

GAMMA_SLIDER_SPAN = 50  # slider steps per doubling of gamma: -100..100 is 0.25..4


def gamma_from_slider(value: int) -> float:
    return round(2.0 ** (value / GAMMA_SLIDER_SPAN), 3)


def slider_from_gamma(gamma: float) -> int:
    return round(math.log2(max(gamma, 1e-6)) * GAMMA_SLIDER_SPAN)


class DisplayAdjustDialog(QDialog):
    """Three sliders and Reset; every move emits the new :class:`DisplayAdjustment`."""

    adjustmentChanged = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Adjust display")
        self.setModal(False)
        self.brightness = self._slider("Brighter or darker: shifts every level")
        self.contrast = self._slider("Spreads the levels apart (or together) about mid-grey")
        self.gamma = self._slider("Above 1 lifts the mid-tones (pale stain), below 1 darkens "
                                  "them; black and white stay")
        self._values = {s: QLabel() for s in (self.brightness, self.contrast, self.gamma)}
        form = QFormLayout()
        for text, slider in (("&Brightness", self.brightness), ("&Contrast", self.contrast),
                             ("&Gamma", self.gamma)):
            row = QHBoxLayout()
            row.addWidget(slider, 1)
            label = self._values[slider]
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance("-100") + 6)
            label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            row.addWidget(label)
            name = QLabel(text)
            name.setBuddy(slider)  # Alt+B, Alt+C, Alt+G move to the slider
            form.addRow(name, row)
        note = QLabel("Changes what you see only: indexing and searching use the slide's "
                      "own pixels.")
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Reset
                                   | QDialogButtonBox.StandardButton.Close)
        buttons.button(QDialogButtonBox.StandardButton.Reset).clicked.connect(self.reset)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.setMinimumWidth(360)
        self._update_labels()

    def _slider(self, tip: str) -> QSlider:
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(-100, 100)
        slider.setPageStep(10)
        slider.setToolTip(tip)
        slider.valueChanged.connect(self._changed)
        return slider

    def adjustment(self) -> DisplayAdjustment:
        return DisplayAdjustment(self.brightness.value(), self.contrast.value(),
                                 gamma_from_slider(self.gamma.value()))

    def set_adjustment(self, adjustment: DisplayAdjustment) -> None:
        """Show ``adjustment`` without emitting it (e.g. the viewer's current one)."""
        for slider, value in ((self.brightness, adjustment.brightness),
                              (self.contrast, adjustment.contrast),
                              (self.gamma, slider_from_gamma(adjustment.gamma))):
            slider.blockSignals(True)
            slider.setValue(int(value))
            slider.blockSignals(False)
        self._update_labels()

    def reset(self) -> None:
        self.set_adjustment(DisplayAdjustment())
        self.adjustmentChanged.emit(self.adjustment())

    def _changed(self, _value: int) -> None:
        self._update_labels()
        self.adjustmentChanged.emit(self.adjustment())

    def _update_labels(self) -> None:
        for slider in (self.brightness, self.contrast):
            self._values[slider].setText(f"{slider.value():+d}" if slider.value() else "0")
        self._values[self.gamma].setText(f"{gamma_from_slider(self.gamma.value()):.2f}")
