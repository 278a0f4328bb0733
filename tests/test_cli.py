"""The hashview command: real runs in a subprocess-free way (main() with argv)."""

from __future__ import annotations

import json
import shutil

import pytest

from _mounts import small_disk  # noqa: F401  (a fixture)
from conftest import KATHER, SLIDE
from hashview import index_store
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


@pytest.mark.parametrize("query_kind", ["slide region", "patch"])
def test_exclude_source_leaves_out_a_copied_query_slide(slide_library, tmp_path, capsys,
                                                        query_kind):
    """The query's own slide is recognised by content, not by path: a copy under another name
    (or the same file moved) gets none of its stored twin's tiles."""
    path, _ = slide_library
    original = (SLIDE if query_kind == "slide region"
                else sorted((KATHER / "04_LYMPHO").iterdir())[0])
    copy = tmp_path / f"renamed copy{original.suffix}"
    shutil.copy(original, copy)
    with Library.open(path) as lib:
        stored = lib.find_source(path=str(original.resolve())).path
    argv = ["search", path, copy, "--json", "-k", "5"]
    argv += ["--region", "1000,1000,224,224"] if query_kind == "slide region" else []
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert json.loads(out)["hits"][0]["source_path"] == stored  # its twin is the nearest
    code, out, err = run(capsys, *argv, "--exclude-source")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert len(hits) == 5 and all(h["source_path"] != stored for h in hits)


def test_search_on_read_only_storage_is_exact_and_says_why(slide_library, small_disk, capsys,
                                                           monkeypatch):
    library = small_disk.path / "library.h5"
    shutil.copy(slide_library[0], library)
    small_disk.read_only()
    query = sorted((KATHER / "04_LYMPHO").iterdir())[0]
    code, out, err = run(capsys, "search", library, query, "--index", "flat", "--json", "-k", "5")
    assert code == 0, err
    exact = json.loads(out)["hits"]
    warning = (f"hashview: {index_store.sidecar_path(library)}: not saved (read-only file "
               "system); searching exactly\n")
    # asked for an IVF index, or a library large enough to want one
    monkeypatch.setattr(index_store, "EXACT_LIMIT_BITS", 1)
    for argv in (["--index", "ivf"], ["--index", "auto", "--exclude-source"]):
        code, out, err = run(capsys, "search", library, query, "--json", "-k", "5", *argv)
        assert code == 0 and err == warning
        answer = json.loads(out)
        assert answer["index"]["exact"] and answer["index"]["notes"] == [warning[10:-1]]
        want = exact if "--exclude-source" not in argv else [
            h for h in exact if h["source_path"] != str(query.resolve())]
        assert [h["tile_index"] for h in answer["hits"]][:len(want)] == \
            [h["tile_index"] for h in want]
    code, out, err = run(capsys, "search", library, query, "--index", "ivf")  # the table
    assert code == 0 and err == warning and "rank" in out and "vote:" in out
    assert not index_store.sidecar_path(library).exists()


def test_search_on_a_full_disk_uses_the_index_it_could_not_save(slide_library, small_disk,
                                                                 capsys):
    library = small_disk.path / "library.h5"
    shutil.copy(slide_library[0], library)
    small_disk.fill()
    query = sorted((KATHER / "04_LYMPHO").iterdir())[0]
    code, out, err = run(capsys, "search", library, query, "--index", "ivf", "--json", "-k", "5")
    assert code == 0, err
    side = index_store.sidecar_path(library)
    assert err.splitlines()[1:] == [f"hashview: {side}: not saved (no space left on device); "
                                    "the index is kept in memory only (built again next time)"]
    answer = json.loads(out)
    assert answer["index"]["kind"] == "ivf" and len(answer["hits"]) == 5
    assert answer["hits"][0]["distance"] == 0
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler", "library.h5"]


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
