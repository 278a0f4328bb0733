"""HashView against the usual alternative, same machine, same slide, same tiles, same run.

The alternative is the CLAM / Cytomine-style pipeline: ``openslide.OpenSlide.read_region`` per
tile, a torchvision ResNet-50 (random weights: only its speed matters here) giving a 2048-d float
feature per tile, and a float FAISS ``IndexFlatL2``. Choices:

- Same tiles: the baseline reads HashView's own tile plan of the slide (same positions, same
  level-0 size), resized to ResNet-50's 224 px input, so N is equal and the area per tile too.
- Same batch size as HashView's encoder on this device, same torch threads; channels-last and
  inference mode for the ResNet as well, so the comparison is not won by sloppy baseline code.
- Bytes per tile: HashView = library file size / tiles (codes + positions + source table, HDF5);
  baseline = the FAISS index written to disk / tiles (2048 float32 = 8 KiB each, positions not
  even included).
- Query time at equal N: one query against N stored tiles, median of repeated searches, for the
  slide's own N and for a larger N filled with random vectors (flat search time depends only on
  N and the vector size, not the values).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Optional

import numpy as np

from hashview.bench import THREADS, Section, prepare, compute_threads
from hashview.bench.throughput import slides_for
from hashview.encode import Encoder, pick_device
from hashview.indexing import index_paths, model_tiling
from hashview.library import Library, ModelInfo
from hashview.models import DEFAULT_MODEL, load_model
from hashview.progress import ProgressCallback, report
from hashview.search import Searcher, exact_topk
from hashview.slides import open_source
from hashview.tiling import plan_tiles

FEATURE_DIM = 2048
RESNET_INPUT = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# mode -> (tiles per slide for the ResNet pipeline, the larger N for query time, query repeats)
SIZES = {"quick": (4, 1000, 3), "full": (100, 100_000, 30)}


def resnet50_features(device):
    """A torchvision ResNet-50 without its classifier (2048-d pooled features), eval mode."""
    import torch
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Identity()
    return net.eval().to(device).to(memory_format=torch.channels_last)


def baseline_index(slide: Path, tiles, level: int, read_size: int, net, device,
                   batch_size: int):
    """The alternative pipeline end to end: read, resize, normalise, ResNet-50, IndexFlatL2."""
    import faiss
    import openslide
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    index = faiss.IndexFlatL2(FEATURE_DIM)
    autocast = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    with openslide.OpenSlide(str(slide)) as handle, torch.inference_mode(), autocast:
        for start in range(0, len(tiles), batch_size):
            batch = []
            for tile in tiles[start:start + batch_size]:
                region = handle.read_region((tile.x, tile.y), level, (read_size, read_size))
                region = region.convert("RGB").resize((RESNET_INPUT, RESNET_INPUT))
                batch.append(np.asarray(region))
            x = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float()
            features = net((x - mean) / std).float().cpu().numpy()
            index.add(np.ascontiguousarray(features, dtype=np.float32))
    return index


def ratio(a: float, b: float) -> str:
    """``a / b`` as "3.2x" (or "120x")."""
    r = a / b if b else float("inf")
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def median_query_ms(search, repeats: int) -> float:
    search()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        search()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def library_bytes_per_tile(codes: np.ndarray, card, path: Path) -> float:
    """File size per tile of a HashView library holding ``codes`` (one source, grid positions)."""
    path.unlink(missing_ok=True)
    n = len(codes)
    side = card.tile_size or 224
    record = {"path": str(path), "fingerprint": f"bench-baseline-{n}", "name": "random",
              "width": side * 1000, "height": side * (n // 1000 + 1), "kind": "slide"}
    positions = np.arange(n, dtype=np.int64)
    with Library.create(path, ModelInfo.coerce(card), tile_size=side,
                        target_mpp=card.target_mpp or 0.5) as library:
        library.add_source(record, codes, (positions % 1000) * side, (positions // 1000) * side,
                           np.full(n, side, np.int64))
    size = path.stat().st_size / n
    path.unlink()
    return size


def flat_index_bytes_per_tile(index, path: Path) -> float:
    import faiss

    faiss.write_index(index, str(path))
    size = path.stat().st_size / index.ntotal
    path.unlink()
    return size


def large_n(n: int, card, repeats: int, workdir: Path, seed: int = 0) -> dict:
    """Bytes per tile and one query's time for ``n`` random stored tiles, both pipelines, with
    the default FAISS threads and with one (as for the region benchmark)."""
    import faiss

    bits = card.bits
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    ours_bytes = library_bytes_per_tile(codes, card, workdir / "random-library.h5")
    binary = faiss.IndexBinaryFlat(bits)  # what hashview.search.Searcher builds
    binary.add(codes)
    query_code = codes[:1].copy()
    ours = {}
    for label, threads in THREADS:
        with compute_threads(threads):
            ours[label] = median_query_ms(lambda: exact_topk(binary, query_code, 10), repeats)
    flat = faiss.IndexFlatL2(FEATURE_DIM)
    for start in range(0, n, 20_000):  # in chunks: one n x 2048 float64 draw would be 2x memory
        flat.add(rng.standard_normal((min(20_000, n - start), FEATURE_DIM), dtype=np.float32))
    query = rng.standard_normal((1, FEATURE_DIM), dtype=np.float32)
    theirs = {}
    for label, threads in THREADS:
        with compute_threads(threads):
            theirs[label] = median_query_ms(lambda: flat.search(query, 10), repeats)
    return {"n": n, "threads": [label for label, _ in THREADS],
            "ours_ms": [round(ours[label], 3) for label, _ in THREADS],
            "baseline_ms": [round(theirs[label], 3) for label, _ in THREADS],
            "ours_bytes_per_tile": round(ours_bytes, 1),
            "baseline_bytes_per_tile": round(flat_index_bytes_per_tile(flat, workdir / "flat.faiss"), 1)}


def run(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None) -> Section:
    import faiss

    workdir = prepare(mode, workdir)
    per_slide, n_large, repeats = SIZES[mode]
    loaded = load_model(DEFAULT_MODEL)
    device = pick_device("auto")
    encoder = Encoder(loaded, device=device)
    net = resnet50_features(device)
    rows, data = [], {"slides": [], "query": []}
    slides = [s for s, _ in slides_for(mode, workdir.parent / "throughput", progress)]
    for n, slide in enumerate(slides):
        report(progress, "baseline", n, len(slides), slide.name)
        params = dataclasses.replace(model_tiling(loaded.card), max_tiles=per_slide)
        library = workdir / f"{slide.stem}.h5"
        library.unlink(missing_ok=True)
        start = time.perf_counter()
        result = index_paths([slide], library, model=loaded, params=params, device=str(device))
        ours_s = time.perf_counter() - start
        with open_source(slide) as source:
            plan = plan_tiles(source, params)
        start = time.perf_counter()
        index = baseline_index(slide, plan.tiles, plan.level, plan.read_size, net, device,
                               encoder.batch_size)
        theirs_s = time.perf_counter() - start
        tiles = result.tiles_added
        faiss_path = workdir / f"{slide.stem}.faiss"
        faiss.write_index(index, str(faiss_path))
        with Library.open(library, mode="r") as lib:
            searcher = Searcher(lib)
            query_code = lib.codes()[:1]
        ours_q = median_query_ms(lambda: searcher.search(query_code, k=10), repeats)
        query = np.zeros((1, FEATURE_DIM), np.float32)
        theirs_q = median_query_ms(lambda: index.search(query, 10), repeats)
        m = {"slide": slide.name, "tiles": tiles, "ours_s": round(ours_s, 2),
             "baseline_s": round(theirs_s, 2),
             "ours_tiles_per_s": round(tiles / ours_s, 2),
             "baseline_tiles_per_s": round(tiles / theirs_s, 2),
             "ours_bytes_per_tile": round(library.stat().st_size / tiles, 1),
             "baseline_bytes_per_tile": round(faiss_path.stat().st_size / tiles, 1),
             "ours_query_ms": round(ours_q, 3), "baseline_query_ms": round(theirs_q, 3)}
        data["slides"].append(m)
        rows.append([slide.name, tiles, m["ours_tiles_per_s"], m["baseline_tiles_per_s"],
                     ratio(m['ours_tiles_per_s'], m['baseline_tiles_per_s']),
                     m["ours_bytes_per_tile"], m["baseline_bytes_per_tile"],
                     ratio(m['baseline_bytes_per_tile'], m['ours_bytes_per_tile']),
                     f"{ours_q:.3f}", f"{theirs_q:.3f}", ratio(theirs_q, ours_q)])
    big = large_n(n_large, loaded.card, repeats, workdir)
    data["query"].append(big)
    for label, ours_ms, theirs_ms in zip(big["threads"], big["ours_ms"], big["baseline_ms"]):
        rows.append([f"random codes / vectors, N = {n_large:,}, FAISS threads: {label}", n_large,
                     "", "", "", big["ours_bytes_per_tile"], big["baseline_bytes_per_tile"],
                     ratio(big['baseline_bytes_per_tile'], big['ours_bytes_per_tile']),
                     f"{ours_ms:.3f}", f"{theirs_ms:.3f}", ratio(theirs_ms, ours_ms)])
    notes = [
        f"HashView: `index_paths` with `{loaded.card.name}` ({loaded.card.bits}-bit codes), exact "
        f"Hamming search (FAISS IndexBinaryFlat). Baseline: openslide read_region + torchvision "
        f"ResNet-50 (random weights, 224 px, 2048-d float32) + FAISS IndexFlatL2. Same tiles "
        f"(HashView's plan, a seeded subset of at most {per_slide} per slide), same batch size "
        f"({encoder.batch_size}), device {device.type}.",
        "bytes/tile: HashView library file (codes, positions, sources; HDF5) vs the written "
        "FAISS index (vectors only); on a slide's few tiles the library's fixed HDF5 overhead "
        "dominates, the large-N row is the per-tile cost. Query: median time of one top-10 "
        "search over the N tiles (FAISS threads as configured by default, and 1 on the "
        "large-N rows).",
    ]
    return Section(name="baseline",
                   title="Against openslide + ResNet-50 + IndexFlatL2 (same slide, same tiles)",
                   columns=["slide", "tiles", "HashView tiles/s", "baseline tiles/s", "speed-up",
                            "HashView bytes/tile", "baseline bytes/tile", "smaller by",
                            "HashView query ms", "baseline query ms", "faster by"],
                   rows=rows, notes=notes, data=data)
