"""Brightness, contrast and gamma of the displayed slide: a lookup table on the painted images.

Only what is painted changes: the tile cache keeps the pixels as read, and queries are read from
the slide again, so an adjustment never reaches what is indexed or searched. Each tile is
adjusted once per setting (numpy, one 256-entry table applied to its R, G and B bytes) and kept
in a small byte-bounded LRU keyed by the image's ``cacheKey``; a new setting empties it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PySide6.QtGui import QImage

ADJUSTED_CACHE_BYTES = 64 * 1024 * 1024
GAMMA_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class DisplayAdjustment:
    """``brightness`` and ``contrast`` from -100 to 100 (0: unchanged); ``gamma`` > 1 lifts
    the mid-tones, < 1 darkens them (1: unchanged)."""

    brightness: int = 0
    contrast: int = 0
    gamma: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self.brightness == 0 and self.contrast == 0 and self.gamma == 1.0

    def lut(self) -> np.ndarray:
        return _lookup_table(self)


@lru_cache(maxsize=32)
def _lookup_table(adjustment: DisplayAdjustment) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    contrast = 2.0 ** (adjustment.contrast / 50.0)       # 0.25x .. 4x about mid-grey
    y = (x - 0.5) * contrast + 0.5 + adjustment.brightness / 200.0   # up to half the range
    y = np.clip(y, 0.0, 1.0)
    gamma = min(max(float(adjustment.gamma), GAMMA_RANGE[0]), GAMMA_RANGE[1])
    y = y ** (1.0 / gamma)
    table = np.round(y * 255.0).astype(np.uint8)
    table.setflags(write=False)
    return table


def apply_lut(image: QImage, table: np.ndarray) -> QImage:
    """A copy of ``image`` (as RGB32/ARGB32) with ``table`` applied to R, G and B; alpha kept."""
    keep = (QImage.Format.Format_RGB32, QImage.Format.Format_ARGB32)
    out = image if image.format() in keep else image.convertToFormat(QImage.Format.Format_RGB32)
    out = QImage(out)  # bits() below detaches: the caller's image is never written
    width, height, stride = out.width(), out.height(), out.bytesPerLine()
    if width == 0 or height == 0:
        return out
    pixels = np.frombuffer(out.bits(), np.uint8).reshape(height, stride)[:, :4 * width]
    pixels = pixels.reshape(height, width, 4)
    # bytes B, G, R, A on little-endian machines; one table serves all three colours
    pixels[..., :3] = table[pixels[..., :3]]
    return out


class AdjustedImages:
    """Adjusted copies of painted images for the current adjustment (identity: the image)."""

    def __init__(self, max_bytes: int = ADJUSTED_CACHE_BYTES):
        self.adjustment = DisplayAdjustment()
        self._max_bytes = max_bytes
        self._items: OrderedDict[int, QImage] = OrderedDict()
        self._bytes = 0

    def set_adjustment(self, adjustment: DisplayAdjustment) -> bool:
        """Use ``adjustment`` from now on; True when it differs from the current one."""
        if adjustment == self.adjustment:
            return False
        self.adjustment = adjustment
        self.clear()
        return True

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, image: QImage) -> QImage:
        if self.adjustment.is_identity:
            return image
        key = image.cacheKey()
        adjusted = self._items.get(key)
        if adjusted is not None:
            self._items.move_to_end(key)
            return adjusted
        adjusted = apply_lut(image, self.adjustment.lut())
        self._items[key] = adjusted
        self._bytes += adjusted.sizeInBytes()
        while self._bytes > self._max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.sizeInBytes()
        return adjusted
