"""Query latency against library size: exact, IVF and MultiHash binary indexes, float search.

What is measured, per code length (32/64/128 bits) and library size N:

- **p50 / p95 ms**: one query at a time, k = 10, through :func:`hashview.search.exact_topk` (what
  the searcher runs: FAISS search plus the tie handling), on one FAISS thread as the searcher
  runs single queries. Builds use FAISS's default threads (2 here).
- **recall@10** against the exact scan, tie-aware
  (:func:`hashview.search.sidecar.tie_aware_recall`).
- **build s**: building the index as the product does (:func:`sidecar.build_binary_index`,
  including the recall tuning of nprobe / nflip); for "flat", adding the codes.
- **memory MB**: growth of the process's resident memory (RSS) while the index was built, codes
  array excluded (they are generated before).
- The float row: FAISS ``IndexFlatL2`` over 2048-d float32 descriptors (the size of ResNet-50
  pooled features), the usual alternative to hashing, at the same N while memory allows.
- Start-up: :class:`hashview.search.Searcher` on a library file of 10^6 tiles (64 bits), exact
  and with the IVF index read from its sidecar.

Code generator (realistic, clustered codes, not uniform random): in full mode the centres are
the real codes the bundled models give the 8,963 real tiles of the shared data (breast IDC
patches and Kather-2016 tiles; ``dch-32``, ``dch-64``, ``hatdh-128``), cached in the workdir.
Each synthetic code is a centre picked at random with each bit flipped with probability
:data:`FLIP` (seeded), so the library holds the clusters real tissue gives, with the spread of
near-identical tissue around each. Queries are further codes of the same generator (another
seed). Quick mode draws 300 random centres instead (no model, seconds).
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from hashview.search import sidecar
from hashview.bench import Section, prepare
from hashview.progress import ProgressCallback, report
from hashview.search import exact_topk, faiss_threads

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("HASHVIEW_DATA", REPO.parent / "shared" / "data"))
FLIP = 0.05
K = 10
MODELS = {32: "dch-32", 64: "dch-64", 128: "hatdh-128"}
FLOAT_DIM = 2048
PLANS = {
    "quick": dict(bits=(64,), sizes=(2_000, 20_000), queries=20, multihash=(64, 20_000),
                  float_sizes=(2_000,), float_dim=256, startup_tiles=5_000, real=False),
    # MultiHash: 64 bits up to 10^6 only (its p50 there is already above the exact scan's);
    # the float index up to 10^5 (10^6 2048-d float32 vectors are 8.2 GB, too much for a
    # shared 24 GB machine)
    "full": dict(bits=(64, 128, 32),  # the default length first: measured first
                 sizes=(10_000, 100_000, 1_000_000, 10_000_000),
                 queries=200, multihash=(64, 1_000_000), float_sizes=(10_000, 100_000),
                 float_dim=FLOAT_DIM, startup_tiles=1_000_000, real=True),
}
COLUMNS = ["bits", "tiles", "index", "p50 ms", "p95 ms", "recall@10", "build s", "memory MB",
           "parameters"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------- codes

def real_centres(bits: int, workdir: Path, progress: ProgressCallback = None) -> np.ndarray:
    """The codes of every real tile of the shared data under the bundled model of ``bits``."""
    from hashview.encode import Encoder
    from hashview.models import load_model
    from hashview.tiling import load_patch

    loaded = load_model(MODELS[bits])
    cache = workdir / f"centres-{MODELS[bits]}-{loaded.card.sha256[:12]}.npy"
    if cache.exists():
        return np.load(cache)
    paths = (sorted(glob.glob(str(SHARED_DATA / "idc_breast" / "*" / "*.png")))
             + sorted(glob.glob(str(SHARED_DATA / "kather2016_subset" / "*" / "*.tif"))))
    if not paths:
        raise FileNotFoundError(f"{SHARED_DATA}: no IDC or Kather tiles to encode")
    report(progress, "query", 0, len(paths), f"encoding {len(paths)} real tiles ({MODELS[bits]})")
    encoder = Encoder(loaded, device="cpu")
    codes = np.concatenate(list(encoder.encode_batches(
        load_patch(p, encoder.input_size) for p in paths)))
    np.save(cache, codes)
    return codes


def random_centres(bits: int, n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, bits // 8), dtype=np.uint8)


def synthetic_codes(centres: np.ndarray, n: int, seed: int, flip: float = FLIP) -> np.ndarray:
    """``n`` codes: a random centre each, every bit flipped with probability ``flip``."""
    rng = np.random.default_rng(seed)
    bits = centres.shape[1] * 8
    out = centres[rng.integers(0, len(centres), n)]
    step = 1 << 19
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] ^= np.packbits(rng.random((stop - start, bits), dtype=np.float32) < flip,
                                       axis=1)
    return out


# ---------------------------------------------------------------------------------- timing

def latencies_ms(search_one, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p95 of single-query calls, after one warm-up call, on one FAISS thread as the
    searcher runs single queries (see hashview.search.SINGLE_THREAD_BELOW)."""
    times = []
    with faiss_threads(1):
        search_one(queries[:1])
        for row in range(len(queries)):
            started = time.perf_counter()
            search_one(queries[row:row + 1])
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def timed_build(build):
    """``(index, seconds, MB of resident memory gained)`` of ``build()``."""
    before = rss_mb()
    started = time.perf_counter()
    index = build()
    return index, time.perf_counter() - started, rss_mb() - before


def measure_binary(codes: np.ndarray, bits: int, queries: np.ndarray, kinds: list[str],
                   progress: ProgressCallback = None) -> list[dict]:
    """One dict per index kind: latency, recall, build time, memory, parameters."""
    results = []

    def exact_index():
        index = faiss.IndexBinaryFlat(bits)
        index.add(codes)
        return index

    flat, flat_build, flat_mem = timed_build(exact_index)
    exact_d, _ = flat.search(queries, K)
    p50, p95 = latencies_ms(lambda q: exact_topk(flat, q, K), queries)
    results.append(dict(kind="flat", p50_ms=p50, p95_ms=p95, recall=1.0, build_s=flat_build,
                        memory_mb=flat_mem, params={}))
    flat = None  # freed before the next build
    for kind in kinds:
        report(progress, "query", 0, 1, f"{kind}: {len(codes):,} x {bits} bits")
        before = rss_mb()
        built = sidecar.build_binary_index(codes, bits, kind)
        memory = rss_mb() - before
        d, i = built.index.search(queries, K)
        recall = sidecar.tie_aware_recall(exact_d, d, i, K)
        p50, p95 = latencies_ms(lambda q: exact_topk(built.index, q, K), queries)
        params = {key: v for key, v in built.params.items() if key != "kind"}
        results.append(dict(kind=kind, p50_ms=p50, p95_ms=p95, recall=recall,
                            build_s=built.seconds, memory_mb=memory, params=params,
                            tuning_recall=built.recall))
        built = None  # freed before the next build
    return results


def measure_float(n: int, dim: int, queries: int, seed: int = 0) -> dict:
    """``IndexFlatL2`` over ReLU-like descriptors (latency does not depend on the values)."""
    rng = np.random.default_rng(seed)
    centres = np.maximum(rng.normal(size=(64, dim)), 0).astype(np.float32)
    data = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        noise = rng.normal(scale=0.3, size=(stop - start, dim)).astype(np.float32)
        data[start:stop] = np.maximum(centres[rng.integers(0, 64, stop - start)] + noise, 0)
    query = data[rng.integers(0, n, queries)] + 0.05
    def float_index():
        index = faiss.IndexFlatL2(dim)
        index.add(data)
        return index

    index, build, memory = timed_build(float_index)
    p50, p95 = latencies_ms(lambda q: index.search(q, K), query)
    return dict(kind="float-l2", p50_ms=p50, p95_ms=p95, recall=1.0, build_s=build,
                memory_mb=memory, params={"dim": dim}, bytes_per_tile=dim * 4)


def measure_startup(workdir: Path, n_tiles: int, centres: np.ndarray,
                    progress: ProgressCallback = None) -> dict:
    """Searcher start-up on a library file of ``n_tiles`` 64-bit tiles (built once, cached)."""
    from hashview.library import Library
    from hashview.search import Searcher

    path = workdir / f"startup-{n_tiles}.h5"
    if not path.exists() or not sidecar.sidecar_path(path).exists():
        report(progress, "query", 0, 1, f"writing a library of {n_tiles:,} tiles")
        path.unlink(missing_ok=True)
        codes = synthetic_codes(centres, n_tiles, seed=7)
        per_source = 1000
        with Library.create(path, "bench-64", "dch", 64, "b" * 64) as lib:
            lib.add_sources(
                ({"path": f"/bench/slide-{s}.svs", "fingerprint": f"bench-{s}"},
                 codes[s * per_source:(s + 1) * per_source],
                 np.arange(per_source) * 224, np.zeros(per_source), np.full(per_source, 224))
                for s in range(n_tiles // per_source))
        with Library.open(path) as lib:
            Searcher(lib, index="ivf").build_index()
    timings = {}
    for mode in ("flat", "ivf"):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            with Library.open(path) as lib:
                searcher = Searcher(lib, index=mode)
            best = min(best, time.perf_counter() - started)
            assert searcher.index_kind == mode, searcher.index_notes
        timings[mode] = best
    return {"tiles": n_tiles, "exact_s": timings["flat"], "ivf_sidecar_s": timings["ivf"],
            "sidecar_mb": sidecar.sidecar_path(path).stat().st_size / 2 ** 20}


# ---------------------------------------------------------------------------------- section

def run(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None) -> Section:
    workdir = prepare(mode, workdir)
    plan = PLANS[mode]
    records = []
    centres_by_bits = {}
    for bits in plan["bits"]:
        centres = (real_centres(bits, workdir, progress) if plan["real"]
                   else random_centres(bits))
        centres_by_bits[bits] = centres
        queries = synthetic_codes(centres, plan["queries"], seed=10_000 + bits)
        for n in plan["sizes"]:
            codes = synthetic_codes(centres, n, seed=bits)
            multihash_bits, multihash_max = plan["multihash"]
            kinds = ["ivf"] + (["multihash"] if bits == multihash_bits and n <= multihash_max
                               else [])
            for result in measure_binary(codes, bits, queries, kinds, progress):
                result.update(bits=bits, tiles=n)
                records.append(result)
            del codes
            # partial results survive an interrupted full run
            (workdir / "partial.json").write_text(json.dumps(records, indent=1))
    for n in plan["float_sizes"]:
        result = measure_float(n, plan["float_dim"], plan["queries"])
        result.update(bits=f"{plan['float_dim']}-d float", tiles=n)
        records.append(result)
    startup = measure_startup(workdir, plan["startup_tiles"],
                              centres_by_bits.get(64, random_centres(64)), progress)
    return make_section(records, startup, plan)


def make_section(records: list[dict], startup: dict, plan: dict,
                 extra_notes: tuple[str, ...] = ()) -> Section:
    """The table and notes from measured ``records`` (dicts of :func:`measure_binary` and
    :func:`measure_float` with ``bits`` and ``tiles``) and :func:`measure_startup`'s result."""
    records = sorted(records, key=lambda r: (isinstance(r["bits"], str), str(r["bits"]).zfill(4),
                                             r["tiles"]))
    rows = [_row(r) for r in records]
    notes = [
        "Codes: centres = the real codes of the 8,963 shared IDC + Kather tiles under the bundled "
        f"model of each length, each synthetic code a centre with every bit flipped with "
        f"probability {FLIP}; queries from the same generator (other seed)."
        if plan["real"] else "Quick mode: 300 random centres, bit flips as in full mode.",
        "Single queries, k = 10, one FAISS thread (builds: 2); recall@10 is tie-aware against "
        "the exact scan; memory = RSS growth while building the index.",
        f"MultiHash is measured at {plan['multihash'][0]} bits up to {plan['multihash'][1]:,} "
        f"tiles; the float IndexFlatL2 "
        f"({plan['float_dim']}-d float32, {plan['float_dim'] * 4} bytes per tile) up to "
        f"{max(plan['float_sizes']):,}.",
        f"Start-up of the searcher on a library file of {startup['tiles']:,} 64-bit tiles: "
        f"{startup['exact_s']:.2f} s exact, {startup['ivf_sidecar_s']:.2f} s with the IVF index "
        f"read from its {startup['sidecar_mb']:.0f} MB sidecar (best of 3; model loading not "
        "included).",
        f"Automatic choice: exact while tiles x bits < "
        f"2^{int(np.log2(sidecar.EXACT_LIMIT_BITS))} "
        "(hashview.search.sidecar.EXACT_LIMIT_BITS), IVF above.",
        *extra_notes,
    ]
    return Section(name="query", title="Query latency against library size", columns=COLUMNS,
                   rows=rows, notes=notes, data={"results": records, "startup": startup,
                                                 "flip": FLIP, "k": K})


def _row(r: dict) -> list:
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
    return [r["bits"], f"{r['tiles']:,}", r["kind"], f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}",
            f"{r['recall']:.3f}", f"{r['build_s']:.2f}", f"{r['memory_mb']:.0f}", params]

