"""Pyramid tiles for the slide viewer: tile geometry, a byte-bounded LRU cache, a background loader.

Geometry. A *tile scale* is a pyramid level plus a power-of-two "virtual" factor: a tile of scale
``(level, factor)`` is 256 x 256 screen-ready pixels covering ``256 * factor`` pixels of ``level``
(read, then box-filtered with ``Image.reduce``). Virtual factors keep the number of tiles on screen
bounded when a file has no coarse level (plain images, single-level TIFFs): at any zoom a tile is
drawn at between 0.5x and 1x its size. Tiles are addressed by ``TileKey(level, factor, tx, ty)``.

Threads. Every ``read_region`` runs on a dedicated ``QThreadPool`` (never on the UI thread); each
``QRunnable`` reports back through a ``QObject`` bridge whose signal is delivered, queued, on the
UI thread, where the tile enters the cache. Staleness: each request replaces the *wanted* set and
bumps a generation counter; a job whose generation is old and whose key is no longer wanted exits
without reading, and results for a previous source (another token) are dropped. Reads of one
source are serialised by a lock unless the source is OpenSlide (which is thread-safe).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import OrderedDict
from typing import NamedTuple

from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from hashview.slides.base import Source


log = logging.getLogger(__name__)

TILE_SIZE = 256
MAX_FACTOR = 16             # at most 4096 level pixels read for one tile
THUMBNAIL_SIDE = 1024       # long side of the background thumbnail (overview + fallback)
THUMBNAIL_KEY = "thumbnail"
_CLOSE_WAIT_MS = 10_000


class TileKey(NamedTuple):
    level: int
    factor: int
    tx: int
    ty: int


class TileScale(NamedTuple):
    level: int
    factor: int
    downsample: float       # level-0 px per tile px

    @property
    def span(self) -> float:  # level-0 px covered by one full tile
        return TILE_SIZE * self.downsample


def tile_scale(source: Source, downsample: float) -> TileScale:
    """The scale whose tiles are drawn at 0.5x..1x when the screen shows ``downsample``."""
    level = source.get_best_level_for_downsample(max(downsample, 1.0))
    level_ds = source.level_downsamples[level]
    factor = 1
    while factor < MAX_FACTOR and factor * 2 <= downsample / level_ds * 1.01:
        factor *= 2
    return TileScale(level, factor, level_ds * factor)


def coarser_scales(source: Source, scale: TileScale, limit: int = 8) -> list[TileScale]:
    """Scales coarser than ``scale``, finest first, until one tile holds the whole slide."""
    found: list[TileScale] = []
    width, height = source.dimensions
    downsample = scale.downsample
    while len(found) < limit:
        downsample *= 2
        nxt = tile_scale(source, downsample)
        if nxt.downsample <= (found[-1] if found else scale).downsample:
            break
        found.append(nxt)
        if nxt.span >= width and nxt.span >= height:
            break
    return found


def tile_grid(source: Source, scale: TileScale) -> tuple[int, int]:
    """Number of tile columns and rows at ``scale``."""
    level_w, level_h = source.level_dimensions[scale.level]
    side = TILE_SIZE * scale.factor
    return math.ceil(level_w / side), math.ceil(level_h / side)


def tiles_in_rect(source: Source, scale: TileScale, rect: tuple[float, float, float, float],
                  margin: int = 0) -> list[TileKey]:
    """Keys of the tiles of ``scale`` meeting the level-0 rectangle ``(x0, y0, x1, y1)``."""
    columns, rows = tile_grid(source, scale)
    step = TILE_SIZE * scale.factor * source.level_downsamples[scale.level]
    x0, y0, x1, y1 = rect
    tx0 = max(0, math.floor(x0 / step) - margin)
    ty0 = max(0, math.floor(y0 / step) - margin)
    tx1 = min(columns, math.floor(x1 / step) + 1 + margin)
    ty1 = min(rows, math.floor(y1 / step) + 1 + margin)
    return [TileKey(scale.level, scale.factor, tx, ty)
            for ty in range(ty0, ty1) for tx in range(tx0, tx1)]


def _level_box(source: Source, key: TileKey) -> tuple[int, int, int, int]:
    level_w, level_h = source.level_dimensions[key.level]
    side = TILE_SIZE * key.factor
    x, y = key.tx * side, key.ty * side
    return x, y, max(1, min(side, level_w - x)), max(1, min(side, level_h - y))


def tile_rect(source: Source, key: TileKey) -> tuple[float, float, float, float]:
    """Level-0 ``(x, y, w, h)`` covered by ``key``."""
    level_ds = source.level_downsamples[key.level]
    x, y, w, h = _level_box(source, key)
    return x * level_ds, y * level_ds, w * level_ds, h * level_ds


def read_view_tile(source: Source, key: TileKey) -> Image.Image:
    """Decode one tile (call from a worker thread only)."""
    level_ds = source.level_downsamples[key.level]
    x, y, w, h = _level_box(source, key)
    image = source.read_region((round(x * level_ds), round(y * level_ds)), key.level, (w, h))
    return image.reduce(key.factor) if key.factor > 1 else image


def to_qimage(image: Image.Image) -> QImage:
    """An RGB PIL image as an independent RGB32 QImage (fast to paint; fine off the UI thread)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    data = rgb.tobytes()
    wrapped = QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888)
    return wrapped.convertToFormat(QImage.Format.Format_RGB32)  # a deep copy: ``data`` may go


class TileCache:
    """LRU cache of QImages bounded by their size in bytes.

    Keys in ``pinned`` (the tiles the view needs now) are never evicted, so a cache set smaller
    than one screenful degrades to "just the visible tiles" instead of thrashing.
    """

    def __init__(self, max_bytes: int):
        self._items: OrderedDict[object, QImage] = OrderedDict()
        self._max_bytes = max(0, int(max_bytes))
        self.bytes_used = 0
        self.pinned: frozenset = frozenset()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def get(self, key) -> QImage | None:
        image = self._items.get(key)
        if image is not None:
            self._items.move_to_end(key)
        return image

    def put(self, key, image: QImage) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes_used -= old.sizeInBytes()
        self._items[key] = image
        self.bytes_used += image.sizeInBytes()
        self._evict()

    def set_max_bytes(self, max_bytes: int) -> None:
        self._max_bytes = max(0, int(max_bytes))
        self._evict()

    def clear(self) -> None:
        self._items.clear()
        self.bytes_used = 0

    def _evict(self) -> None:
        if self.bytes_used <= self._max_bytes:
            return
        for key in list(self._items):  # least recently used first
            if self.bytes_used <= self._max_bytes:
                break
            if key not in self.pinned:
                self.bytes_used -= self._items.pop(key).sizeInBytes()


class _Bridge(QObject):
    # token, key, QImage or None, error text or None (both None: skipped as stale)
    finished = Signal(object)  # (token, key, QImage | None, error | None)


class _TileRead(QRunnable):
    def __init__(self, loader: "TileLoader", token: int, generation: int, key):
        super().__init__()
        self._loader, self._token, self._generation, self._key = loader, token, generation, key
        self._source, self._lock, self._bridge = loader._source, loader._read_lock, loader._bridge

    def run(self) -> None:  # worker thread
        image = error = None
        loader, key = self._loader, self._key
        try:
            stale = self._token != loader._token or (
                key != THUMBNAIL_KEY and self._generation != loader._generation
                and key not in loader._wanted)
            if not stale:
                with self._lock or contextlib.nullcontext():
                    if key == THUMBNAIL_KEY:
                        pil = self._source.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                    else:
                        pil = read_view_tile(self._source, key)
                image = to_qimage(pil)
        except Exception as exc:  # noqa: BLE001  (a bad tile must not kill the worker)
            error = " ".join(str(exc).split()) or type(exc).__name__
        try:
            self._bridge.finished.emit((self._token, key, image, error))
        except RuntimeError:  # the viewer was deleted meanwhile
            pass


class TileLoader(QObject):
    """Loads tiles and the thumbnail of one source in the background into a ``TileCache``."""

    tileLoaded = Signal(object)     # TileKey, already in the cache
    thumbnailLoaded = Signal()

    def __init__(self, parent: QObject | None = None, cache_mb: float = 256,
                 max_threads: int | None = None):
        super().__init__(parent)
        self.cache = TileCache(int(cache_mb * 1024 * 1024))
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads or max(1, min(4, QThreadPool.globalInstance()
                                                                .maxThreadCount())))
        self._bridge = _Bridge(self)
        self._bridge.finished.connect(self._on_finished)
        self._source: Source | None = None
        self._read_lock: threading.Lock | None = None
        self._token = 0
        self._generation = 0
        self._wanted: frozenset = frozenset()
        self._pending: set = set()
        self._failed: set = set()
        self.thumbnail: QImage | None = None

    # --- UI thread ------------------------------------------------------------------------
    def set_source(self, source: Source | None) -> None:
        """Switch source; returns once no worker touches the previous one (safe to close it)."""
        self._token += 1
        self._wanted = self.cache.pinned = frozenset()
        self._pool.clear()
        self._pool.waitForDone(_CLOSE_WAIT_MS)
        self.cache.clear()
        self._pending.clear()
        self._failed.clear()
        self.thumbnail = None
        self._source = source
        self._read_lock = None if source is None or source.kind == "openslide" \
            else threading.Lock()
        if source is not None:
            self._start(THUMBNAIL_KEY, priority=100)

    def set_cache_mb(self, megabytes: float) -> None:
        self.cache.set_max_bytes(int(megabytes * 1024 * 1024))

    def tile(self, key: TileKey) -> QImage | None:
        return self.cache.get(key)

    def request(self, keys: list[TileKey]) -> None:
        """Make ``keys`` (most important first) the wanted set; queue the ones not cached."""
        if self._source is None:
            return
        self._generation += 1
        self._wanted = self.cache.pinned = frozenset(keys)
        for rank, key in enumerate(keys):
            if key not in self.cache and key not in self._pending and key not in self._failed:
                self._start(key, priority=max(0, 50 - rank))

    def missing(self) -> int:
        """Wanted tiles not yet in the cache (failed ones excluded)."""
        return sum(1 for key in self._wanted if key not in self.cache and key not in self._failed)

    def is_idle(self) -> bool:
        """True when the thumbnail and every wanted tile are loaded (or failed)."""
        if self._source is None:
            return True
        thumb_done = self.thumbnail is not None or THUMBNAIL_KEY in self._failed
        return thumb_done and self.missing() == 0

    def shutdown(self) -> None:
        self.set_source(None)

    def _start(self, key, priority: int) -> None:
        self._pending.add(key)
        self._pool.start(_TileRead(self, self._token, self._generation, key), priority)

    def _on_finished(self, result: tuple) -> None:
        token, key, image, error = result
        if token != self._token:
            return  # a previous source
        self._pending.discard(key)
        if image is not None:
            if key == THUMBNAIL_KEY:
                self.thumbnail = image
                self.thumbnailLoaded.emit()
            else:
                self.cache.put(key, image)
                self.tileLoaded.emit(key)
        elif error is not None:
            self._failed.add(key)
            log.warning("cannot read %s of %s: %s", key, self._source, error)
        elif key in self._wanted and key not in self.cache:
            self._start(key, priority=50)  # skipped as stale, then wanted again
