"""The viewer's ruler: a line drawn by dragging (in ruler mode, key M) labelled with its length.

The line is kept in level-0 pixels, so it stays on the tissue while the view pans and zooms. Its
length is in µm when the slide's scale is known (from the file or entered by the user) and in
level-0 pixels otherwise: a length computed from an assumed scale would look like a measurement.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen

RULER_COLOUR = QColor(255, 255, 255)
RULER_HALO = QColor(0, 0, 0, 170)
LABEL_BACKGROUND = QColor(20, 20, 24, 200)
TICK_HALF_PX = 6.0

Line = tuple[float, float, float, float]  # level-0 x0, y0, x1, y1


def line_length(line: Line) -> float:
    """Length of ``line`` in level-0 pixels."""
    x0, y0, x1, y1 = line
    return math.hypot(x1 - x0, y1 - y0)


def format_ruler_length(level0_px: float, mpp: float | None) -> str:
    """``"12.5 µm"``, ``"340 µm"``, ``"1.25 mm"``; ``"812 px"`` when the scale is unknown."""
    if not mpp:
        return f"{level0_px:,.0f} px"
    micrometres = level0_px * mpp
    if micrometres >= 1000:
        return f"{micrometres / 1000:.2f} mm"
    if micrometres >= 100:
        return f"{micrometres:.0f} µm"
    return f"{micrometres:.1f} µm"


def paint_ruler(painter: QPainter, start: QPointF, end: QPointF, text: str,
                area: QRectF) -> None:
    """The line from ``start`` to ``end`` (widget px) with end ticks and a label beside it."""
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    dx, dy = end.x() - start.x(), end.y() - start.y()
    length = math.hypot(dx, dy) or 1.0
    normal = QPointF(-dy / length, dx / length)  # perpendicular, for the ticks
    ticks = [(p - normal * TICK_HALF_PX, p + normal * TICK_HALF_PX) for p in (start, end)]
    for colour, width in ((RULER_HALO, 4.0), (RULER_COLOUR, 2.0)):
        pen = QPen(colour, width)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        painter.setPen(pen)
        painter.drawLine(start, end)
        for a, b in ticks:
            painter.drawLine(a, b)
    metrics = painter.fontMetrics()
    box = QRectF(0, 0, metrics.horizontalAdvance(text) + 12, metrics.height() + 6)
    # beside the middle of the line, above it, far enough along the normal that no corner of
    # the label touches the line (the box's half-extent in that direction)
    side = -1.0 if normal.y() > 0 else 1.0
    reach = abs(normal.x()) * box.width() / 2 + abs(normal.y()) * box.height() / 2
    offset = normal * side * (reach + 8)
    box.moveCenter((start + end) / 2 + offset)
    box.moveLeft(min(max(box.left(), area.left() + 4), area.right() - box.width() - 4))
    box.moveTop(min(max(box.top(), area.top() + 4), area.bottom() - box.height() - 4))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(LABEL_BACKGROUND)
    painter.drawRoundedRect(box, 4, 4)
    painter.setPen(RULER_COLOUR)
    painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
    painter.restore()
