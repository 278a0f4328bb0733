"""The hashview command: real runs in a subprocess-free way (main() with argv)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import KATHER, SLIDE
from hashview.cli import main
from hashview.library import Library


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_by_patch_returns_hits_with_slide_coordinates(slide_library, capsys):
    path, _ = slide_library
    query = sorted((KATHER / "04_LYMPHO").iterdir())[0]
    code, out, err = run(capsys, "search", path, query, "--json", "--top-k", "5")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["hits"]) == 5
    top = result["hits"][0]
    assert top["distance"] == 0 and top["source_path"] == str(query.resolve())
    for hit in result["hits"]:
        assert {"x", "y", "size", "distance", "label", "source_path"} <= set(hit)
    distances = [h["distance"] for h in result["hits"]]
    assert distances == sorted(distances)


def test_search_by_slide_region_and_exclude_source(slide_library, capsys):
    path, _ = slide_library
    code, out, err = run(capsys, "search", path, SLIDE, "--region", "1000,1000,224,224",
                         "--json", "--exclude-source", "-k", "3")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits and all(h["source_name"] != SLIDE.name for h in hits)

    # a region two library tiles wide and high is searched as 4 tiles
    with Library.open(path) as lib:
        slide_id = lib.find_source(path=str(SLIDE.resolve())).id
        table = lib.tile_table()
    side = int(table["size"][table["source_id"] == slide_id][0])
    code, out, err = run(capsys, "search", path, SLIDE, "--region",
                         f"1000,1000,{2 * side},{2 * side}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["query_tiles"] == 4 and len(result["hits"]) == 10


def test_info_and_models(slide_library, capsys):
    path, _ = slide_library
    code, out, _ = run(capsys, "info", path, "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["bits"] == 64 and stats["n_tiles"] > 20
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert "hatdh-64" in names


@pytest.mark.parametrize("argv, fragment", [
    (["search", "{missing}", "{query}"], "missing.h5"),
    (["search", "{textfile}", "{query}"], "notes.h5"),
    (["info", "{textfile}"], "notes.h5"),
    (["index", "{missing_slide}", "--library", "{out}"], "nothing.svs"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys, argv, fragment):
    textfile = tmp_path / "notes.h5"
    textfile.write_text("hello")
    names = {"missing": tmp_path / "missing.h5", "textfile": textfile,
             "query": sorted((KATHER / "01_TUMOR").iterdir())[0],
             "missing_slide": tmp_path / "nothing.svs", "out": tmp_path / "out.h5"}
    code, out, err = run(capsys, *[a.format(**names) for a in argv])
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err


def test_bad_region_is_a_usage_error(slide_library, capsys):
    path, _ = slide_library
    code, _, err = run(capsys, "search", path, SLIDE, "--region", "1,2,3")
    assert code == 2 and "x,y,w,h" in err


def test_no_arguments_prints_help(capsys, monkeypatch):
    import hashview.cli as cli

    monkeypatch.setattr(cli, "_open_app", lambda paths: None)
    code, out, _ = run(capsys)
    assert code == 0 and "index" in out and "search" in out


def test_demo_builds_its_library_and_finds_tumour_tiles(capsys, tmp_path, monkeypatch):
    from hashview.demo import default_demo_library

    monkeypatch.setenv("HASHVIEW_HOME", str(tmp_path))
    # a stale demo library left by another model is rebuilt, not refused
    default_demo_library().write_bytes(b"not a library")
    code, out, err = run(capsys, "demo", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["index"]["failed"] == [] and len(result["index"]["added"]) == 33
    assert result["vote"]["label"] == "01_TUMOR"


def _hostile_models(tmp_path):
    """--model values that must each be refused in one line: name -> (path, expected words)."""
    import shutil

    from hashview.models.store import bundled_models_dirs

    weights = bundled_models_dirs()[0] / "dch-16.safetensors"
    made = {}

    def model(name, card_bytes=None):
        shutil.copy(weights, tmp_path / f"{name}.safetensors")
        if card_bytes is not None:
            (tmp_path / f"{name}.json").write_bytes(card_bytes)
        return tmp_path / f"{name}.json"

    (tmp_path / "folder").mkdir()
    made["folder"] = (tmp_path / "folder", "not a model file")
    model("dir")
    (tmp_path / "dir.json").mkdir()
    made["card is a folder"] = (tmp_path / "dir.json", "directory")
    model("fifo")
    os.mkfifo(tmp_path / "fifo.json")
    made["card is a FIFO"] = (tmp_path / "fifo.json", "FIFO")
    made["missing"] = (tmp_path / "missing.safetensors", "not found")
    made["not an object"] = (model("array", b"[1, 2]"), "not a JSON object")
    made["not UTF-8"] = (model("latin", b'{"name": "\xe9t\xe9"}'), "not valid JSON")
    made["nested too deeply"] = (model("deep", b"[" * 100_000 + b"]" * 100_000), "nested")
    card = json.loads((weights.with_suffix(".json")).read_text())
    card["training"] = json.loads('{"a": ' * 200 + "1" + "}" * 200)
    made["deep inside"] = (model("inside", json.dumps(card).encode()), "nested")
    return made


def test_hostile_model_paths_are_refused_in_one_line(tmp_path, capsys):
    query = sorted((KATHER / "01_TUMOR").iterdir())[0]
    for what, (path, words) in _hostile_models(tmp_path).items():
        for argv in (["index", query, "--library", tmp_path / "lib.h5", "--model", path],
                     ["explain", query, query, "--out", tmp_path / "o.png", "--model", path]):
            code, out, err = run(capsys, *argv)
            lines = err.strip().splitlines()
            assert code == 1 and len(lines) == 1, (what, err)
            assert lines[0].startswith("hashview: ") and path.stem in lines[0], (what, err)
            assert words in lines[0], (what, err)
    assert not (tmp_path / "lib.h5").exists() and not (tmp_path / "o.png").exists()


def test_listing_models_skips_a_fifo_card_instead_of_hanging(tmp_path):
    """A FIFO named like a card in the user's models folder would block a plain read forever."""
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    os.mkfifo(home / "models" / "stuck.json")
    (home / "models" / "stuck.safetensors").write_bytes(b"\0" * 16)
    out = subprocess.run([sys.executable, "-m", "hashview", "models", "--json"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HASHVIEW_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert "stuck" not in {m["name"] for m in json.loads(out.stdout)}
