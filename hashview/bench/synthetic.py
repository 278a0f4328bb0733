"""A large pyramidal tiled TIFF made of real tissue tiles, for throughput at scale.

The slide is a mosaic of the Kather-2016 colorectal tiles (150 px at 0.495 µm/px, placed at
their native resolution, each randomly rotated/flipped) inside an elliptical tissue region on
white glass, so the tissue mask has real work to do. It is written by a small TIFF writer here
(no extra dependency): JPEG tiles of 256 px (YCbCr 4:2:0, quality 85, as most scanners write),
one directory per pyramid level (downsamples 1, 4, 16, ...), resolution tags in pixels per
centimetre, which OpenSlide reads as a generic tiled TIFF with its µm/px.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from hashview.progress import ProgressCallback, report

KATHER_MPP = 0.495
CELL = 150  # Kather tile side
TIFF_TILE = 256
JPEG_QUALITY = 85
LEVEL_FACTOR = 4
BACKGROUND = 242  # glass, slightly off-white as scanned

# TIFF tag ids and types
_SHORT, _LONG, _RATIONAL = 3, 4, 5


def load_tissue_tiles(folder: Path, skip_classes: tuple[str, ...] = ("08_EMPTY",)) -> list[np.ndarray]:
    """Every tile image under ``folder``'s class subfolders (sorted), as RGB arrays."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".png")
                   and p.parent.name not in skip_classes)
    if not paths:
        raise FileNotFoundError(f"{folder}: no tissue tiles found")
    return [np.asarray(Image.open(p).convert("RGB").resize((CELL, CELL))) for p in paths]


def tissue_cells(width: int, height: int) -> np.ndarray:
    """``(rows, cols)`` bool: the :data:`CELL` cells of the slide that hold tissue, those whose
    centre is inside the ellipse."""
    centres_y = (np.arange(height // CELL) + 0.5) * CELL
    centres_x = (np.arange(width // CELL) + 0.5) * CELL
    return (((centres_x[None, :] - width / 2) / (width * 0.47)) ** 2
            + ((centres_y[:, None] - height / 2) / (height * 0.47)) ** 2) <= 1


def class_layout(side: int, shares: Sequence[float], seed: int, block: int = 2) -> np.ndarray:
    """``(cells, cells)`` class index of every cell of a ``side`` px slide: regions of
    ``block`` x ``block`` cells, each of one class, ``shares`` of the regions per class
    (rounded; the rounding remainder goes to the largest share), placed at random."""
    cells = side // CELL
    regions = -(-cells // block)
    shares = np.asarray(shares, float) / np.sum(shares)
    counts = np.round(shares * regions ** 2).astype(int)
    counts[np.argmax(shares)] += regions ** 2 - counts.sum()
    classes = np.random.default_rng([seed, 1]).permutation(np.repeat(np.arange(len(shares)),
                                                                     counts))
    grid = classes.reshape(regions, regions)
    return np.repeat(np.repeat(grid, block, axis=0), block, axis=1)[:cells, :cells]


def _mosaic_band(tiles: list[np.ndarray], width: int, height: int, top: int, rows: int,
                 seed: int, cell_tiles: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows ``top .. top+rows`` of the level-0 mosaic, computed cell by cell (deterministic);
    ``cell_tiles`` ``(rows, cols)`` names each cell's tile, else tiles are drawn at random."""
    band = np.full((rows, width, 3), BACKGROUND, dtype=np.uint8)
    tissue = tissue_cells(width, height)
    first, last = top // CELL, (top + rows - 1) // CELL
    cols = width // CELL
    for r in range(first, last + 1):
        rng = np.random.default_rng([seed, r])
        choice = rng.integers(0, len(tiles), cols)
        turns = rng.integers(0, 8, cols)
        y0 = r * CELL
        if y0 + CELL > height:
            break
        if cell_tiles is not None:
            choice = cell_tiles[r]
        for c in range(cols):
            x0 = c * CELL
            if not tissue[r, c]:
                continue
            cell = np.rot90(tiles[choice[c]], turns[c] % 4)
            if turns[c] >= 4:
                cell = cell[:, ::-1]
            lo, hi = max(y0, top), min(y0 + CELL, top + rows)
            band[lo - top:hi - top, x0:x0 + CELL] = cell[lo - y0:hi - y0]
    return band


def _jpeg(tile: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    return buffer.getvalue()


def _tiles_of(image: np.ndarray) -> list[bytes]:
    """Row-major JPEG tiles of an image, edge tiles padded to full size (TIFF requires it)."""
    height, width = image.shape[:2]
    out = []
    for y in range(0, height, TIFF_TILE):
        for x in range(0, width, TIFF_TILE):
            tile = np.full((TIFF_TILE, TIFF_TILE, 3), BACKGROUND, dtype=np.uint8)
            part = image[y:y + TIFF_TILE, x:x + TIFF_TILE]
            tile[:part.shape[0], :part.shape[1]] = part
            out.append(_jpeg(tile))
    return out


class _TiffWriter:
    """Classic little-endian TIFF: tile data first, each directory written after its tiles."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.file.write(b"II*\x00\x00\x00\x00\x00")  # first IFD offset patched later
        self.previous_next_offset = 4  # where the offset of the next IFD must be written

    def write_tiles(self, tiles: list[bytes], offsets: list[int], counts: list[int]) -> None:
        for data in tiles:
            offsets.append(self.file.tell())
            counts.append(len(data))
            self.file.write(data)

    def write_level(self, width: int, height: int, offsets: list[int], counts: list[int],
                    mpp: float, reduced: bool) -> None:
        """The directory of one level whose tiles were written with :meth:`write_tiles`."""
        pixels_per_cm = round(10000 / mpp * 1000)  # rational numerator over 1000
        extra = io.BytesIO()  # out-of-line values, placed right after the IFD
        entries = [
            (254, _LONG, 1, [1 if reduced else 0]),
            (256, _LONG, 1, [width]),
            (257, _LONG, 1, [height]),
            (258, _SHORT, 3, [8, 8, 8]),
            (259, _SHORT, 1, [7]),          # JPEG
            (262, _SHORT, 1, [6]),          # YCbCr
            (277, _SHORT, 1, [3]),
            (282, _RATIONAL, 1, [pixels_per_cm, 1000]),
            (283, _RATIONAL, 1, [pixels_per_cm, 1000]),
            (284, _SHORT, 1, [1]),
            (296, _SHORT, 1, [3]),          # centimetre
            (322, _LONG, 1, [TIFF_TILE]),
            (323, _LONG, 1, [TIFF_TILE]),
            (324, _LONG, len(offsets), offsets),
            (325, _LONG, len(counts), counts),
            (530, _SHORT, 2, [2, 2]),       # YCbCr 4:2:0, as encoded
        ]
        if self.file.tell() % 2:
            self.file.write(b"\x00")
        ifd_offset = self.file.tell()
        ifd_size = 2 + 12 * len(entries) + 4
        extra_base = ifd_offset + ifd_size
        packed_entries = []
        for tag, kind, count, values in entries:
            fmt = {_SHORT: "H", _LONG: "I", _RATIONAL: "I"}[kind]
            data = struct.pack("<" + fmt * len(values), *values)
            if len(data) <= 4:
                packed_entries.append(struct.pack("<HHI", tag, kind, count) + data.ljust(4, b"\0"))
            else:
                if extra.tell() % 2:
                    extra.write(b"\0")
                packed_entries.append(struct.pack("<HHII", tag, kind, count,
                                                  extra_base + extra.tell()))
                extra.write(data)
        self.file.write(struct.pack("<H", len(entries)) + b"".join(packed_entries))
        next_offset_at = self.file.tell()
        self.file.write(b"\0\0\0\0")
        self.file.write(extra.getvalue())
        end = self.file.tell()
        self.file.seek(self.previous_next_offset)
        self.file.write(struct.pack("<I", ifd_offset))
        self.file.seek(end)
        self.previous_next_offset = next_offset_at

    def close(self) -> None:
        self.file.close()


def make_synthetic_slide(path: Path, tiles_folder: Optional[Path], side: int, seed: int = 0,
                         progress: Optional[ProgressCallback] = None,
                         tiles: Optional[list[np.ndarray]] = None,
                         cell_tiles: Optional[np.ndarray] = None) -> Path:
    """Write a ``side`` x ``side`` px pyramidal TIFF at :data:`KATHER_MPP` (reused if present).

    The tiles are every tissue tile of ``tiles_folder``, or ``tiles`` (RGB :data:`CELL` px
    arrays) when given; ``cell_tiles`` ``(side // CELL, side // CELL)`` places a chosen tile in
    each cell (e.g. tissue classes by region, :func:`class_layout`), else each cell's tile is
    random. Level 0 is rendered in bands of one TIFF tile row, so memory stays at one band plus
    the first reduced level (``side / 4`` squared); each further level is a 4x box reduction.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = tiles if tiles is not None else load_tissue_tiles(tiles_folder)
    tmp = path.with_suffix(".tmp")
    writer = _TiffWriter(tmp)
    try:
        level1 = np.zeros((-(-side // LEVEL_FACTOR), -(-side // LEVEL_FACTOR), 3), np.uint8)
        offsets: list[int] = []
        counts: list[int] = []
        for top in range(0, side, TIFF_TILE):
            rows = min(TIFF_TILE, side - top)
            band = _mosaic_band(tiles, side, side, top, rows, seed, cell_tiles)
            writer.write_tiles(_tiles_of(band), offsets, counts)
            small = Image.fromarray(band).reduce(LEVEL_FACTOR)
            level1[top // LEVEL_FACTOR:top // LEVEL_FACTOR + small.height] = np.asarray(small)
            report(progress, "synthetic slide", top + rows, side, path.name)
        writer.write_level(side, side, offsets, counts, KATHER_MPP, reduced=False)
        level, mpp = level1, KATHER_MPP * LEVEL_FACTOR
        while True:
            offsets, counts = [], []
            writer.write_tiles(_tiles_of(level), offsets, counts)
            writer.write_level(level.shape[1], level.shape[0], offsets, counts, mpp, reduced=True)
            if max(level.shape[:2]) <= 2 * TIFF_TILE:
                break
            level = np.asarray(Image.fromarray(level).reduce(LEVEL_FACTOR))
            mpp *= LEVEL_FACTOR
    finally:
        writer.close()
    tmp.replace(path)
    return path
