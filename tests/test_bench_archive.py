"""The archive-scale benchmark section: opt-in, its quick mode, and the chunked atomic write the
sidecar uses for large indexes. Timings are reported, never asserted.
"""

from __future__ import annotations

import math

import numpy as np

from hashview.bench import archive
from hashview.bench.runner import resolve_names
from hashview.fileio import atomic_write_bytes
from hashview.library import Library
from hashview.search import sidecar


def test_archive_runs_only_when_named():
    assert "archive" not in resolve_names(None)
    assert resolve_names(["archive"]) == ["archive"]


def test_quick_section_measures_every_phase_and_cleans_up(tmp_path):
    section = archive.run("quick", tmp_path)
    records = {r["phase"]: r for r in section.data["records"]}
    assert list(records)[:6] == ["write", "open", "build", "reopen", "query", "recall"]
    doubled = section.data["records"][-1]
    assert doubled["phase"].startswith("query, nprobe") and 0 <= doubled["recall"] <= 1
    assert all(len(row) == len(section.columns) for row in section.rows)
    for r in records.values():
        assert r["seconds"] >= 0 and r["peak_rss_gib"] > 0 and math.isfinite(r["rss_gib"])
    assert records["write"]["bytes_per_tile"] > archive.BITS // 8
    assert records["open"]["index"] == "flat"  # until the approximate index is built
    assert records["reopen"]["index"] == "ivf" and records["reopen"]["notes"] == []
    assert records["build"]["sidecar_bytes"] > 16 * archive.PLANS["quick"]["tiles"]
    assert records["query"]["p95_ms"] >= records["query"]["p50_ms"] > 0
    assert 0.99 <= records["recall"]["recall"] <= 1.0
    assert list(tmp_path.glob("archive-*")) == []  # library and sidecar deleted


def test_written_library_has_whole_sources(tmp_path):
    path = tmp_path / "lib.h5"
    archive.write_library(path, archive.random_centres(64), archive.TILES_PER_SOURCE * 2 + 5)
    with Library.open(path) as lib:
        assert lib.n_tiles == archive.TILES_PER_SOURCE * 2 + 5 and lib.n_sources == 3
        assert [s.tile_count for s in lib.sources()] == [archive.TILES_PER_SOURCE] * 2 + [5]


def test_recall_counts_ties_and_missing_hits(tmp_path):
    path = tmp_path / "lib.h5"
    archive.write_library(path, archive.random_centres(64), 2_000)
    searcher = archive.open_searcher(path, "flat")
    queries = searcher.codes[:5].copy()
    _, hits = archive.search_latencies(searcher, queries)
    exact_d, _ = archive.exact_distances(searcher, queries)
    assert archive.recall_of(exact_d, hits) == 1.0
    halved = [found[:archive.K // 2] for found in hits]
    assert archive.recall_of(exact_d, halved) == 0.5


def test_atomic_write_takes_buffers_in_pieces(tmp_path):
    target = tmp_path / "out.bin"
    payload = np.arange(1000, dtype=np.uint16).view(np.uint8)
    atomic_write_bytes(target, [b"head", payload, bytearray(b"tail")])
    assert target.read_bytes() == b"head" + payload.tobytes() + b"tail"
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"


def test_sidecar_of_a_large_payload_round_trips(tmp_path):
    codes = archive.synthetic_codes(archive.random_centres(64), 20_000, seed=3)
    built = sidecar.build_binary_index(codes, 64, "ivf")
    identity = sidecar.Identity.of("m" * 64, 64, codes)
    path = tmp_path / "lib.h5.hvindex"
    sidecar.save_sidecar(path, built, identity)
    loaded = sidecar.load_sidecar(path, identity)
    assert loaded is not None and loaded.index.ntotal == len(codes)
    assert loaded.params == built.params
