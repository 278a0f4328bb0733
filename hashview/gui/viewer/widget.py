"""SlideViewer: a QuPath-like whole-slide viewer widget (QPainter over a tiled pyramid).

View state is a centre ``(cx, cy)`` in level-0 pixels and a downsample (level-0 px per screen
px, from the zoom limit of :mod:`.zoom`, 0.5, to "fit"). ``paintEvent`` draws, coarse to fine,
whatever is already decoded: the thumbnail, cached tiles of coarser (and one finer) scales, then
the tiles of the current scale, so the view never shows holes while :mod:`.tile_loader` reads on
its thread pool.
The viewer never reads pixels itself; brightness, contrast and gamma (``display.py``) change
only what is painted. Painting lives in ``painting.py`` and event handling in
``interaction.py`` (mixins); the ruler in ``ruler.py``. It does not own the source: after
``close_source()`` returns, no worker touches it any more and the caller may close it.

Drops: the viewer does not accept drops itself, so a drop on it reaches the main window.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

from hashview.slides.base import Source
from hashview.tiling import ASSUMED_MPP, TilingParams

from .display import AdjustedImages, DisplayAdjustment
from .interaction import ViewerInteraction
from .overview import OverviewWidget, magnification_text
from .painting import ViewerPainting
from .ruler import Line, format_ruler_length, line_length
from .similarity_layer import SimilarityLayer
from .tile_loader import TileLoader, TileScale, tile_rect, tile_scale, tiles_in_rect
from .zoom import MIN_DOWNSAMPLE, downsample_for_magnification, scan_magnification

Rect = tuple[int, int, int, int]

THUMBNAIL_ONLY_FACTOR = 4      # beyond this virtual factor, a sharp enough thumbnail is used


class SlideViewer(ViewerInteraction, ViewerPainting, QWidget):
    """Whole-slide viewer: tiled pyramid, zoom/pan, overview, scale bar, ruler, query actions."""

    findSimilarRequested = Signal(int, int, int, int)   # level-0 x, y, w, h
    viewChanged = Signal(float, float, float)           # centre x, y (level 0), downsample

    def __init__(self, parent: QWidget | None = None, cache_mb: float = 256):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setMinimumSize(160, 120)
        self.setMouseTracking(True)  # the similarity map's distance under the cursor
        self._loader = TileLoader(self, cache_mb)
        self._loader.tileLoaded.connect(lambda _key: self.update())
        self._loader.thumbnailLoaded.connect(self._on_thumbnail)
        self.overview = OverviewWidget(self)
        self.overview.jumpRequested.connect(lambda x, y: self.center_on(x, y))
        self._overview_enabled = True
        self._source: Source | None = None
        self._cx = self._cy = 0.0
        self._ds = 1.0
        self._auto_fit = True            # refit on resize until the user moves the view
        self._last_emitted: tuple[float, float, float] | None = None
        self._query_side: int | None = None
        self._outlines = np.zeros((0, 3))
        self._outlines_visible = True
        self._highlight: tuple[float, float, float, float] | None = None
        self._selection: Rect | None = None
        self._band: tuple[QPointF, QPointF] | None = None
        self._drag_last: QPointF | None = None
        self._region_mode = False
        self._ruler_mode = False
        self._ruler: Line | None = None
        self._measuring = False          # a ruler drag is in progress
        self._adjusted = AdjustedImages()
        self._press_pos: QPointF | None = None  # where a left drag began (a click re-queries)
        self._click_at: QPointF | None = None
        self._click_timer = QTimer(self)
        self._click_timer.setSingleShot(True)
        self._click_timer.timeout.connect(self._on_single_click)
        self.similarity = SimilarityLayer(self)

    # --- source ---------------------------------------------------------------------------
    def open_source(self, source: Source) -> None:
        """Show ``source`` fitted in the view; clears outlines, highlight and selection."""
        self._loader.set_source(None)
        self._source = source
        self._outlines = np.zeros((0, 3))
        self._highlight = self._selection = self._band = self._drag_last = self._ruler = None
        self._measuring = False
        self._adjusted.clear()
        self.similarity.set_map(None)  # distances to another slide's tiles
        self._last_emitted = None
        self.overview.set_thumbnail(None, None)
        self._loader.set_source(source)
        self._update_cursor()
        self.fit()

    def close_source(self) -> None:
        """Back to the empty state; returns once no background read uses the source."""
        self._loader.set_source(None)
        self._source = None
        self._outlines = np.zeros((0, 3))
        self._highlight = self._selection = self._band = self._drag_last = self._ruler = None
        self._measuring = False
        self._adjusted.clear()
        self.similarity.set_map(None)
        self.overview.set_thumbnail(None, None)
        self._update_cursor()
        self.update()

    def current_source(self) -> Source | None:
        return self._source

    def set_cache_mb(self, megabytes: float) -> None:
        self._loader.set_cache_mb(megabytes)

    def is_loading(self) -> bool:
        """True while the thumbnail or a tile needed by the current view is being read."""
        return self._source is not None and not self._loader.is_idle()

    # --- view -----------------------------------------------------------------------------
    def downsample(self) -> float:
        return self._ds

    def center(self) -> tuple[float, float]:
        return self._cx, self._cy

    def magnification(self) -> str:
        return magnification_text(self._source.mpp if self._source else None, self._ds)

    def magnification_value(self) -> float:
        """The magnification shown now (assuming 20x at level 0 when the scale is unknown)."""
        return scan_magnification(self._source.mpp if self._source else None) / self._ds

    def go_to_magnification(self, magnification: float) -> float:
        """Zoom about the view's centre to ``magnification`` (e.g. 20 for 20x), within the zoom
        limit and "fit"; returns the magnification reached."""
        if self._source is None:
            return 0.0
        ds = downsample_for_magnification(self._source.mpp, magnification)
        if ds >= self.fit_downsample():
            self.fit()  # the whole slide is smaller than that: show all of it, centred
        else:
            self._set_view(self._cx, self._cy, ds)
        return self.magnification_value()

    def fit_downsample(self) -> float:
        if self._source is None:
            return 1.0
        width, height = self._source.dimensions
        return max(width / max(1, self.width()), height / max(1, self.height()), MIN_DOWNSAMPLE)

    def fit(self) -> None:
        if self._source is None:
            return
        width, height = self._source.dimensions
        self._set_view(width / 2, height / 2, self.fit_downsample(), keep_auto=True)
        self._auto_fit = True

    def center_on(self, x: float, y: float, downsample: float | None = None) -> None:
        self._set_view(x, y, self._ds if downsample is None else downsample)

    def zoom_in(self) -> None:
        self.zoom_at(QPointF(self.width() / 2, self.height() / 2), 2.0)

    def zoom_out(self) -> None:
        self.zoom_at(QPointF(self.width() / 2, self.height() / 2), 0.5)

    def zoom_at(self, pos: QPointF, factor: float) -> None:
        """Zoom by ``factor`` (>1 magnifies) keeping the slide point under ``pos`` in place."""
        if self._source is None:
            return
        pos = QPointF(pos)
        fit_ds = self.fit_downsample()
        ds = min(max(self._ds / factor, MIN_DOWNSAMPLE), fit_ds)
        if ds >= fit_ds * 0.999 and factor < 1:
            self.fit()  # fully zoomed out: centre the slide
            return
        x, y = self.map_to_level0(pos)
        self._set_view(x - (pos.x() - self.width() / 2) * ds,
                       y - (pos.y() - self.height() / 2) * ds, ds)

    def map_to_level0(self, pos) -> tuple[float, float]:
        pos = QPointF(pos)
        return (self._cx + (pos.x() - self.width() / 2) * self._ds,
                self._cy + (pos.y() - self.height() / 2) * self._ds)

    def map_from_level0(self, x: float, y: float) -> QPointF:
        return QPointF((x - self._cx) / self._ds + self.width() / 2,
                       (y - self._cy) / self._ds + self.height() / 2)

    def visible_region(self) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, w, h)`` shown by the widget (may extend beyond the slide)."""
        x, y = self.map_to_level0(QPointF(0, 0))
        return x, y, self.width() * self._ds, self.height() * self._ds

    def _set_view(self, cx: float, cy: float, ds: float, keep_auto: bool = False) -> None:
        if self._source is None:
            return
        width, height = self._source.dimensions
        self._ds = min(max(float(ds), MIN_DOWNSAMPLE), self.fit_downsample())
        self._cx = min(max(float(cx), 0.0), float(width))
        self._cy = min(max(float(cy), 0.0), float(height))
        if not keep_auto:
            self._auto_fit = False
        self._request_tiles()
        self.overview.set_viewport(self.visible_region())
        self.update()
        state = (self._cx, self._cy, self._ds)
        if self._last_emitted is None or any(
                abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(state, self._last_emitted)):
            self._last_emitted = state
            self.viewChanged.emit(*state)

    # --- overlays and queries -------------------------------------------------------------
    def set_tile_outlines(self, rects) -> None:
        """Level-0 squares ``(x, y, size)`` drawn as thin outlines (the indexed tiles)."""
        array = np.asarray(list(rects), dtype=np.float64).reshape(-1, 3)
        self._outlines = array
        self.update()

    def tile_outline_count(self) -> int:
        return len(self._outlines)

    def set_outlines_visible(self, visible: bool) -> None:
        self._outlines_visible = bool(visible)
        self.update()

    def outlines_visible(self) -> bool:
        return self._outlines_visible

    def set_highlight(self, rect: tuple[float, float, float, float] | None) -> None:
        """A level-0 rectangle ``(x, y, w, h)`` drawn in a strong colour, or ``None``."""
        self._highlight = None if rect is None else tuple(float(v) for v in rect)
        self.update()

    def set_query_tile_side(self, level0_px: int | None) -> None:
        """Side of the "Find similar region" square in level-0 px (``None``: the default)."""
        self._query_side = int(level0_px) if level0_px and level0_px > 0 else None

    def query_tile_side(self) -> int:
        """Default: the tiler's field of view (224 px at 0.5 µm/px = 112 µm)."""
        if self._query_side:
            return self._query_side
        params = TilingParams()
        mpp = (self._source.mpp if self._source else None) or ASSUMED_MPP
        return max(1, round(params.tile_size * params.target_mpp / mpp))

    def query_region(self, x: float, y: float) -> Rect | None:
        """The query square centred on level-0 ``(x, y)``, moved inside the slide."""
        if self._source is None:
            return None
        width, height = self._source.dimensions
        side = min(self.query_tile_side(), width, height)
        left = min(max(int(round(x - side / 2)), 0), width - side)
        top = min(max(int(round(y - side / 2)), 0), height - side)
        return left, top, side, side

    def find_similar_at(self, pos) -> Rect | None:
        """Emit ``findSimilarRequested`` for the square under widget position ``pos``."""
        region = self.query_region(*self.map_to_level0(pos))
        if region is not None:
            self.findSimilarRequested.emit(*region)
        return region

    def find_similar_selection(self) -> Rect | None:
        """Emit ``findSimilarRequested`` for the rubber-band selection, if any."""
        if self._selection is not None and self._source is not None:
            self.findSimilarRequested.emit(*self._selection)
        return self._selection

    def selection(self) -> Rect | None:
        return self._selection

    def set_selection(self, rect: Rect | None) -> None:
        self._selection = None if rect is None else tuple(int(v) for v in rect)
        self.update()

    def set_region_mode(self, enabled: bool) -> None:
        """In region mode a plain left drag draws the selection (as Shift+drag always does)."""
        self._region_mode = bool(enabled)
        self._ruler_mode = self._ruler_mode and not self._region_mode
        self._update_cursor()
        self.update()

    def region_mode(self) -> bool:
        return self._region_mode

    def set_ruler_mode(self, enabled: bool) -> None:
        """In ruler mode a left drag measures; the line stays until Esc or the next drag."""
        self._ruler_mode = bool(enabled)
        self._region_mode = self._region_mode and not self._ruler_mode
        self._update_cursor()
        self.update()

    def ruler_mode(self) -> bool:
        return self._ruler_mode

    def ruler(self) -> Line | None:
        """The measured line in level-0 px ``(x0, y0, x1, y1)``, or ``None``."""
        return self._ruler

    def set_ruler(self, line: Line | None) -> None:
        self._ruler = None if line is None else tuple(float(v) for v in line)
        self.update()

    def ruler_text(self) -> str | None:
        """The ruler's length as shown: µm when the scale is known, else level-0 px."""
        if self._ruler is None:
            return None
        return format_ruler_length(line_length(self._ruler),
                                   self._source.mpp if self._source else None)

    # --- display adjustments (painting only) ------------------------------------------------
    def set_display_adjustment(self, adjustment: DisplayAdjustment) -> None:
        if self._adjusted.set_adjustment(adjustment):
            thumb = self._loader.thumbnail
            if thumb is not None and self._source is not None:
                self.overview.set_thumbnail(self._adjusted.get(thumb), self._source.dimensions)
            self.update()

    def display_adjustment(self) -> DisplayAdjustment:
        return self._adjusted.adjustment

    def displayed(self, image):
        """``image`` as painted: with the display adjustment applied (a cached copy)."""
        return self._adjusted.get(image)

    def copy_coordinates_at(self, pos) -> str:
        x, y = self.map_to_level0(pos)
        text = f"{int(x)}, {int(y)}"
        QGuiApplication.clipboard().setText(text)
        return text

    def set_overview_visible(self, visible: bool) -> None:
        self._overview_enabled = bool(visible)
        self._place_overview()

    # --- loading --------------------------------------------------------------------------
    def _target_scale(self) -> TileScale | None:
        """Tile scale for the current zoom; ``None`` when the thumbnail is sharp enough."""
        ds_eff = self._ds / max(self.devicePixelRatioF(), 1.0)
        scale = tile_scale(self._source, ds_eff)
        thumb = self._loader.thumbnail
        if scale.factor > THUMBNAIL_ONLY_FACTOR and thumb is not None:
            if self._source.dimensions[0] / thumb.width() <= ds_eff:
                return None
        return scale

    def _request_tiles(self) -> None:
        if self._source is None or self.width() < 1 or self.height() < 1:
            return
        scale = self._target_scale()
        if scale is None:
            self._loader.request([])
            return
        x, y, w, h = self.visible_region()
        keys = tiles_in_rect(self._source, scale, (x, y, x + w, y + h), margin=1)

        def priority(key):
            tx, ty, tw, th = tile_rect(self._source, key)
            outside = tx + tw < x or tx > x + w or ty + th < y or ty > y + h
            return outside, math.hypot(tx + tw / 2 - self._cx, ty + th / 2 - self._cy)

        self._loader.request(sorted(keys, key=priority))

    def _on_thumbnail(self) -> None:
        if self._source is not None:
            self.overview.set_thumbnail(self.displayed(self._loader.thumbnail),
                                        self._source.dimensions)
            self.overview.set_viewport(self.visible_region())
            self._place_overview()
            self._request_tiles()
        self.update()

    def _place_overview(self) -> None:
        ov = self.overview
        fits = self.width() >= 2.5 * ov.width() and self.height() >= 2 * ov.height()
        ov.move(self.width() - ov.width() - 10, 10)
        ov.setVisible(self._overview_enabled and ov.has_thumbnail() and fits)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._place_overview()
        if self._source is None:
            return
        if self._auto_fit:
            self.fit()
        else:
            self._set_view(self._cx, self._cy, self._ds)
