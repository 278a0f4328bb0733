"""Whole-slide ("case") search: a slide in, the library's slides and cases ranked.

Yottixel's rule (Kalra et al., Medical Image Analysis 2020), which fits binary codes:

- **Mosaic** of the query slide: its tissue tiles are clustered by colour (an RGB histogram of
  each tile, taken from one low-resolution view of the slide; :data:`COLOUR_CLUSTERS`
  clusters); inside each colour cluster the tiles are clustered by position,
  :data:`MOSAIC_SHARE` of the cluster's tiles (at least one), and the tile nearest each
  position centre joins the mosaic. Only the mosaic is read at full resolution and encoded, so
  a query costs a few dozen reads and forward passes, not thousands. A slide the library
  already holds is not read or encoded at all: its stored tiles and codes are used.
- **Slide distance** = the median, over the mosaic's codes, of the minimum Hamming distance to
  the candidate slide's codes. A case is a patient where the library knows one (the minimum
  over its slides), else the slide.

Distances are dense and exact (every mosaic code against every library code, in blocks of
library codes on all cores, see :func:`slide_minima`); ties are ordered by a fixed shuffle of
the source ids (:func:`hashview.code_kinds.tie_keys`, as tiles are in a search), never by the
order the slides were indexed in.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from hashview.code_kinds import tie_keys
from hashview.errors import LibraryError, SourceError
from hashview.progress import ProgressCallback, report
from hashview.search.searcher import Searcher

COLOUR_CLUSTERS = 9        # Yottixel's choice
MOSAIC_SHARE = 0.05        # of each colour cluster's tiles (Yottixel: 5-20 %)
HISTOGRAM_BINS = 8         # per RGB channel
KMEANS_ITERATIONS = 20
THUMBNAIL_TILE_PX = 16     # a tile's side in the view its colour histogram is taken from
THUMBNAIL_MAX_SIDE = 4096  # that view's longest side (50 MB RGB), tiles shrink below 16 px
# int32 distances per block and thread (16 MB): 27k library codes for a 153-code mosaic.
# Measured (2 cores, 3 x 10^7 codes, 153 codes, s of slide_minima): 2^21 0.86-0.94, 2^22 0.83-0.89,
# 2^23 0.95-1.02, 2^24 1.54-1.64. Cache-sized calls (2^18-2^20, a few mosaic codes each) run
# 2x faster on one thread but do not scale to two: 0.98-1.26 s (the segmented minimum holds
# the GIL, and each hand-over between threads costs more than the cache saves)
BLOCK_DISTANCES = 1 << 22


@dataclass(frozen=True)
class RankedSource:
    rank: int
    source_id: int
    name: str
    path: str
    label: Optional[str]
    patient_id: Optional[str]
    distance: float          # median over the mosaic of the minimum Hamming distance
    best_tiles: list = field(default_factory=list)  # [(query tile x, y, library tile index)]


@dataclass
class CaseResult:
    sources: list[RankedSource]
    cases: list[tuple[str, float, list[int]]]  # (case id, distance, source ids), best first
    mosaic: list[tuple[int, int, int]]          # the query's mosaic tiles (x, y, size)
    query_tiles: int                            # tissue tiles of the query slide
    # for display: each ranked slide's best-matching library tile (distance = the slide's),
    # the mosaic tile that matched it, and the mosaic tiles as encoded
    hits: list = field(default_factory=list, repr=False)
    found_by: list[int] = field(default_factory=list, repr=False)
    mosaic_images: list = field(default_factory=list, repr=False)  # empty from stored codes
    # True: the query slide is in the library and its stored codes were used (no encoding)
    query_from_library: bool = False

    def to_query_result(self):
        """The ranked slides as a :class:`~hashview.search.query.QueryResult` whose hits are
        their best-matching tiles (what the app's results grid shows)."""
        from hashview.search.query import QueryResult
        from hashview.search.searcher import vote

        return QueryResult(hits=list(self.hits), vote=vote(self.hits),
                           query_tiles=len(self.mosaic), found_by=list(self.found_by),
                           query_images=list(self.mosaic_images))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"query_tiles": self.query_tiles, "query_from_library": self.query_from_library,
                "mosaic": [list(t) for t in self.mosaic],
                "sources": [asdict(s) for s in self.sources],
                "cases": [{"case": c, "distance": d, "source_ids": ids}
                          for c, d, ids in self.cases]}

    def to_text(self) -> str:
        from hashview.errors import printable

        lines = [f"{'rank':>4} {'dist':>6}  {'label':<12} {'patient':<10}  source"]
        for s in self.sources:
            lines.append(f"{s.rank + 1:>4} {s.distance:>6.1f}  {printable(s.label or '-'):<12} "
                         f"{printable(s.patient_id or '-'):<10}  {printable(s.name)}")
        if not self.sources:
            lines.append("  (no slides to rank: the library is empty or all were excluded)")
        lines.append(f"mosaic: {len(self.mosaic)} of the query's {self.query_tiles} tissue tiles"
                     + ("; the library's stored codes of this slide (not re-encoded)"
                        if self.query_from_library else "; tiled and encoded now"))
        return "\n".join(lines)


def colour_histograms(tiles: np.ndarray) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 tiles -> ``(N, 3 * HISTOGRAM_BINS)`` float32 histograms, each
    channel's summing to 1."""
    binned = (tiles.astype(np.int32) * HISTOGRAM_BINS) // 256          # 0..BINS-1 per channel
    flat = binned.reshape(len(tiles), -1, 3)
    offsets = np.arange(3) * HISTOGRAM_BINS
    hist = np.zeros((len(tiles), 3 * HISTOGRAM_BINS), np.float32)
    rows = np.repeat(np.arange(len(tiles)), flat.shape[1] * 3)
    np.add.at(hist, (rows, (flat + offsets).reshape(-1)), 1.0)
    return hist / max(1, flat.shape[1])


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels of ``points`` (FAISS k-means; k capped at the number of points)."""
    import faiss

    points = np.ascontiguousarray(points, np.float32)
    k = max(1, min(k, len(points)))
    if k == 1:
        return np.zeros(len(points), np.int64)
    km = faiss.Kmeans(points.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, verbose=False,
                      min_points_per_centroid=1)
    km.train(points)
    return km.index.search(points, 1)[1][:, 0]


def select_mosaic(histograms: np.ndarray, positions: np.ndarray, seed: int = 0,
                  colour_clusters: int = COLOUR_CLUSTERS,
                  share: float = MOSAIC_SHARE) -> list[int]:
    """Indices of the mosaic tiles: per colour cluster, the tile nearest each position centre."""
    chosen: list[int] = []
    colour = _kmeans(histograms, colour_clusters, seed)
    for cluster in np.unique(colour):
        members = np.flatnonzero(colour == cluster)
        where = positions[members].astype(np.float32)
        spatial = _kmeans(where, max(1, round(share * len(members))), seed)
        for group in np.unique(spatial):
            inside = members[spatial == group]
            centre = positions[inside].mean(axis=0)
            nearest = inside[np.argmin(((positions[inside] - centre) ** 2).sum(axis=1))]
            chosen.append(int(nearest))
    return sorted(set(chosen))


def rank_sources(searcher: Searcher, mosaic_codes: np.ndarray,
                 exclude_sources: Optional[set] = None,
                 k: Optional[int] = None) -> list[tuple[int, float, list]]:
    """``[(source id, median-of-min distance, [(mosaic index, best library tile)])]`` best
    first, ties by :func:`~hashview.code_kinds.tie_keys` of the source id; the first ``k``
    (all when None)."""
    codes, source_of_tile = searcher.codes, searcher.tile_sources
    if searcher.code_kind != "binary":
        raise LibraryError(searcher.path, "whole-slide search needs binary codes")
    if len(codes) == 0:
        return []
    # tiles are stored source by source; sort (a copy) only for a library that is not. The
    # runs of equal ids say it in one pass: their ids rise unless the table is out of order
    order = None
    starts = _runs(source_of_tile)
    if np.any(np.diff(source_of_tile[starts]) <= 0):
        order = np.argsort(source_of_tile, kind="stable")
        codes, source_of_tile = codes[order], source_of_tile[order]
        starts = _runs(source_of_tile)
    ends = np.r_[starts[1:], len(codes)]
    source_ids = source_of_tile[starts]
    minima = slide_minima(codes, starts, mosaic_codes)
    median = np.median(minima, axis=0)
    excluded = set(exclude_sources or ())
    ranked = []
    for j in np.lexsort((tie_keys(source_ids), median)):
        if int(source_ids[j]) in excluded:
            continue
        if k is not None and len(ranked) == k:
            break
        # the source's first tile at each mosaic code's minimum, for the best few pairs
        segment = _hamming_matrix(mosaic_codes, codes[starts[j]:ends[j]])
        pairs = sorted((int(minima[i, j]), i, int(np.argmin(segment[i])) + int(starts[j]))
                       for i in range(len(mosaic_codes)))[:5]
        ranked.append((int(source_ids[j]), float(median[j]),
                       [(i, int(order[t]) if order is not None else t) for _, i, t in pairs]))
    return ranked


def _runs(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts."""
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def slide_minima(codes: np.ndarray, starts: np.ndarray, mosaic_codes: np.ndarray) -> np.ndarray:
    """``(M, S)`` int32: the minimum Hamming distance of each of the ``M`` mosaic codes to the
    codes of each of ``S`` slides, slide ``s`` holding ``codes[starts[s]:starts[s + 1]]`` (the
    last one to the end; ``starts`` strictly increasing from 0, no empty slide).

    FAISS's popcount kernel fills an ``(M, block)`` distance matrix per block of library codes
    and a segmented minimum folds it per slide, so each library code is read once per query
    rather than once per mosaic code. Slide-aligned chunks of the library run on one thread
    each (FAISS releases the GIL), so every column of the result has one writer."""
    n, width = codes.shape
    pad = -width % 8  # older FAISS releases take whole 64-bit words; zero bytes add nothing
    query = _padded(np.asarray(mosaic_codes, np.uint8).reshape(-1, width), pad)
    m = len(query)
    minima = np.full((m, len(starts)), np.iinfo(np.int32).max, np.int32)
    if m == 0 or n == 0:
        return minima
    block = min(max(1, BLOCK_DISTANCES // m), n)
    workers = _workers()
    # more chunks than threads: uneven slides still share the cores
    targets = np.linspace(0, n, 4 * workers + 1)[1:-1]
    cuts = np.unique(np.r_[0, np.searchsorted(starts, targets), len(starts)])
    buffers = threading.local()

    def fold(first: int, stop: int) -> None:
        begin, end = int(starts[first]), int(starts[stop]) if stop < len(starts) else n
        # one buffer per pool thread: a fresh one per chunk costs its page faults each time
        if not hasattr(buffers, "one"):
            buffers.one = np.empty(m * block, np.int32)
        for a in range(begin, end, block):
            b = min(a + block, end)
            lo = int(np.searchsorted(starts, a, side="right")) - 1
            hi = int(np.searchsorted(starts, b, side="left"))
            dis = buffers.one[:m * (b - a)].reshape(m, b - a)
            _hammings(query, _padded(codes[a:b], pad), dis)
            part = minima[:, lo:hi]
            np.minimum(part, np.minimum.reduceat(dis, np.maximum(starts[lo:hi], a) - a, axis=1),
                       out=part)

    with ThreadPoolExecutor(min(workers, len(cuts) - 1)) as pool:
        for done in [pool.submit(fold, int(f), int(t)) for f, t in zip(cuts[:-1], cuts[1:])]:
            done.result()
    return minima


def _hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` int32 Hamming distances of packed codes (FAISS's kernel)."""
    pad = -a.shape[1] % 8
    out = np.empty((len(a), len(b)), np.int32)
    _hammings(_padded(a, pad), _padded(b, pad), out)
    return out


def _hammings(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """FAISS fills the C-contiguous ``out (len(a), len(b))`` (codes padded to 8-byte words)."""
    import faiss

    faiss.hammings(faiss.swig_ptr(a), faiss.swig_ptr(b), len(a), len(b), a.shape[1],
                   faiss.swig_ptr(out))


def _padded(codes: np.ndarray, pad: int) -> np.ndarray:
    codes = np.ascontiguousarray(codes, np.uint8)
    return np.pad(codes, ((0, 0), (0, pad))) if pad else codes


def _workers() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def group_cases(ranked: Sequence[RankedSource]) -> list[tuple[str, float, list[int]]]:
    """A case is the patient where known, else the slide; its distance is its best slide's."""
    cases: dict[str, tuple[float, list[int]]] = {}
    for s in ranked:
        key = f"patient {s.patient_id}" if s.patient_id else f"slide {s.name}"
        distance, ids = cases.get(key, (s.distance, []))
        cases[key] = (min(distance, s.distance), ids + [s.source_id])
    # stable: equal distances keep the order of their best slides' ranks
    return sorted(((k, d, ids) for k, (d, ids) in cases.items()), key=lambda c: c[1])


def tile_histograms(source, xs: np.ndarray, ys: np.ndarray, side: int) -> np.ndarray:
    """Colour histograms of the level-0 squares ``(x, y, side)`` of ``source``, cut from one
    low-resolution view (:data:`THUMBNAIL_TILE_PX` px per tile, the longest side at most
    :data:`THUMBNAIL_MAX_SIDE`). A colour cluster needs a tile's colours, not its detail, and one
    small read replaces reading every tissue tile at full resolution."""
    width, height = source.dimensions
    scale = max(1.0, side / THUMBNAIL_TILE_PX, max(width, height) / THUMBNAIL_MAX_SIDE)
    thumbnail = np.asarray(source.get_thumbnail((max(1, round(width / scale)),
                                                 max(1, round(height / scale)))))
    rows, cols = thumbnail.shape[:2]
    scale_x, scale_y = width / cols, height / rows
    crop = max(1, min(round(side / scale_x), rows, cols))
    left = np.clip(np.round(np.asarray(xs) / scale_x).astype(np.int64), 0, cols - crop)
    top = np.clip(np.round(np.asarray(ys) / scale_y).astype(np.int64), 0, rows - crop)
    return colour_histograms(np.stack([thumbnail[y:y + crop, x:x + crop]
                                       for x, y in zip(left, top)]))


def search_cases(session, slide_path, k: int = 5, exclude_source: bool = False,
                 seed: int = 0, progress: ProgressCallback = None,
                 use_stored_codes: bool = True) -> CaseResult:
    """Rank the library's slides and cases for the whole slide at ``slide_path``.

    A slide the library already holds is queried with its stored codes and tile positions (no
    tiling, no forward pass); ``use_stored_codes=False`` re-tiles and re-encodes it as a new
    slide. Either way the mosaic is chosen from the same low-resolution view, so both give
    the same mosaic for the same tiles.
    """
    from hashview.slides import open_source

    searcher = session.load()
    own = searcher.source_ids_of_file(slide_path)
    from_library = bool(own) and use_stored_codes
    with open_source(slide_path) as source:
        if from_library:
            report(progress, "mosaic", 0, 1, "stored codes")
            tile_ids = np.flatnonzero(searcher.tile_sources == min(own))
            stored = searcher.hits_at(tile_ids, np.zeros(len(tile_ids)))
            tiles = [(h.x, h.y, h.size) for h in stored]
        else:
            plan, tiles = _tissue_tiles(source, searcher, session.encoder, slide_path, progress)
        if not tiles:
            raise SourceError(slide_path, "no tissue tiles found: nothing to search with")
        xs, ys, sizes = (np.array(column) for column in zip(*tiles))
        mosaic = select_mosaic(tile_histograms(source, xs, ys, int(sizes.max())),
                               np.stack([xs, ys], axis=1).astype(np.float32), seed=seed)
        if from_library:
            codes, images = searcher.codes[tile_ids[mosaic]], []
        else:
            codes, images = _encode_mosaic(source, plan, mosaic, session.encoder, progress)
    ranked = rank_sources(searcher, codes, own if exclude_source else set(), k=k)
    records = {s.id: s for s in session.sources}
    sources = []
    for rank, (sid, distance, pairs) in enumerate(ranked):
        record = records[sid]
        best = [(tiles[mosaic[i]][0], tiles[mosaic[i]][1], tile) for i, tile in pairs]
        sources.append(RankedSource(rank, sid, record.name, record.path, record.label,
                                    record.patient_id, distance, best))
    best_hits = searcher.hits_at([pairs[0][1] for _, _, pairs in ranked], [0] * len(ranked))
    hits = [replace(hit, distance=distance) for hit, (_, distance, _) in zip(best_hits, ranked)]
    return CaseResult(sources[:k], group_cases(sources)[:k], [tiles[i] for i in mosaic],
                      len(tiles), hits=hits[:k],
                      found_by=[pairs[0][0] for _, _, pairs in ranked][:k],
                      mosaic_images=images, query_from_library=from_library)


def _tissue_tiles(source, searcher, encoder, slide_path, progress):
    """The tiling plan of a new slide at the library's tiling, and its tiles ``(x, y, size)``."""
    from hashview.tiling import TilingParams, plan_tiles

    report(progress, "tiling", 0, 1, str(slide_path))
    params = TilingParams(tile_size=searcher.tile_size, target_mpp=searcher.target_mpp)
    plan = plan_tiles(source, params, input_size=encoder.input_size)
    report(progress, "tiling", 1, 1, str(slide_path))
    return plan, [(t.x, t.y, t.size) for t in plan.tiles]


def _encode_mosaic(source, plan, mosaic, encoder, progress):
    """Codes and images of the mosaic tiles, read at full resolution (only they are)."""
    from hashview.tiling import read_tile_pixels

    images = []
    for done, i in enumerate(mosaic):
        report(progress, "reading", done, len(mosaic))
        images.append(encoder.to_input(read_tile_pixels(source, plan.tiles[i], plan)))
    report(progress, "encoding", 0, len(mosaic))
    codes = encoder.encode(images)
    report(progress, "encoding", len(mosaic), len(mosaic))
    return codes, [Image.fromarray(pixels) for pixels in images]
