"""The query benchmark section in quick mode: structure, recall and the code generator.

Timings are reported, never asserted.
"""

from __future__ import annotations

import math

import numpy as np

from hashview.bench import query


def test_quick_section_covers_every_size_and_index(tmp_path):
    section = query.run("quick", tmp_path)
    plan = query.PLANS["quick"]
    assert section.name == "query" and section.columns == query.COLUMNS
    assert all(len(row) == len(section.columns) for row in section.rows)
    results = section.data["results"]
    binary = [r for r in results if r["kind"] != "float-l2"]
    assert {(r["tiles"], r["kind"]) for r in binary} == {
        (n, kind) for n in plan["sizes"] for kind in ("flat", "ivf", "multihash")}
    assert len(results) == len(binary) + len(plan["float_sizes"])
    for r in results:
        assert r["p95_ms"] >= r["p50_ms"] > 0 and math.isfinite(r["build_s"])
    assert all(r["recall"] == 1.0 for r in results if r["kind"] in ("flat", "float-l2"))
    assert all(r["recall"] >= 0.99 for r in binary if r["kind"] == "ivf")
    startup = section.data["startup"]
    assert startup["tiles"] == plan["startup_tiles"] and startup["exact_s"] > 0
    assert any("Start-up" in note for note in section.notes)


def test_generator_keeps_codes_clustered_around_their_centres():
    centres = query.random_centres(64, n=50, seed=1)
    codes = query.synthetic_codes(centres, 5000, seed=2)
    assert codes.shape == (5000, 8) and codes.dtype == np.uint8
    # every code is within a few bits of some centre: mean nearest-centre distance ~ 64 * FLIP
    distances = np.unpackbits(codes[:, None, :] ^ centres[None], axis=2).sum(axis=2).min(axis=1)
    assert abs(distances.mean() - 64 * query.FLIP) < 1.0
    assert np.array_equal(codes, query.synthetic_codes(centres, 5000, seed=2))  # seeded
