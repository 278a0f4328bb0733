"""The whole-slide search benchmark: the ``cases`` bench section and benchmarks/case_search.py.

Structure and consistency only; timings are never asserted.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from hashview.bench import SECTIONS
from hashview.bench import cases as case_bench

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "case_search.py"


def _script():
    spec = importlib.util.spec_from_file_location("case_search_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mosaic_sizes_are_one_per_colour_cluster_and_the_rule_s():
    assert case_bench.mosaic_sizes(3000) == [9, 153]  # 9 clusters x 5 % of ~333 tiles
    assert case_bench.mosaic_sizes(10) == [9]


def test_the_synthetic_library_is_stored_source_by_source():
    library = case_bench.synthetic_library(7, 5)
    assert library.codes.shape == (35, 8) and library.codes.dtype == np.uint8
    assert library.tile_sources.dtype == np.int32
    assert list(library.tile_sources) == [s for s in range(7) for _ in range(5)]


def test_the_quick_section_measures_each_mosaic_and_estimates_the_larger_library(tmp_path):
    assert SECTIONS["cases"] == "cases"
    section = case_bench.run("quick", tmp_path)
    plan = case_bench.PLANS["quick"]
    sizes = case_bench.mosaic_sizes(plan["tiles"])
    assert section.name == "cases" and section.columns == case_bench.COLUMNS
    assert all(len(row) == len(section.columns) for row in section.rows)
    results = section.data["results"]
    assert [r["mosaic"] for r in results] == sizes
    for r in results:
        assert len(r["seconds"]) == plan["queries"] and r["slides"] == plan["slides"]
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and math.isfinite(r["median_s"])
    measured = [row for row in section.rows if row[-1].startswith("measured")]
    estimated = [row for row in section.rows if row[-1].startswith("estimate")]
    assert len(measured) == len(estimated) == len(sizes)
    factor = plan["estimate_slides"] / plan["slides"]
    for r in results:
        assert section.data["estimates"][r["mosaic"]] == r["median_s"] * factor
    assert all(row[0] == f"{plan['estimate_slides']:,}" for row in estimated)
    assert any("not a measurement" in note for note in section.notes)


def test_the_script_s_speed_mode_runs_the_section_s_timing(capsys):
    assert _script().main(["--speed", "--slides", "30", "--tiles", "20", "--mosaic", "4",
                           "--queries", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "30 slides x 20 tiles" in lines[0]
    assert "4-code mosaic" in lines[0] and "over 2 queries" in lines[0]
