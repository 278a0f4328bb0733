"""A similarity heat-map of one slide: every indexed tile coloured by its distance to a query.

It answers "where else in this slide is tissue like this?" at a glance. The colour scale is
fixed (0 to :data:`SCALE_SHARE` of the code length: red = identical codes, blue = as far as
unrelated tissue typically is), so two maps can be compared; tiles of the slide that are not
in the library are left uncoloured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from hashview.encode import hamming_distance
from hashview.errors import SourceError

SCALE_SHARE = 0.5      # distance at the blue end, as a share of the code length
OPACITY = 0.55
LEGEND_HEIGHT = 36


class NotInLibrary(SourceError):
    """The slide has no tiles in the library: index it first (the app offers to)."""


@dataclass
class SimilarityMap:
    slide_path: str
    bits: int
    tiles: list[tuple[int, int, int, int]]  # (x, y, size, distance) in level-0 pixels, bits
    query_tiles: int

    @property
    def scale_max(self) -> int:
        return max(1, round(self.bits * SCALE_SHARE))

    def colours(self) -> np.ndarray:
        """(n, 3) uint8 RGB per tile: red at distance 0, blue at :attr:`scale_max` and beyond
        (the same scale in the PNG, the JSON and the app's overlay)."""
        from hashview.explain import jet

        distances = np.array([t[3] for t in self.tiles], np.float32)
        return jet(1.0 - np.minimum(distances, self.scale_max) / self.scale_max)

    def to_dict(self) -> dict:
        distances = [t[3] for t in self.tiles]
        return {"slide": self.slide_path, "bits": self.bits, "query_tiles": self.query_tiles,
                "scale": [0, self.scale_max], "min_distance": min(distances),
                "tiles": [{"x": x, "y": y, "size": s, "distance": d}
                          for x, y, s, d in self.tiles]}


def similarity_map(session, query: Any, slide_path: str | Path) -> SimilarityMap:
    """Distances from ``query`` (anything :meth:`LibrarySession.search` takes) to every tile
    of ``slide_path`` stored in the library; a query of several tiles takes the nearest."""
    images, _, _ = session.query_tiles(query)  # loads the library (once)
    searcher = session.searcher
    if searcher.code_kind != "binary":
        raise SourceError(slide_path, "a similarity map needs a library of binary codes")
    sources = searcher.source_ids_of_file(slide_path)
    tile_ids = np.flatnonzero(np.isin(searcher.tile_sources, list(sources)))
    if len(tile_ids) == 0 and sources:
        raise SourceError(slide_path, "in the library, but with no tiles to colour (no tile "
                                      "held enough tissue when it was indexed)")
    if len(tile_ids) == 0:
        raise NotInLibrary(slide_path, "not in the library (index it first: hashview index "
                                       "-l LIB.h5 SLIDE)")
    codes = session.encoder.encode(images)
    distances = hamming_distance(codes, searcher.codes[tile_ids]).reshape(len(codes), -1)
    nearest = distances.min(axis=0)
    hits = searcher.hits_at(tile_ids, nearest)
    return SimilarityMap(str(slide_path), searcher.bits,
                         [(h.x, h.y, h.size, int(d)) for h, d in zip(hits, nearest)],
                         len(images))


def render_map(source, simmap: SimilarityMap, max_side: int = 1024) -> Image.Image:
    """The slide's thumbnail with the map blended over its indexed tiles, and a legend."""
    thumb = source.get_thumbnail((max_side, max_side)).convert("RGB")
    scale = thumb.width / source.dimensions[0]
    colour = np.zeros((thumb.height, thumb.width, 3), np.float32)
    covered = np.zeros((thumb.height, thumb.width), bool)
    colours = simmap.colours()
    for i in sorted(range(len(simmap.tiles)), key=lambda i: -simmap.tiles[i][3]):  # nearest on top
        x, y, size, _ = simmap.tiles[i]
        x0, y0 = int(x * scale), int(y * scale)
        x1, y1 = max(x0 + 1, int((x + size) * scale)), max(y0 + 1, int((y + size) * scale))
        colour[y0:y1, x0:x1] = colours[i]
        covered[y0:y1, x0:x1] = True
    base = np.asarray(thumb, np.float32)
    blended = np.where(covered[..., None], (1 - OPACITY) * base + OPACITY * colour, base)
    image = Image.new("RGB", (thumb.width, thumb.height + LEGEND_HEIGHT), "white")
    image.paste(Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)), (0, 0))
    _draw_legend(image, thumb.height, simmap)
    return image


def _draw_legend(image: Image.Image, top: int, simmap: SimilarityMap) -> None:
    from hashview.explain import jet

    width = min(256, image.width - 20)
    bar = jet(np.linspace(1.0, 0.0, width, dtype=np.float32))  # red (near) to blue (far)
    strip = Image.fromarray(np.repeat(bar[None], 10, axis=0), "RGB")
    image.paste(strip, (10, top + 4))
    draw = ImageDraw.Draw(image)
    draw.text((10, top + 16), "0 (identical)", fill="black")
    draw.text((10 + width, top + 16), f">= {simmap.scale_max} bits", fill="black", anchor="ra")
    if image.width > width + 200:
        draw.text((width + 24, top + 4), f"{len(simmap.tiles)} tiles; uncoloured: not in the "
                                         "library", fill="black")
