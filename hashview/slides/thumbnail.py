"""A source, or a level-0 region of it, fitted in a square thumbnail (Qt-free: the app's result
thumbnails and the find-similar-region benchmark read hits the same way)."""

from __future__ import annotations

from typing import Optional

from PIL import Image

from hashview.slides.base import Source

Region = tuple[int, int, int, int]  # level-0 x, y, w, h


def read_thumbnail(source: Source, region: Optional[Region], side: int) -> Image.Image:
    """The whole source (``region`` None, or a region covering a whole plain image: a patch)
    or a level-0 region, fitted in ``side`` x ``side``."""
    width, height = source.dimensions
    if region is not None and source.kind == "image" and region[:2] == (0, 0) \
            and region[2] >= width and region[3] >= height:
        region = None  # patch tiles cover the whole image: show the image, not white padding
    if region is None:
        return source.get_thumbnail((side, side))
    x, y, w, h = region
    level = source.get_best_level_for_downsample(max(w, h) / side)
    ds = source.level_downsamples[level]
    image = source.read_region((x, y), level, (max(1, round(w / ds)), max(1, round(h / ds))))
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image
