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


def test_class_layout_gives_each_class_its_share_of_the_regions():
    from hashview.bench.synthetic import CELL, class_layout

    layout = class_layout(12 * CELL, [0.55, 0.30, 0.15], seed=3)  # 6 x 6 regions of 2 x 2 cells
    assert layout.shape == (12, 12)
    regions = layout[::2, ::2]
    assert (np.repeat(np.repeat(regions, 2, 0), 2, 1) == layout).all()
    assert np.bincount(regions.ravel(), minlength=3).tolist() == [20, 11, 5]  # 19.8, 10.8, 5.4
    rest = 0.2 / 6  # 1.2 regions each, rounded down: the region left over is the dominant's
    mostly = class_layout(12 * CELL, [rest, rest, 0.8, rest, rest, rest, rest], seed=3)
    assert np.bincount(mostly[::2, ::2].ravel()).tolist() == [1, 1, 30, 1, 1, 1, 1]


def test_a_synthetic_slide_puts_the_chosen_tile_in_each_tissue_cell(tmp_path):
    from hashview.bench.synthetic import CELL, make_synthetic_slide, tissue_cells
    from hashview.slides import open_source

    colours = [np.full((CELL, CELL, 3), value, np.uint8) for value in ((200, 40, 40),
                                                                        (40, 40, 200))]
    cell_tiles = np.indices((4, 4)).sum(axis=0) % 2  # a chessboard of the two colours
    path = make_synthetic_slide(tmp_path / "board.tiff", None, 4 * CELL, tiles=colours,
                                cell_tiles=cell_tiles)
    tissue = tissue_cells(4 * CELL, 4 * CELL)
    with open_source(path) as slide:
        for r, c in zip(*np.nonzero(tissue)):
            inner = slide.read_region((c * CELL + 20, r * CELL + 20), 0, (CELL - 40, CELL - 40))
            mean = np.asarray(inner)[..., :3].reshape(-1, 3).mean(axis=0)
            assert np.abs(mean - colours[cell_tiles[r, c]][0, 0]).max() < 12, (r, c)


def test_query_and_library_slides_never_share_a_tile(tmp_path, monkeypatch):
    from hashview.bench.synthetic import CELL

    script = _script()
    kather = Path(__file__).resolve().parent / "data" / "kather"
    monkeypatch.setattr(script, "KATHER", kather)
    monkeypatch.setattr(script, "SLIDE_SIDE", 4 * CELL)
    files = sorted(str(p.relative_to(kather)) for p in kather.glob("*/*.tif"))
    classes = sorted({f.split("/")[0] for f in files})
    test = {next(f for f in files if f.startswith(c)) for c in classes}  # one tile per class
    split = {"train": sorted(set(files) - test), "test": sorted(test)}
    slides = script.synthetic_slides(split, tmp_path)
    queries = [s for s in slides if s["role"] == "query"]
    library = [s for s in slides if s["role"] == "library"]
    assert len(queries) == len(classes) * script.QUERIES_PER_CLASS
    assert len(library) == len(classes) * script.LIBRARY_PER_CLASS
    assert all(s["path"].is_file() for s in slides)
    assert {t for s in queries for t in s["tiles"]} <= test
    assert {t for s in library for t in s["tiles"]} <= set(split["train"])
    for s in slides:
        if s["second"] is None:  # one class holds 80 % of the regions: it is the label
            assert s["label"] == s["dominant"]
    assert any(s["second"] is not None for s in slides)


def test_class_shares_sum_to_one_around_one_or_two_dominant_classes():
    script = _script()
    one = script.class_shares(2, None, 7)
    two = script.class_shares(0, 5, 7)
    assert np.isclose([sum(one), sum(two)], 1).all()
    assert one[2] == 0.8 and max(s for i, s in enumerate(one) if i != 2) < 0.1
    assert two[0] == 0.55 and two[5] == 0.30 and np.isclose(two[1], 0.15 / 5)
