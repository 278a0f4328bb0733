"""The similarity map drawn over the slide: each indexed tile filled by its distance to a query.

The colours are the core's (:meth:`hashview.search.heatmap.SimilarityMap.colours`), so the app,
the PNG of ``hashview heatmap`` and its JSON agree. Tiles farther than the threshold are not
filled, so what stays coloured answers "where is tissue at least this similar?". A legend in the
lower-right corner gives the scale, the threshold and how many tiles pass it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QLinearGradient, QPainter

from hashview.explain import jet

LEGEND_WIDTH = 220
GRADIENT_STOPS = 9
MAX_TILES_DRAWN = 40_000  # beyond this (far zoomed out) the nearest ones are drawn


class SimilarityLayer:
    """State and painting of the map; the viewer owns one and calls :meth:`paint`."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.tiles = np.zeros((0, 4), np.float64)  # x, y, size, distance (level 0, bits)
        self.colours = np.zeros((0, 3), np.uint8)
        self.scale_max = 1
        self.threshold: Optional[int] = None  # None: every tile
        self.opacity = 0.55
        self.visible = False  # the app's View ▸ Similarity map; a click then searches
        self.caption = ""

    # ------------------------------------------------------------------ state
    def set_map(self, simmap, caption: str = "") -> None:
        """Show ``simmap`` (a :class:`~hashview.search.heatmap.SimilarityMap`); ``None``
        clears it."""
        if simmap is None or not simmap.tiles:
            self.tiles = np.zeros((0, 4), np.float64)
            self.colours = np.zeros((0, 3), np.uint8)
            self.caption = ""
        else:
            self.tiles = np.asarray(simmap.tiles, np.float64).reshape(-1, 4)
            self.colours = simmap.colours()
            self.scale_max = simmap.scale_max
            self.caption = caption
        self.viewer.update()

    def has_map(self) -> bool:
        return len(self.tiles) > 0

    def set_threshold(self, bits: Optional[int]) -> None:
        self.threshold = None if bits is None else int(bits)
        self.viewer.update()

    def set_opacity(self, opacity: float) -> None:
        self.opacity = float(min(max(opacity, 0.0), 1.0))
        self.viewer.update()

    def set_visible(self, visible: bool) -> None:
        self.visible = bool(visible)
        self.viewer.update()

    def shown(self) -> bool:
        return self.visible and self.has_map()

    def passing(self) -> np.ndarray:
        """Mask of the tiles within the threshold."""
        if self.threshold is None:
            return np.ones(len(self.tiles), bool)
        return self.tiles[:, 3] <= self.threshold

    def distance_at(self, x: float, y: float) -> Optional[int]:
        """The distance of the tile under level-0 ``(x, y)`` (nearest when tiles overlap)."""
        t = self.tiles
        inside = ((t[:, 0] <= x) & (x < t[:, 0] + t[:, 2])
                  & (t[:, 1] <= y) & (y < t[:, 1] + t[:, 2]))
        return int(t[inside, 3].min()) if inside.any() else None

    # ------------------------------------------------------------------ painting
    def paint(self, painter: QPainter) -> None:
        if not self.shown():
            return
        x, y, w, h = self.viewer.visible_region()
        t = self.tiles
        keep = (self.passing() & (t[:, 0] + t[:, 2] > x) & (t[:, 0] < x + w)
                & (t[:, 1] + t[:, 2] > y) & (t[:, 1] < y + h))
        order = np.flatnonzero(keep)
        order = order[np.argsort(-t[order, 3], kind="stable")][-MAX_TILES_DRAWN:]  # nearest last
        painter.save()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setOpacity(self.opacity)
        for i in order:
            r, g, b = (int(v) for v in self.colours[i])
            painter.fillRect(self.viewer._screen_rect(*t[i, :3], t[i, 2], snap=True),
                             QColor(r, g, b))
        painter.restore()
        self._paint_legend(painter, int(self.passing().sum()))

    def _paint_legend(self, painter: QPainter, n_passing: int) -> None:
        metrics = painter.fontMetrics()
        line = metrics.height()
        # lower right: the scale bar and magnification hold the lower left
        box = QRectF(self.viewer.width() - LEGEND_WIDTH - 30, self.viewer.height() - 4 * line - 30,
                     LEGEND_WIDTH + 20, 4 * line + 18)
        painter.save()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(20, 20, 24, 190))
        painter.drawRoundedRect(box, 5, 5)
        bar = QRectF(box.left() + 10, box.top() + 8 + line, LEGEND_WIDTH, 10)
        gradient = QLinearGradient(bar.topLeft(), bar.topRight())
        values = np.linspace(1.0, 0.0, GRADIENT_STOPS, dtype=np.float32)  # near (red) -> far
        for stop, rgb in zip(np.linspace(0.0, 1.0, GRADIENT_STOPS), jet(values)):
            gradient.setColorAt(float(stop), QColor(*(int(v) for v in rgb)))
        painter.fillRect(bar, gradient)
        if self.threshold is not None and self.threshold < self.scale_max:
            mark = bar.left() + bar.width() * self.threshold / self.scale_max
            painter.setPen(QColor(255, 255, 255))
            painter.drawLine(QPointF(mark, bar.top() - 3), QPointF(mark, bar.bottom() + 3))
        painter.setPen(QColor(240, 240, 240))
        left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        title = QRectF(bar.left(), box.top() + 4, LEGEND_WIDTH, line)
        painter.drawText(title, left, metrics.elidedText(
            self.caption or "Similarity to the query", Qt.TextElideMode.ElideMiddle,
            LEGEND_WIDTH))
        scale = QRectF(bar.left(), bar.bottom() + 2, LEGEND_WIDTH, line)
        painter.drawText(scale, left, "0 bits (identical)")
        painter.drawText(scale, right, f"≥ {self.scale_max} bits")
        within = ("every tile" if self.threshold is None or self.threshold >= self.scale_max
                  else f"≤ {self.threshold} bits")
        counts = QRectF(bar.left(), scale.bottom() + 2, LEGEND_WIDTH, line)
        painter.drawText(counts, left, f"{n_passing} of {len(self.tiles)} tiles shown "
                                       f"({within})")
        painter.restore()
