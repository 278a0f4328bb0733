"""``hashview bench``: the runner and the quick mode of every section that exists.

Structure and sanity only (tables well formed, counts consistent, numbers finite and positive);
timings are never asserted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from hashview.bench import SECTIONS, Section
from hashview.bench.runner import (machine_info, marker, render_markdown, resolve_names,
                                   run_cli, update_docs)
from hashview.cli import main


def _section(name="demo"):
    return Section(name=name, title="Demo table", columns=["a", "b"], rows=[["x", 1.5]],
                   notes=["a note"], data={"k": 1})


def _meta():
    meta = machine_info()
    meta.update(date="2026-01-01 00:00 UTC", mode="quick", seconds=1.0)
    return meta


def test_markdown_block_says_command_machine_and_load():
    text = render_markdown(_section(), _meta(), "hashview bench --quick")
    assert text.startswith("### Demo table")
    assert "`hashview bench --quick`" in text and "load average" in text
    assert "CPU cores" in text and "| a | b |" in text and "| x | 1.5 |" in text
    assert "- a note" in text


def test_update_docs_replaces_only_the_marked_block_and_appends_new_ones(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nkept\n\n{marker('demo')}\nold\n{marker('demo', True)}\n"
                   "after\n")
    update_docs(doc, {"demo": "new body", "other": "second"})
    text = doc.read_text()
    assert "old" not in text and "new body" in text and "kept" in text and "after" in text
    assert text.count(marker("other")) == 1 and text.index("after") < text.index("second")
    update_docs(doc, {"demo": "newer"})  # idempotent structure: one pair per section
    assert doc.read_text().count(marker("demo")) == 1 and "newer" in doc.read_text()


def test_unknown_section_is_refused():
    with pytest.raises(ValueError, match="nope"):
        resolve_names(["nope"])
    assert main(["bench", "--quick", "--only", "nope"]) == 2
    assert main(["bench", "--quick", "--update-docs"]) == 2  # docs get full numbers only


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Every available section in quick mode, once, through the CLI's own entry point.

    The slowest fixture of the file (several seconds per section: each loads the model and
    indexes a few tiles); shared by the tests below so it runs once.
    """
    root = tmp_path_factory.mktemp("bench")
    out = root / "bench.json"
    markdown = run_cli("quick", None, root / "work", out, root / "bench.md", None,
                       command="hashview bench --quick", log=lambda _: None)
    return json.loads(out.read_text()), markdown


def _finite_numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _finite_numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _finite_numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_every_available_section_runs_in_quick_mode(quick_run):
    payload, markdown = quick_run
    names = [s["name"] for s in payload["sections"]]
    assert names == [n for n in SECTIONS if n in names]  # run in the documented order
    assert {"throughput", "baseline", "region"} <= set(names)
    for section in payload["sections"]:
        assert set(section) >= {"name", "title", "columns", "rows", "notes", "data", "meta"}
        assert section["name"] in SECTIONS and section["rows"]
        assert all(len(row) == len(section["columns"]) for row in section["rows"])
        assert all(math.isfinite(x) for x in _finite_numbers(section["data"]))
        assert f"### {section['title']}" in markdown
        assert section["meta"]["mode"] == "quick" and len(section["meta"]["loadavg"]) == 3


def _by_name(payload, name):
    return next(s for s in payload["sections"] if s["name"] == name)


@pytest.mark.slow
def test_throughput_counts_every_stage_of_every_tile(quick_run):
    section = _by_name(quick_run[0], "throughput")
    for slide in section["data"]["slides"]:
        n = slide["tiles"]
        assert n > 0 and slide["end_to_end_tiles_per_s"] > 0
        assert slide["encoder_alone_tiles_per_s"] > 0 and slide["ratio"] > 0
        stages = slide["stages"]
        for stage in ("read", "resize", "forward", "pack", "write"):
            assert stages[stage]["items"] == n, stage
        assert stages["tissue mask"]["items"] == 1
    assert any(s["slide"].startswith("synthetic") for s in section["data"]["slides"])
    if not torch.cuda.is_available():
        assert any("CUDA: unmeasured" in note for note in section["notes"])


@pytest.mark.slow
def test_baseline_compares_equal_tile_counts(quick_run):
    section = _by_name(quick_run[0], "baseline")
    for slide in section["data"]["slides"]:
        assert slide["tiles"] > 0
        assert slide["baseline_bytes_per_tile"] >= 2048 * 4  # a 2048-d float32 vector each
        assert slide["ours_query_ms"] > 0 and slide["baseline_query_ms"] > 0
    large = section["data"]["query"][0]
    assert large["n"] > 0 and 0 < large["ours_bytes_per_tile"] < large["baseline_bytes_per_tile"]


@pytest.mark.slow
def test_region_queries_load_every_hit_thumbnail(quick_run):
    section = _by_name(quick_run[0], "region")
    data = section["data"]
    assert data["n_tiles"] > 0 and data["k"] > 0
    parts = ("read region", "encode", "search", "thumbnails")
    for ms in data["ms"].values():  # one entry per thread setting
        assert all(len(v) == data["queries"] for v in ms.values())
        for q in range(data["queries"]):
            assert sum(ms[p][q] for p in parts) == pytest.approx(ms["total"][q], abs=0.1)
