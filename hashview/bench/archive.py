"""Archive scale: a library file of 10^8 64-bit tiles opened, indexed and searched as the product
does it. Opt-in (``hashview bench --full --only archive``): about a quarter of an hour of both
cores and a few GB of memory and disk.

Phases, each with its wall time and the process's peak resident memory (``VmHWM``, reset before
each phase where Linux allows):

- **write**: synthetic codes (:func:`hashview.bench.query.synthetic_codes`: real model codes of
  real tiles as centres in full mode, each bit flipped with probability 0.05) appended through
  :meth:`Library.add_sources`, sources of :data:`TILES_PER_SOURCE` tiles, 100 per commit.
- **open**: ``Library.open`` and :class:`Searcher` with no sidecar yet (codes, tile table, the
  exact index it searches with until the approximate one is ready).
- **build**: :meth:`Searcher.build_index` as the app runs it in the background: k-means, adding
  every code, the nprobe tuning, then the sidecar written next to the library.
- **reopen**: ``Library.open`` and :class:`Searcher` again, the IVF index read from its sidecar
  (checked: header, checksum, every list and id).
- **query**: single queries through :meth:`Searcher.search` (k = 10, one FAISS thread, hits with
  their slide, position and label), p50 / p95 over queries from the same generator (other seed).
- **recall**: tie-aware recall@10 of those searches against an exact scan of every code
  (``faiss.knn_hamming`` over the searcher's codes, both cores) for the first queries.
- **query, nprobe 2x**: the same queries with twice the tuned nprobe (latency and recall), the
  margin a safer tuning would buy.

The work folder's library and sidecar are deleted at the end. ``HASHVIEW_BENCH_ARCHIVE_TILES``
sets another library size (e.g. 10^7 while developing).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from hashview.bench import Section, prepare
from hashview.bench.query import K, random_centres, real_centres, synthetic_codes
from hashview.progress import ProgressCallback, report
from hashview.search import sidecar

BITS = 64
TILES_PER_SOURCE = 3_000
SOURCES_PER_COMMIT = 100
TILES_ENV = "HASHVIEW_BENCH_ARCHIVE_TILES"
PLANS = {
    # quick: a smoke run of seconds (the IVF index is asked for: the product would search
    # so few tiles exactly)
    "quick": dict(tiles=60_000, queries=20, reference=10, real=False),
    "full": dict(tiles=100_000_000, queries=200, reference=200, real=True),
}
COLUMNS = ["phase", "seconds", "peak RSS GiB", "RSS after GiB", "result"]


# ---------------------------------------------------------------------------------- memory

def _status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def reset_peak_rss() -> None:
    """Start a new peak (``VmHWM``) where Linux allows it; elsewhere the peak is cumulative."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Phase:
    """Wall time and peak / final resident memory of one ``with`` block."""

    def __init__(self, name: str, records: list[dict]):
        self.record = {"phase": name}
        records.append(self.record)

    def __enter__(self) -> dict:
        gc.collect()
        reset_peak_rss()
        self._started = time.perf_counter()
        return self.record

    def __exit__(self, *exc) -> None:
        self.record.update(seconds=time.perf_counter() - self._started,
                           peak_rss_gib=_status_gib("VmHWM"), rss_gib=_status_gib("VmRSS"))


# ---------------------------------------------------------------------------------- phases

def write_library(path: Path, centres: np.ndarray, n_tiles: int, seed: int = 64) -> None:
    """A library of ``n_tiles`` synthetic codes in sources of :data:`TILES_PER_SOURCE` tiles (a
    60-tile-wide grid each), generated and appended one commit at a time."""
    from hashview.library import Library

    per_commit = TILES_PER_SOURCE * SOURCES_PER_COMMIT
    grid = np.arange(TILES_PER_SOURCE)
    xs, ys = (grid % 60 * 224).astype(np.int32), (grid // 60 * 224).astype(np.int32)
    sizes = np.full(TILES_PER_SOURCE, 224)
    with Library.create(path, "bench-64", "dch", BITS, "b" * 64, overwrite=True) as lib:
        for commit, start in enumerate(range(0, n_tiles, per_commit)):
            codes = synthetic_codes(centres, min(per_commit, n_tiles - start), seed=[seed, commit])
            first = start // TILES_PER_SOURCE
            lib.add_sources(
                ({"path": f"/archive/slide-{first + s}.svs", "fingerprint": f"archive-{first + s}",
                  "label": ("tumour", "stroma", "normal")[(first + s) % 3]},
                 part, xs[:len(part)], ys[:len(part)], sizes[:len(part)])
                for s, part in enumerate(np.array_split(
                    codes, range(TILES_PER_SOURCE, len(codes), TILES_PER_SOURCE))))


def open_searcher(path: Path, kind: str):
    from hashview.library import Library
    from hashview.search import Searcher

    with Library.open(path) as lib:
        return Searcher(lib, index=kind)


def search_latencies(searcher, queries: np.ndarray) -> tuple[list[float], list[list]]:
    """Milliseconds of each single-query search (after one warm-up) and its hits."""
    searcher.search(queries[:1], k=K)
    times, hits = [], []
    for row in queries:
        started = time.perf_counter()
        found = searcher.search(row, k=K)[0]
        times.append((time.perf_counter() - started) * 1e3)
        hits.append(found)
    return times, hits


def exact_distances(searcher, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """The exact top-k distances of ``queries`` (a scan of every code, in place) and the seconds
    the scan took per query."""
    started = time.perf_counter()
    exact_d, _ = faiss.knn_hamming(np.ascontiguousarray(queries), searcher.codes, K)
    return exact_d, (time.perf_counter() - started) / len(queries)


def recall_of(exact_d: np.ndarray, hits: list[list]) -> float:
    """Tie-aware recall@10 of each query's ``hits`` against its exact distances."""
    approx_d = np.full((len(hits), K), np.iinfo(np.int32).max, np.int64)
    approx_i = np.full((len(hits), K), -1, np.int64)
    for row, found in enumerate(hits):
        approx_d[row, :len(found)] = [hit.distance for hit in found]
        approx_i[row, :len(found)] = [hit.tile_index for hit in found]
    return sidecar.tie_aware_recall(exact_d, approx_d, approx_i, K)


# ---------------------------------------------------------------------------------- section

def run(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None) -> Section:
    workdir = prepare(mode, workdir)
    plan = dict(PLANS[mode])
    if os.environ.get(TILES_ENV):
        plan["tiles"] = int(float(os.environ[TILES_ENV]))
    n = plan["tiles"]
    centres = real_centres(BITS, workdir, progress) if plan["real"] else random_centres(BITS)
    queries = synthetic_codes(centres, plan["queries"], seed=10_000 + BITS)
    path = workdir / f"archive-{n}.h5"
    records: list[dict] = []
    try:
        records = measure(path, centres, queries, plan, progress)
    finally:
        for leftover in (path, sidecar.sidecar_path(path)):
            leftover.unlink(missing_ok=True)
    return make_section(records, n, plan)


def measure(path: Path, centres: np.ndarray, queries: np.ndarray, plan: dict,
            progress: ProgressCallback = None) -> list[dict]:
    """The phases' records (see the module's docstring) on a new library at ``path``."""
    n, records = plan["tiles"], []
    report(progress, "archive", 0, 7, f"writing a library of {n:,} tiles")
    with Phase("write", records) as rec:
        write_library(path, centres, n)
    rec.update(file_bytes=path.stat().st_size, bytes_per_tile=path.stat().st_size / n)
    report(progress, "archive", 1, 7, "opening it")
    with Phase("open", records) as rec:
        searcher = open_searcher(path, "ivf")
    rec["index"] = searcher.index_kind
    report(progress, "archive", 2, 7, "building the IVF index")
    with Phase("build", records) as rec:
        built = searcher.build_index()
    rec.update(index_seconds=built.seconds, params=built.params, tuning_recall=built.recall,
               sidecar_bytes=searcher.sidecar_path.stat().st_size, notes=built.notes)
    del searcher, built
    report(progress, "archive", 3, 7, "opening it with its sidecar")
    with Phase("reopen", records) as rec:
        searcher = open_searcher(path, "ivf")
    rec.update(index=searcher.index_kind, notes=searcher.index_notes)
    report(progress, "archive", 4, 7, f"{len(queries)} single queries")
    with Phase("query", records) as rec:
        times, hits = search_latencies(searcher, queries)
    rec.update(p50_ms=float(np.percentile(times, 50)), p95_ms=float(np.percentile(times, 95)),
               queries=len(queries))
    report(progress, "archive", 5, 7, f"exact reference for {plan['reference']} queries")
    reference = plan["reference"]
    with Phase("recall", records) as rec:
        exact_d, per_query = exact_distances(searcher, queries[:reference])
        rec.update(recall=recall_of(exact_d, hits[:reference]))
    rec.update(exact_ms_per_query=per_query * 1e3, queries=reference)
    # the margin the tuned nprobe leaves: the same queries with twice as many lists visited
    # (a knob of the FAISS index, set here only: the product uses the tuned value)
    index = searcher._index
    index.nprobe *= 2
    report(progress, "archive", 6, 7, f"the queries again with nprobe {index.nprobe}")
    with Phase(f"query, nprobe {index.nprobe}", records) as rec:
        times, hits = search_latencies(searcher, queries)
    rec.update(p50_ms=float(np.percentile(times, 50)), p95_ms=float(np.percentile(times, 95)),
               queries=len(queries), recall=recall_of(exact_d, hits[:reference]))
    report(progress, "archive", 7, 7)
    return records


def make_section(records: list[dict], n_tiles: int, plan: dict) -> Section:
    by_phase = {r["phase"]: r for r in records}
    rows = [[r["phase"], f"{r['seconds']:.1f}", f"{r['peak_rss_gib']:.2f}",
             f"{r['rss_gib']:.2f}", _result(r)] for r in records]
    notes = [
        f"{n_tiles:,} tiles of {BITS} bits in sources of {TILES_PER_SOURCE:,} tiles; codes: "
        + ("the real codes of the 8,963 shared IDC + Kather tiles (dch-64) as centres"
           if plan["real"] else "300 random centres (quick mode)")
        + ", every bit flipped with probability 0.05; queries from the same generator.",
        "Peak RSS: the process's VmHWM, reset before each phase (the process holds torch and "
        "the bench besides the library).",
        "Recall: tie-aware recall@10 of the searcher's hits against an exact scan of every code "
        "(faiss.knn_hamming, 2 threads).",
    ]
    if "build" in by_phase and "index_seconds" in by_phase["build"]:
        build = by_phase["build"]
        notes.append(f"Build: {build['index_seconds']:.1f} s for the index itself (k-means, "
                     f"adding the codes, nprobe tuning), the rest is writing the sidecar.")
    return Section(name="archive", title="Archive scale: 10^8 tiles", columns=COLUMNS,
                   rows=rows, notes=notes,
                   data={"tiles": n_tiles, "bits": BITS, "records": records, "k": K})


def _result(r: dict) -> str:
    if r["phase"] == "write":
        return (f"{r['file_bytes'] / 2 ** 30:.2f} GiB file, {r['bytes_per_tile']:.1f} bytes per "
                "tile")
    if r["phase"] in ("open", "reopen"):
        return f"searching with {r['index']}"
    if r["phase"] == "build":
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k != "kind")
        return (f"{params}; tuning recall@10 {r['tuning_recall']:.3f}; sidecar "
                f"{r['sidecar_bytes'] / 2 ** 30:.2f} GiB")
    if r["phase"].startswith("query"):
        recall = f"; recall@10 {r['recall']:.3f}" if "recall" in r else ""
        return (f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms ({r['queries']} "
                f"queries{recall})")
    return (f"recall@10 {r['recall']:.3f} ({r['queries']} queries; exact scan "
            f"{r['exact_ms_per_query']:.0f} ms per query)")
