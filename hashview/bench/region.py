"""Find similar region, end to end, on a library of 10^6 tiles.

One query does what the app does after a right-click (``hashview.gui.search_controller`` and the
results panel): open the query slide, read the region as library-sized tiles
(:func:`hashview.search.query.region_tiles`), encode and search them (what
:func:`hashview.search.query.search_images` does for one tile: encode, then
:func:`hashview.search.query.rank_codes`: exact Hamming top-k, the merge over query tiles and the
count of tiles tied at the cut; timed apart here), then load the k hit thumbnails (104 px, as
the results grid shows them) from their slides on two reader threads with the open slides cached,
as the app's background reader does. Search and model are loaded once
(:meth:`hashview.session.LibrarySession.load`, reported as start-up), like an open library in
the app.

The library is synthetic but built through :class:`hashview.library.Library`: its tiles point at
real positions of the real shared slides (many source records per slide file) and its codes are
the slides' real tile codes with 6% of the bits flipped at random, so hits are spread over
sources and positions as in a real library. It is built once per size and reused.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from hashview.bench import THREADS, Section, prepare, compute_threads
from hashview.bench.throughput import real_slides
from hashview.encode import Encoder, pack_codes
from hashview.indexing import model_tiling, tile_loader
from hashview.library import Library, ModelInfo
from hashview.models import DEFAULT_MODEL, LoadedModel, load_model
from hashview.progress import ProgressCallback, report
from hashview.search.query import rank_codes, region_tiles
from hashview.session import LibrarySession
from hashview.slides import Source, open_source
from hashview.slides.thumbnail import read_thumbnail
from hashview.tiling import plan_tiles

THUMB = 104  # the results grid's thumbnail side (hashview.gui.results.THUMB)
TILES_PER_SOURCE = 5000
FLIP_RATE = 0.06
# mode -> (library tiles, queries, k)
SIZES = {"quick": (5_000, 3, 10), "full": (1_000_000, 60, 10)}
STAGES = ["read region", "encode", "search", "thumbnails", "total"]


def slide_codes(loaded: LoadedModel, slide: Path, limit: Optional[int]) -> tuple[np.ndarray, tuple]:
    """Real packed codes of a slide's tiles and the slide's level-0 size and tile side."""
    encoder = Encoder(loaded, device="cpu")
    params = model_tiling(loaded.card)
    with open_source(slide) as source:
        plan = plan_tiles(source, params, input_size=encoder.input_size)
        tiles = plan.tiles[:limit] if limit else plan.tiles
        load = tile_loader(source, plan, encoder)
        codes = np.concatenate(list(encoder.encode_batches([load(t) for t in tiles])))
        return codes, (source.dimensions, plan.tile_level0)


def build_library(path: Path, loaded: LoadedModel, n_tiles: int, slides: list[Path],
                  seed: int = 0, progress: Optional[ProgressCallback] = None) -> Path:
    """A library of ``n_tiles`` tiles on ``slides`` (see the module notes); reused if present."""
    if path.exists():
        with Library.open(path, mode="r") as library:
            if library.n_tiles == n_tiles:
                return path
        path.unlink()
    rng = np.random.default_rng(seed)
    per_slide = [slide_codes(loaded, s, 16 if n_tiles < 100_000 else None) for s in slides]
    card = loaded.card
    items = []
    for i, start in enumerate(range(0, n_tiles, TILES_PER_SOURCE)):
        count = min(TILES_PER_SOURCE, n_tiles - start)
        slide = slides[i % len(slides)]
        codes, ((width, height), side) = per_slide[i % len(slides)]
        bits = np.unpackbits(codes[rng.integers(0, len(codes), count)], axis=1)
        bits ^= (rng.random(bits.shape) < FLIP_RATE).astype(np.uint8)
        record = {"path": str(slide.resolve()), "fingerprint": f"bench-region-{seed}-{i}",
                  "name": f"{slide.name} #{i}", "width": width, "height": height,
                  "kind": "slide", "label": None}
        xs = rng.integers(0, (width - side) // side + 1, count) * side
        ys = rng.integers(0, (height - side) // side + 1, count) * side
        items.append((record, pack_codes(bits.astype(np.float32) - 0.5), xs, ys,
                      np.full(count, side, np.int64)))
    info = ModelInfo.coerce(card)
    tmp = path.with_suffix(".tmp.h5")
    tmp.unlink(missing_ok=True)
    with Library.create(tmp, info, tile_size=card.tile_size or 224,
                        target_mpp=card.target_mpp or 0.5) as library:
        for n in range(0, len(items), 20):  # a commit per 100k tiles
            library.add_sources(items[n:n + 20])
            report(progress, "region library", min(n + 20, len(items)), len(items))
    tmp.replace(path)
    return path


class HitReader:
    """Hit thumbnails as the app's results panel loads them: open slides kept, two threads."""

    def __init__(self, threads: int = 2):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bench-thumbs")
        self.sources: dict[str, Source] = {}

    def source(self, path: str) -> Source:
        if path not in self.sources:
            self.sources[path] = open_source(path)
        return self.sources[path]

    def thumbnail(self, hit) -> Image.Image:
        return read_thumbnail(self.source(hit.source_path), (hit.x, hit.y, hit.size, hit.size),
                              THUMB)

    def load(self, hits) -> list[Image.Image]:
        for hit in hits:  # open on this thread: the cache is not shared while reading
            self.source(hit.source_path)
        return list(self.pool.map(self.thumbnail, hits))

    def close(self) -> None:
        self.pool.shutdown()
        for source in self.sources.values():
            source.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def query_loop(searcher, encoder, slides: list[Path], params, n_queries: int, k: int,
               seed: int = 1, progress: Optional[ProgressCallback] = None) -> dict[str, list]:
    """Milliseconds per stage of ``n_queries`` one-tile region queries (see the module notes)."""
    rng = np.random.default_rng(seed)
    reader = HitReader()
    stages: dict[str, list] = {name: [] for name in STAGES}
    try:
        for q in range(n_queries):
            report(progress, "region queries", q, n_queries)
            slide = slides[q % len(slides)]
            t0 = time.perf_counter()
            with open_source(slide) as source:
                width, height = source.dimensions
                side = round(params.tile_size * params.target_mpp / (source.mpp or 0.5))
                region = (int(rng.integers(0, width - side)), int(rng.integers(0, height - side)),
                          side, side)
                images = region_tiles(source, region, params, encoder.input_size)
            t1 = time.perf_counter()
            codes = encoder.encode(images)
            t2 = time.perf_counter()
            # what search_images does after encoding: fetch, merge, the cut-tie count
            hits = rank_codes(searcher, codes, k).hits
            t3 = time.perf_counter()
            thumbs = reader.load(hits)
            t4 = time.perf_counter()
            if not len(thumbs) == len(hits) == k:
                raise RuntimeError(f"expected {k} hits and thumbnails, got {len(thumbs)}")
            for name, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                stages[name].append(round(seconds * 1000, 2))
    finally:
        reader.close()
    return stages


def run(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None) -> Section:
    workdir = prepare(mode, workdir)
    n_tiles, n_queries, k = SIZES[mode]
    loaded = load_model(DEFAULT_MODEL)
    slides = real_slides()
    start = time.perf_counter()
    library = build_library(workdir / f"region-{n_tiles}.h5", loaded, n_tiles, slides,
                            progress=progress)
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    session = LibrarySession(library, device="auto")
    searcher, encoder = session.load(), session.encoder
    startup_s = time.perf_counter() - start
    params = model_tiling(loaded.card)
    rows, data, p50 = [], {}, {}
    for label, threads in THREADS:
        with compute_threads(threads):
            stages = query_loop(searcher, encoder, slides, params, n_queries, k,
                                progress=progress)
        data[label] = stages
        for name, values in stages.items():
            warm = values[1:] or values
            rows.append([name, label, f"{percentile(warm, 50):.1f}",
                         f"{percentile(warm, 95):.1f}", f"{values[0]:.1f}"])
        p50[label] = percentile(stages["total"][1:] or stages["total"], 50)
    verdicts = ", ".join(f"{label}: {'met' if v < 300 else 'not met'} ({v:.0f} ms)"
                         for label, v in p50.items())
    notes = [
        f"Library: {n_tiles:,} tiles ({loaded.card.name} codes) on {len(slides)} real slides "
        f"({', '.join(s.name for s in slides)}), built through `Library` in {build_s:.0f} s "
        f"(0 s when reused); start-up (load library, FAISS index and model: `LibrarySession.load`) "
        f"{startup_s * 1000:.0f} ms, once per library as in the app.",
        f"{n_queries} queries of one tile at random positions (alternating slides), top-{k}; "
        f"p50/p95 over the queries after the first; the first query (cold thumbnail sources) "
        f"is shown on its own. Each query: open the slide and read the region, encode, exact "
        f"Hamming search with the merge and the count of tiles tied at the cut (`rank_codes`, "
        f"as `search_images` does), read the {k} hit "
        f"thumbnails.",
        f"threads: the defaults (torch and FAISS use every core) and 1 thread for both. "
        f"Target p50 total under 300 ms on 2 CPU cores: {verdicts}.",
    ]
    return Section(name="region", title=f"Find similar region, end to end ({n_tiles:,} tiles)",
                   columns=["stage", "threads", "p50 ms", "p95 ms", "first query ms"],
                   rows=rows, notes=notes,
                   data={"n_tiles": n_tiles, "queries": n_queries, "k": k,
                         "build_s": round(build_s, 1), "startup_ms": round(startup_s * 1000, 1),
                         "ms": data})
