"""The one interface every image source (whole-slide file or plain image) offers.

Coordinates follow OpenSlide: ``read_region`` takes the top-left corner in level-0 pixels, a level
index and a size in pixels *of that level*. Every image that leaves a :class:`Source` is an RGB
PIL image: transparency (OpenSlide's empty areas, RGBA PNGs) is composited on white, so that
downstream code (tissue masks, encoders) never has to think about alpha.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from PIL import Image

from ..errors import SourceError

WHITE = (255, 255, 255)

# Thumbnails of large single-level images are built band by band so that memory stays bounded;
# one band holds at most this many pixels of the level being read.
_THUMBNAIL_BAND_PIXELS = 16_000_000

# Pyramid downsamples are stored as measured ratios (e.g. 4.0002 instead of 4); without a little
# slack, asking for exactly 4x would fall back to a much finer (slower) level.
_LEVEL_TOLERANCE = 1.01


def composite_on_white(image: Image.Image) -> Image.Image:
    """Return an RGB copy of an RGBA/LA/PA image flattened onto white (RGB passes through)."""
    if image.mode == "RGB":
        return image
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        return image.convert("RGB")  # opaque (inside a slide): 0.06 ms vs 0.08 to composite
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


class Source(ABC):
    """An open slide or image. Use as a context manager, or call :meth:`close`.

    Subclasses set the pyramid geometry, mpp and properties in ``__init__`` (the attributes
    below) and implement :meth:`_read_region`, which is only called with validated arguments and
    must return an RGB image of exactly the requested size.
    """

    kind: str = "abstract"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._closed = False
        self._level_dimensions: tuple[tuple[int, int], ...] = ()
        self._level_downsamples: tuple[float, ...] = (1.0,)
        self._mpp: float | None = None
        self.mpp_from_user = False  # True when the scale was entered by the user, not read
        self._properties: Mapping[str, str] = frozen({})

    # --- geometry -------------------------------------------------------------------------
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(w, h)`` of every level, level 0 (full resolution) first."""
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of every level relative to level 0 (level 0 is 1.0)."""
        return self._level_downsamples

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel, or ``None`` when the file does not record it reliably."""
        return self._mpp

    def set_user_mpp(self, mpp: float | None) -> None:
        """Use a scale entered by the user (``None``: back to none) for a file that records
        none; see :mod:`hashview.slides.scale_overrides`."""
        self._mpp = None if mpp is None else float(mpp)
        self.mpp_from_user = mpp is not None

    @property
    def properties(self) -> Mapping[str, str]:
        """Read-only metadata (vendor properties for slides, a few tags for images)."""
        return self._properties

    @property
    def associated_images(self) -> dict[str, Image.Image]:
        """Label, macro and thumbnail images stored in the file (RGB), when present."""
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (1% slack)."""
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * _LEVEL_TOLERANCE:
                best = level
        return best

    # --- pixels ---------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int,
                    size: tuple[int, int]) -> Image.Image:
        """Read ``size`` pixels of ``level`` whose top-left corner is ``location`` (level 0).

        Areas outside the image come back white. Raises ``ValueError`` for a bad level or size
        (a programming error) and :class:`SourceError` when the file cannot be decoded.
        """
        self._check_open()
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range (0..{self.level_count - 1})")
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        region = self._read_region((int(location[0]), int(location[1])), level, (width, height))
        if region.mode != "RGB":
            region = composite_on_white(region)
        return region

    @abstractmethod
    def _read_region(self, location: tuple[int, int], level: int,
                     size: tuple[int, int]) -> Image.Image:
        """Read a validated region; may return RGB or RGBA (RGBA is flattened on white)."""

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """An RGB image of the whole source fitting in ``size``, aspect ratio kept.

        Reads the best pyramid level in horizontal bands and resamples each band with an
        antialiasing filter, so that single-level gigapixel files do not need one huge buffer.
        """
        self._check_open()
        out_w, out_h = thumbnail_size(self.dimensions, size)
        scale = self.dimensions[0] / out_w
        level = self.get_best_level_for_downsample(max(scale, 1.0))
        level_w, level_h = self.level_dimensions[level]
        level_ds = self.level_downsamples[level]
        # Output rows per band: each band reads at most _THUMBNAIL_BAND_PIXELS level pixels.
        rows_per_out_row = level_h / out_h
        band_out_rows = max(1, int(_THUMBNAIL_BAND_PIXELS / max(1, level_w) / rows_per_out_row))
        margin = math.ceil(3 * rows_per_out_row)  # filter support of the resampler, in level px
        thumbnail = Image.new("RGB", (out_w, out_h), WHITE)
        for out_y0 in range(0, out_h, band_out_rows):
            out_y1 = min(out_h, out_y0 + band_out_rows)
            src_y0 = out_y0 * rows_per_out_row
            src_y1 = out_y1 * rows_per_out_row
            read_y0 = max(0, math.floor(src_y0) - margin)
            read_y1 = min(level_h, math.ceil(src_y1) + margin)
            band = self.read_region((0, round(read_y0 * level_ds)), level,
                                    (level_w, max(1, read_y1 - read_y0)))
            box = (0.0, src_y0 - read_y0, float(level_w), src_y1 - read_y0)
            part = band.resize((out_w, out_y1 - out_y0), Image.Resampling.LANCZOS, box=box)
            thumbnail.paste(part, (0, out_y0))
        return thumbnail

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SourceError(self.path, "source is closed")

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions if not self._closed else (0, 0)
        return f"<{type(self).__name__} {self.path.name} {w}x{h} levels={self.level_count}>"


def thumbnail_size(dimensions: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The largest ``(w, h)`` with the aspect ratio of ``dimensions`` that fits in ``size``.

    Never upscales: an image smaller than ``size`` keeps its own size.
    """
    width, height = dimensions
    max_w, max_h = max(1, int(size[0])), max(1, int(size[1]))
    scale = max(width / max_w, height / max_h, 1.0)
    return max(1, min(max_w, round(width / scale))), max(1, min(max_h, round(height / scale)))


def frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only view of a copy of ``mapping`` (callers cannot mutate source metadata)."""
    return MappingProxyType(dict(mapping))
