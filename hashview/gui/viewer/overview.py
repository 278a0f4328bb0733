"""Navigation aids of the slide viewer: the overview thumbnail, the scale bar, the magnification.

``magnification_text`` follows the usual microscope convention, objective = 10 / (µm per screen
pixel), so 0.25 µm/px is 40x and 0.5 µm/px is 20x. Without calibration, level 0 is taken to be
20x like the tiler does (``hashview.tiling.ASSUMED_MPP``) and the text says "(assumed)".
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QWidget

from hashview.tiling import ASSUMED_MPP


# Scale bar lengths, µm: 1 2 5 10 20 50 100 200 500 µm, 1 2 5 10 20 50 mm.
NICE_LENGTHS_UM = tuple(m * 10 ** e for e in range(0, 5) for m in (1, 2, 5))
SCALE_BAR_MAX_PX = 140.0

HUD_BACKGROUND = QColor(20, 20, 24, 170)
HUD_TEXT = QColor(245, 245, 245)
VIEWPORT_COLOUR = QColor(0, 176, 255)


def format_magnification(value: float) -> str:
    if value >= 9.95:
        return f"{round(value)}x"
    if value >= 0.995:
        return f"{value:.1f}".rstrip("0").rstrip(".") + "x"
    return f"{value:.2f}x"


def magnification_text(mpp: float | None, downsample: float) -> str:
    """``"20x"`` for 0.5 µm per screen pixel; ``"5x (assumed)"`` when ``mpp`` is unknown."""
    downsample = max(downsample, 1e-9)
    if mpp:
        return format_magnification(10.0 / (mpp * downsample))
    return format_magnification(10.0 / (ASSUMED_MPP * downsample)) + " (assumed)"


def format_length(micrometres: float) -> str:
    if micrometres >= 1000:
        return f"{micrometres / 1000:g} mm"
    return f"{micrometres:g} µm"


def scale_bar(mpp: float | None, downsample: float,
              max_px: float = SCALE_BAR_MAX_PX) -> tuple[float, float, str] | None:
    """``(length_um, length_px, label)`` of the longest nice bar fitting in ``max_px``."""
    if not mpp or downsample <= 0:
        return None
    um_per_px = mpp * downsample
    length = NICE_LENGTHS_UM[0]
    for candidate in NICE_LENGTHS_UM:
        if candidate / um_per_px <= max_px:
            length = candidate
    return float(length), length / um_per_px, format_length(length)


def paint_hud(painter: QPainter, area: QRectF, mpp: float | None, downsample: float) -> None:
    """Magnification and scale bar in a translucent box at the bottom left of ``area``."""
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    font = QFont(painter.font())
    font.setPointSizeF(max(8.0, font.pointSizeF() * 0.95))
    small = QFont(font)
    small.setPointSizeF(font.pointSizeF() * 0.85)
    bold = QFont(font)
    bold.setBold(True)
    mag = magnification_text(mpp, downsample)
    bar = scale_bar(mpp, downsample)
    pad, gap = 8.0, 12.0
    painter.setFont(bold)
    mag_w = painter.fontMetrics().horizontalAdvance(mag)
    line_h = painter.fontMetrics().height()
    painter.setFont(small)
    if bar is None:
        right_text = "scale unknown"
        right_w = painter.fontMetrics().horizontalAdvance(right_text)
    else:
        right_text = bar[2]
        right_w = max(bar[1], painter.fontMetrics().horizontalAdvance(right_text))
    height = line_h + 2 * pad + (4 if bar else 0)
    box = QRectF(area.left() + 10, area.bottom() - 10 - height, mag_w + gap + right_w + 2 * pad,
                 height)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(HUD_BACKGROUND)
    painter.drawRoundedRect(box, 5, 5)
    painter.setPen(HUD_TEXT)
    painter.setFont(bold)
    painter.drawText(QRectF(box.left() + pad, box.top(), mag_w + 1, box.height()),
                     Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, mag)
    painter.setFont(small)
    right = QRectF(box.left() + pad + mag_w + gap, box.top() + pad - 2, right_w,
                   box.height() - 2 * pad)
    if bar is None:
        painter.setPen(QColor(200, 200, 200))
        painter.drawText(right.adjusted(0, 2, 0, 0), Qt.AlignmentFlag.AlignVCenter, right_text)
    else:
        painter.drawText(right, Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter,
                         right_text)
        y = right.bottom() + 1
        x0, x1 = right.left() + (right_w - bar[1]) / 2, right.left() + (right_w + bar[1]) / 2
        pen = QPen(HUD_TEXT, 2)
        pen.setCapStyle(Qt.PenCapStyle.FlatCap)
        painter.setPen(pen)
        painter.drawLine(QPointF(x0, y), QPointF(x1, y))
        painter.drawLine(QPointF(x0 + 1, y - 5), QPointF(x0 + 1, y))
        painter.drawLine(QPointF(x1 - 1, y - 5), QPointF(x1 - 1, y))
    painter.restore()


class OverviewWidget(QWidget):
    """The whole slide as a small thumbnail with the viewport drawn on it; click or drag to jump.

    Emits ``jumpRequested(x, y)`` with level-0 coordinates of the point clicked.
    """

    jumpRequested = Signal(float, float)
    BORDER = 2

    def __init__(self, parent: QWidget | None = None, max_side: int = 200):
        super().__init__(parent)
        self._max_side = max_side
        self._dimensions: tuple[int, int] | None = None
        self._image: QImage | None = None
        self._viewport: tuple[float, float, float, float] | None = None
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.PreventContextMenu)
        self.setToolTip("Overview: click or drag to move the view")
        self.hide()

    def set_thumbnail(self, image: QImage | None, dimensions: tuple[int, int] | None) -> None:
        self._dimensions = dimensions
        if image is None or dimensions is None or image.isNull():
            self._image = None
            self.hide()
            return
        self._image = image.scaled(self._max_side, self._max_side,
                                   Qt.AspectRatioMode.KeepAspectRatio,
                                   Qt.TransformationMode.SmoothTransformation)
        self.resize(self._image.width() + 2 * self.BORDER, self._image.height() + 2 * self.BORDER)
        self.update()

    def has_thumbnail(self) -> bool:
        return self._image is not None

    def set_viewport(self, rect: tuple[float, float, float, float] | None) -> None:
        self._viewport = rect
        self.update()

    def image_rect(self) -> QRectF:
        if self._image is None:
            return QRectF()
        return QRectF(self.BORDER, self.BORDER, self._image.width(), self._image.height())

    def map_to_level0(self, pos: QPointF) -> tuple[float, float]:
        target = self.image_rect()
        width, height = self._dimensions or (1, 1)
        fx = min(max((pos.x() - target.left()) / max(target.width(), 1), 0.0), 1.0)
        fy = min(max((pos.y() - target.top()) / max(target.height(), 1), 0.0), 1.0)
        return fx * width, fy * height

    def paintEvent(self, event) -> None:  # noqa: N802
        if self._image is None or self._dimensions is None:
            return
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(30, 30, 34, 200))
        target = self.image_rect()
        painter.drawImage(target.topLeft(), self._image)
        if self._viewport is not None:
            sx = target.width() / self._dimensions[0]
            sy = target.height() / self._dimensions[1]
            x, y, w, h = self._viewport
            view = QRectF(target.left() + x * sx, target.top() + y * sy, w * sx, h * sy)
            view = view.intersected(target)
            if view.width() < 4 or view.height() < 4:  # zoomed far in: keep it findable
                centre = view.center()
                view = QRectF(centre.x() - 3, centre.y() - 3, 6, 6)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setPen(QPen(QColor(0, 0, 0, 120), 4))
            painter.drawRect(view.adjusted(1, 1, -1, -1))
            painter.setPen(QPen(VIEWPORT_COLOUR, 2))
            painter.drawRect(view.adjusted(1, 1, -1, -1))
        painter.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton and self._image is not None:
            self.jumpRequested.emit(*self.map_to_level0(event.position()))
            event.accept()
        else:
            event.ignore()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if event.buttons() & Qt.MouseButton.LeftButton and self._image is not None:
            self.jumpRequested.emit(*self.map_to_level0(event.position()))
            event.accept()

    def wheelEvent(self, event) -> None:  # noqa: N802
        event.ignore()  # the viewer zooms
