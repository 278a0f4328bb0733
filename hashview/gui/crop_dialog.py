"""Crop the query: drag a rectangle over it to search with only the part that matters."""

from __future__ import annotations

from typing import Optional

from PIL import Image
from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QRubberBand, QVBoxLayout,
                               QWidget)

from hashview.gui.thumbnails import pil_to_qimage

SHOWN_SIDE = 480  # the query is shown at most this large
MIN_CROP = 8      # image px: a smaller drag is a click, not a crop


class _CropLabel(QLabel):
    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.band = QRubberBand(QRubberBand.Shape.Rectangle, self)
        self.origin: Optional[QPoint] = None
        self.setCursor(Qt.CursorShape.CrossCursor)

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.origin = event.position().toPoint()
        self.band.setGeometry(QRect(self.origin, QSize()))
        self.band.show()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if self.origin is not None:
            self.band.setGeometry(QRect(self.origin, event.position().toPoint()).normalized()
                                  & self.rect())


class CropDialog(QDialog):
    """Shows ``image``; :meth:`crop_box` is the dragged rectangle in the image's pixels."""

    def __init__(self, image: Image.Image, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Crop query")
        self.image = image.convert("RGB")
        self.scale = min(1.0, SHOWN_SIDE / max(self.image.size))
        shown = self.image.resize((max(1, round(self.image.width * self.scale)),
                                   max(1, round(self.image.height * self.scale))))
        from PySide6.QtGui import QPixmap

        self.view = _CropLabel(self)
        self.view.setPixmap(QPixmap.fromImage(pil_to_qimage(shown)))
        self.view.setFixedSize(shown.width, shown.height)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Search with the crop")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Drag a rectangle over the part of the query that matters."))
        layout.addWidget(self.view)
        layout.addWidget(buttons)

    def set_box(self, box: tuple[int, int, int, int]) -> None:
        """Select ``(x, y, w, h)`` in image pixels (as a drag would)."""
        x, y, w, h = (round(v * self.scale) for v in box)
        self.view.band.setGeometry(QRect(x, y, w, h))
        self.view.band.show()

    def crop_box(self) -> Optional[tuple[int, int, int, int]]:
        """The rectangle in image pixels, or None when none (or too small) was dragged."""
        if not self.view.band.isVisibleTo(self.view):
            return None
        rect = self.view.band.geometry()
        box = tuple(round(v / self.scale) for v in (rect.x(), rect.y(), rect.width(),
                                                    rect.height()))
        return box if min(box[2], box[3]) >= MIN_CROP else None
