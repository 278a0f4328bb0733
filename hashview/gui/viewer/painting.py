"""Painting of the slide viewer (a mixin of :class:`SlideViewer`): layers, overlays, empty state.

Layers, bottom to top: background; while any tile of the current scale is missing, the thumbnail
and the cached tiles of every coarser scale and of one finer scale (so the view never shows
holes); the tiles of the current scale; the similarity map with its legend; tile outlines,
selection, highlight, ruler; the HUD.
Images go through ``displayed()`` (brightness, contrast, gamma) on their way to the screen.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen

from .overview import paint_hud
from .ruler import paint_ruler
from .tile_loader import coarser_scales, tile_rect, tile_scale, tiles_in_rect

BACKGROUND = QColor(42, 42, 46)
PLACEHOLDER = QColor(238, 238, 238)
OUTLINE_COLOUR = QColor(0, 210, 255, 150)
HIGHLIGHT_COLOUR = QColor(255, 214, 0)
SELECTION_COLOUR = QColor(64, 156, 255)
HINT_TEXT = "Open a slide (Ctrl+O) or drop one here"
MAX_OUTLINES_DRAWN = 20_000


class ViewerPainting:
    """``paintEvent`` and its helpers; relies on the view state of :class:`SlideViewer`."""

    def _screen_rect(self, x: float, y: float, w: float, h: float, snap: bool = False) -> QRectF:
        a, b = self.map_from_level0(x, y), self.map_from_level0(x + w, y + h)
        if snap:  # shared tile edges land on the same pixel: no seams
            return QRectF(QPointF(round(a.x()), round(a.y())), QPointF(round(b.x()), round(b.y())))
        return QRectF(a, b)

    def paintEvent(self, event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        if self._source is None:
            self._paint_empty(painter)
        else:
            self._paint_slide(painter)
            self.similarity.paint(painter)
            self._paint_overlays(painter)
            paint_hud(painter, QRectF(self.rect()), self._source.mpp, self._ds)
        painter.end()

    def _paint_empty(self, painter: QPainter) -> None:
        font = QFont(painter.font())
        font.setPointSizeF(font.pointSizeF() * 1.4)
        painter.setFont(font)
        painter.setPen(QColor(200, 200, 205))
        box = QRectF(self.rect()).adjusted(20, 0, -20, -24)
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, HINT_TEXT)
        font.setPointSizeF(font.pointSizeF() / 1.4 * 0.9)
        painter.setFont(font)
        painter.setPen(QColor(140, 140, 148))
        painter.drawText(box.adjusted(0, 44, 0, 44), Qt.AlignmentFlag.AlignCenter,
                         "Wheel: zoom · drag: pan · right-click: Find similar region")

    def _paint_slide(self, painter: QPainter) -> None:
        source, loader = self._source, self._loader
        width, height = source.dimensions
        x, y, w, h = self.visible_region()
        view = (x, y, x + w, y + h)
        scale = self._target_scale()
        tiles = [(key, loader.tile(key)) for key in
                 (tiles_in_rect(source, scale, view) if scale else [])]
        # smooth at every zoom: zooming stops at 2x the scan, before pixels turn into blocks
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        if scale is None or any(image is None for _, image in tiles):
            self._paint_thumbnail(painter, view, width, height)
            if scale is not None:
                finer = tile_scale(source, scale.downsample / 2)
                layers = list(reversed(coarser_scales(source, scale)))
                layers += [finer] if finer.downsample < scale.downsample else []
                for layer in layers:
                    for key in tiles_in_rect(source, layer, view):
                        image = loader.cache.get(key)
                        if image is not None:
                            painter.drawImage(self._screen_rect(*tile_rect(source, key), True),
                                              self.displayed(image))
        loaded = [(key, image) for key, image in tiles if image is not None]
        if scale is not None and scale.downsample > self._ds and len(loaded) > 1:
            self._paint_mosaic(painter, loaded, scale.downsample)
            return
        for key, image in loaded:
            painter.drawImage(self._screen_rect(*tile_rect(source, key), True),
                              self.displayed(image))

    def _paint_mosaic(self, painter: QPainter, tiles, tile_downsample: float) -> None:
        """Magnified tiles as one image, scaled once: scaled one by one, smoothing stops at each
        tile's edge and the seams show as lines in the tissue."""
        rects = [tile_rect(self._source, key) for key, _ in tiles]
        left, top = min(r[0] for r in rects), min(r[1] for r in rects)
        right = max(r[0] + r[2] for r in rects)
        bottom = max(r[1] + r[3] for r in rects)
        mosaic = QImage(round((right - left) / tile_downsample),
                        round((bottom - top) / tile_downsample),
                        QImage.Format.Format_ARGB32_Premultiplied)
        mosaic.fill(Qt.GlobalColor.transparent)  # a tile still loading shows the layers below
        blit = QPainter(mosaic)
        for (_key, image), (x, y, _w, _h) in zip(tiles, rects):
            blit.drawImage(QPointF(round((x - left) / tile_downsample),
                                   round((y - top) / tile_downsample)), self.displayed(image))
        blit.end()
        painter.drawImage(self._screen_rect(left, top, right - left, bottom - top), mosaic)

    def _paint_thumbnail(self, painter: QPainter, view, width: int, height: int) -> None:
        x0, y0 = max(view[0], 0.0), max(view[1], 0.0)
        x1, y1 = min(view[2], float(width)), min(view[3], float(height))
        if x1 <= x0 or y1 <= y0:
            return
        target = self._screen_rect(x0, y0, x1 - x0, y1 - y0)
        thumb = self._loader.thumbnail
        if thumb is None:
            painter.fillRect(target, PLACEHOLDER)
            return
        sx, sy = thumb.width() / width, thumb.height() / height
        painter.drawImage(target, self.displayed(thumb),
                          QRectF(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy))

    def _paint_overlays(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        x, y, w, h = self.visible_region()
        boxes = self._outlines
        if self._outlines_visible and len(boxes):
            inside = ((boxes[:, 0] + boxes[:, 2] > x) & (boxes[:, 0] < x + w)
                      & (boxes[:, 1] + boxes[:, 2] > y) & (boxes[:, 1] < y + h))
            shown = boxes[inside][:MAX_OUTLINES_DRAWN]
            if len(shown):
                side_px = float(np.median(shown[:, 2])) / self._ds
                colour = QColor(OUTLINE_COLOUR)
                colour.setAlpha(150 if side_px >= 12 else 70)
                pen = QPen(colour, 1)
                pen.setCosmetic(True)
                painter.setPen(pen)
                painter.drawRects([self._screen_rect(bx, by, s, s) for bx, by, s in shown])
        selection = self._selection_rect()
        if selection is not None:
            pen = QPen(SELECTION_COLOUR, 2, Qt.PenStyle.DashLine)
            painter.setPen(pen)
            fill = QColor(SELECTION_COLOUR)
            fill.setAlpha(45)
            painter.setBrush(fill)
            painter.drawRect(selection)
            painter.setBrush(Qt.BrushStyle.NoBrush)
        if self._highlight is not None:
            rect = self._screen_rect(*self._highlight)
            if rect.width() < 10 or rect.height() < 10:  # keep a far zoomed-out hit visible
                rect = QRectF(rect.center().x() - 5, rect.center().y() - 5, 10, 10)
            painter.setPen(QPen(QColor(0, 0, 0, 150), 5))
            painter.drawRect(rect)
            painter.setPen(QPen(HIGHLIGHT_COLOUR, 3))
            painter.drawRect(rect)
        if self._ruler is not None:
            x0, y0, x1, y1 = self._ruler
            paint_ruler(painter, self.map_from_level0(x0, y0), self.map_from_level0(x1, y1),
                        self.ruler_text(), QRectF(self.rect()))
        if self._region_mode:
            self._paint_mode_label(painter,
                                   "Region selection: drag a rectangle (R: back to panning)")
        elif self._ruler_mode:
            self._paint_mode_label(painter, "Ruler: drag to measure (Esc: clear, "
                                            "M: back to panning)")

    def _paint_mode_label(self, painter: QPainter, label: str) -> None:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(20, 20, 24, 170))
        text_w = painter.fontMetrics().horizontalAdvance(label)
        pill = QRectF(10, 10, text_w + 20, painter.fontMetrics().height() + 10)
        painter.drawRoundedRect(pill, 5, 5)
        painter.setPen(QColor(245, 245, 245))
        painter.drawText(pill, Qt.AlignmentFlag.AlignCenter, label)

    def _selection_rect(self) -> QRectF | None:
        if self._band is not None:
            return QRectF(self._band[0], self._band[1]).normalized()
        if self._selection is not None:
            return self._screen_rect(*self._selection)
        return None
