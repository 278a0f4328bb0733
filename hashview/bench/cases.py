"""Whole-slide (case) search speed: seconds per query against the number of library slides.

What is timed: :func:`hashview.search.cases.rank_sources`, the step whose cost grows with the
library (every library code against every mosaic code, in blocks on all cores, the
median-of-min per slide, the best tile pairs of the top 5). The query slide's mosaic selection
is not included: it costs the same whatever the library's size (a thumbnail and two small
k-means, or reading and encoding a few dozen tiles for a new slide).

Library: ``slides`` x ``tiles`` random 64-bit codes, source by source as a library stores them.
Random codes are enough: every code is compared with every mosaic code, whatever the values.
Mosaics: :data:`~hashview.search.cases.COLOUR_CLUSTERS` codes (the smallest mosaic, one per
colour cluster) and the size the mosaic rule gives a query slide of ``tiles`` tiles
(:data:`~hashview.search.cases.MOSAIC_SHARE` of them). Each query is a new random mosaic,
after one single-code warm-up query; the median over the queries is reported.

The 10^5-slide rows are a linear estimate from the measured ones (the cost is library codes x
mosaic codes), not a measurement: their codes alone would be 2.4 GB.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from hashview.bench import Section, prepare
from hashview.progress import ProgressCallback, report

PLANS = {
    # the test suite's size: seconds
    "quick": dict(slides=200, tiles=300, queries=3, estimate_slides=2_000),
    # 3 x 10^7 tiles: 240 MB of codes, 120 MB of source ids, 16 MB of distances per thread
    "full": dict(slides=10_000, tiles=3_000, queries=3, estimate_slides=100_000),
}
COLUMNS = ["slides", "tiles per slide", "library tiles", "mosaic codes", "median s per query",
           "min s", "max s", "how"]
TOP_K = 5


def mosaic_sizes(tiles: int) -> list[int]:
    """The smallest mosaic and the one the mosaic rule gives a ``tiles``-tile query slide."""
    from hashview.search.cases import COLOUR_CLUSTERS, MOSAIC_SHARE

    per_cluster = max(1, round(MOSAIC_SHARE * tiles / COLOUR_CLUSTERS))
    return sorted({COLOUR_CLUSTERS, COLOUR_CLUSTERS * per_cluster})


def random_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random packed 64-bit codes, drawn as uint64 so no wider temporary is made."""
    wide = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    return wide.view(np.uint8).reshape(n, 8)


def synthetic_library(slides: int, tiles: int, seed: int = 0) -> SimpleNamespace:
    """What :func:`rank_sources` reads of a searcher, for ``slides`` x ``tiles`` random codes
    stored source by source (int32 source ids, as a library's tile table keeps them)."""
    rng = np.random.default_rng(seed)
    return SimpleNamespace(codes=random_codes(slides * tiles, rng),
                           tile_sources=np.repeat(np.arange(slides, dtype=np.int32), tiles),
                           code_kind="binary", path="synthetic")


def time_case_ranking(slides: int, tiles: int, mosaics: list[int], queries: int = 3,
                      seed: int = 0, progress: ProgressCallback = None) -> list[dict]:
    """One dict per mosaic size: the seconds of each of ``queries`` rankings (top 5) of a
    library of ``slides`` x ``tiles`` random 64-bit codes."""
    from hashview.search.cases import rank_sources

    library = synthetic_library(slides, tiles, seed)
    rng = np.random.default_rng(seed + 1)
    rank_sources(library, random_codes(1, rng), k=TOP_K)  # pages the codes in
    results = []
    for size in mosaics:
        seconds = []
        for q in range(queries):
            report(progress, "cases", q, queries, f"{slides:,} slides, {size}-code mosaic")
            mosaic = random_codes(size, rng)
            started = time.perf_counter()
            ranked = rank_sources(library, mosaic, k=TOP_K)
            seconds.append(time.perf_counter() - started)
            assert len(ranked) == min(TOP_K, slides)
        results.append(dict(slides=slides, tiles=tiles, mosaic=size, seconds=seconds,
                            median_s=float(np.median(seconds)), min_s=min(seconds),
                            max_s=max(seconds)))
    return results


def describe(result: dict) -> str:
    """One line for a terminal: what was ranked and how long it took."""
    return (f"ranking {result['slides']:,} slides x {result['tiles']:,} tiles (64-bit) for a "
            f"{result['mosaic']}-code mosaic, top {TOP_K}: median {result['median_s']:.3f} s "
            f"over {len(result['seconds'])} queries (min {result['min_s']:.2f}, "
            f"max {result['max_s']:.2f})")


def run(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None) -> Section:
    prepare(mode, workdir)
    plan = PLANS[mode]
    results = time_case_ranking(plan["slides"], plan["tiles"], mosaic_sizes(plan["tiles"]),
                                plan["queries"], progress=progress)
    factor = plan["estimate_slides"] / plan["slides"]
    rows = []
    for r in results:
        rows.append([f"{r['slides']:,}", f"{r['tiles']:,}", f"{r['slides'] * r['tiles']:,}",
                     r["mosaic"], f"{r['median_s']:.3f}", f"{r['min_s']:.3f}",
                     f"{r['max_s']:.3f}", f"measured, {len(r['seconds'])} queries"])
    for r in results:
        rows.append([f"{plan['estimate_slides']:,}", f"{r['tiles']:,}",
                     f"{plan['estimate_slides'] * r['tiles']:,}", r["mosaic"],
                     f"{r['median_s'] * factor:.3f}", "-", "-",
                     f"estimate: {factor:g} x the measured median, not measured"])
    codes_mb = plan["slides"] * plan["tiles"] * 8 / 1e6
    notes = [
        f"Timed: the ranking step (`rank_sources`, top {TOP_K}) on random 64-bit codes "
        f"({codes_mb:,.1f} MB of codes); the query's mosaic selection is not included (its cost "
        "does not grow with the library).",
        f"Mosaics: {' and '.join(str(m) for m in mosaic_sizes(plan['tiles']))} codes: one per "
        f"colour cluster, and what the mosaic rule takes of a {plan['tiles']:,}-tile query "
        "slide. Every library code meets every mosaic code (blocks of library codes on all "
        "cores).",
        f"{plan['estimate_slides']:,}-slide rows: a linear estimate on paper "
        f"({factor:g} x the measured median; their codes alone would be "
        f"{codes_mb * factor / 1e3:,.2f} GB), not a measurement.",
    ]
    return Section(name="cases", title="Whole-slide (case) search speed", columns=COLUMNS,
                   rows=rows, notes=notes,
                   data={"results": results, "estimate_slides": plan["estimate_slides"],
                         "estimates": {r["mosaic"]: r["median_s"] * factor for r in results}})
