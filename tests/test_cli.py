"""The hashview command: real runs in a subprocess-free way (main() with argv)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from _mounts import small_disk  # noqa: F401  (a fixture)
from conftest import KATHER, SLIDE
from hashview.search import sidecar
from hashview.cli import main
from hashview.library import Library

ROOT = KATHER.parents[2]  # this checkout, so subprocesses import its hashview whatever the cwd


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


def _library_and_query_on(small_disk, slide_library):
    """The test library copied onto the small disk, and a Kather patch to query it with."""
    library = small_disk.path / "library.h5"
    shutil.copy(slide_library[0], library)
    return library, sorted((KATHER / "04_LYMPHO").iterdir())[0]


def test_search_on_read_only_storage_is_exact_and_says_why(slide_library, small_disk, capsys,
                                                           monkeypatch):
    library, query = _library_and_query_on(small_disk, slide_library)
    small_disk.read_only()
    code, out, err = run(capsys, "search", library, query, "--index", "flat", "--json", "-k", "5")
    assert code == 0, err
    exact = json.loads(out)["hits"]
    warning = (f"hashview: {sidecar.sidecar_path(library)}: not saved (read-only file "
               "system); searching exactly\n")
    # asked for an IVF index, or a library large enough to want one
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1)
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
    assert not sidecar.sidecar_path(library).exists()


def test_search_on_a_full_disk_uses_the_index_it_could_not_save(slide_library, small_disk,
                                                                 capsys):
    library, query = _library_and_query_on(small_disk, slide_library)
    small_disk.fill()
    code, out, err = run(capsys, "search", library, query, "--index", "ivf", "--json", "-k", "5")
    assert code == 0, err
    side = sidecar.sidecar_path(library)
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
    code, out, _ = run(capsys, "models")
    default = next(line for line in out.splitlines() if line.startswith("*"))
    # the default is chosen on generalisation: its line shows in-set and cross-stain numbers
    assert "mAP" in default and "other stains vote@10 0." in default


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


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as done:
        run(capsys, "--help")
    out = capsys.readouterr().out
    assert done.value.code == 0 and "index" in out and "search" in out


def test_without_qt_the_app_says_how_to_install_it_in_one_line(capsys, monkeypatch):
    """An install without the "app" extra: the commands work; the window explains itself."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PySide6"
                        else real_find_spec(name, *a))
    for argv in ((), (str(SLIDE),)):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and "pip install 'hashview[app]'" in err, err


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
    made["folder"] = (tmp_path / "folder", "no model in this folder")
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


@pytest.mark.slow
def test_listing_models_skips_a_fifo_card_instead_of_hanging(tmp_path):
    """A FIFO named like a card in the user's models folder would block a plain read forever."""
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    os.mkfifo(home / "models" / "stuck.json")
    (home / "models" / "stuck.safetensors").write_bytes(b"\0" * 16)
    out = subprocess.run([sys.executable, "-m", "hashview", "models", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "HASHVIEW_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert "stuck" not in {m["name"] for m in json.loads(out.stdout)}


def test_names_with_escape_sequences_and_newlines_are_printed_escaped(tmp_path, capsys):
    """File names and labels come from anyone's disk: printed raw, an escape sequence would
    recolour or clear the terminal and a newline would fake a line of output."""
    import shutil

    label = "tum\x1b[31mour"
    folder = tmp_path / "patches" / label
    folder.mkdir(parents=True)
    good = folder / "evil\x1b[31m\nname.tif"
    shutil.copy(sorted((KATHER / "01_TUMOR").iterdir())[0], good)
    (folder / "broken\x1b[2J\n.png").write_bytes(b"not an image")
    library = tmp_path / "lib.h5"
    outputs = [run(capsys, "index", tmp_path / "patches", "--library", library),
               run(capsys, "search", library, good),
               run(capsys, "info", library)]
    assert [code for code, _, _ in outputs] == [3, 0, 0]  # one file failed, one indexed
    for _, out, err in outputs:
        assert "\x1b" not in out + err
        assert all(line.startswith(("hashview: ", "warning: ")) for line in err.splitlines())
    (_, _, index_err), (_, search_out, _), (_, info_out, _) = outputs
    assert "broken\\x1b[2J\\n.png: " in index_err and len(index_err.splitlines()) == 1
    assert "evil\\x1b[31m\\nname.tif" in search_out and "tum\\x1b[31mour" in search_out
    assert len(search_out.splitlines()) == 3  # header, the one hit, the vote
    assert "tum\\x1b[31mour" in info_out


def test_printable_makes_every_invisible_character_visible():
    from hashview.errors import SourceError, printable

    assert printable("plain name é 名.png") == "plain name é 名.png"
    assert printable("a\x1b[31mb\nc\td\x7f") == "a\\x1b[31mb\\nc\\td\\x7f"
    assert printable("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # right-to-left override
    assert printable(os.fsdecode(b"latin1-\xe9.png")) == "latin1-\\xe9.png"
    assert str(SourceError("two\nlines.png", "bad")) == "two\\nlines.png: bad"


@pytest.mark.slow
def test_output_into_a_reader_that_leaves_ends_quietly(tmp_path):
    """``hashview models --json | head -1``: the JSON is far larger than a pipe's buffer, so the
    command is still writing when head exits; it must stop without a traceback."""
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-m", "hashview", "models", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    head = subprocess.run(["head", "-1"], stdin=writer.stdout, capture_output=True, timeout=120)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=120) == 141, err
    assert head.stdout.decode().strip() == "[" and err == ""


_Q = sorted((KATHER / "01_TUMOR").iterdir())[0]
_INDEX = ["index", _Q, "--library", "{lib}"]
_SEARCH = ["search", "{lib}", _Q]
_TRAIN = ["train", KATHER, "--arch", "mth", "--bits", "16", "--out", "{out}"]


@pytest.mark.parametrize("argv, option", [
    (_SEARCH + ["-k", "0"], "--top-k"), (_SEARCH + ["-k", "-1"], "--top-k"),
    (_SEARCH + ["-k", "ten"], "--top-k"), (_SEARCH + ["--source", "-1"], "--source"),
    (_INDEX + ["--mpp", "-1"], "--mpp"), (_INDEX + ["--mpp", "0"], "--mpp"),
    (_INDEX + ["--mpp", "nan"], "--mpp"), (_INDEX + ["--tile-size", "0"], "--tile-size"),
    (_INDEX + ["--tile-size", "1"], "--tile-size"), (_INDEX + ["--stride", "0"], "--stride"),
    (_INDEX + ["--stride", "1"], "--stride"), (_INDEX + ["--max-tiles", "-5"], "--max-tiles"),
    (_INDEX + ["--max-tiles", "0"], "--max-tiles"),
    (_INDEX + ["--min-tissue", "2"], "--min-tissue"),
    (_INDEX + ["--min-tissue", "-0.5"], "--min-tissue"), (_INDEX + ["--seed", "-1"], "--seed"),
    (_INDEX + ["--batch-size", "0"], "--batch-size"),
    (_INDEX + ["--batch-size", "10000000"], "--batch-size"),
    (_TRAIN + ["--epochs", "0"], "--epochs"), (_TRAIN + ["--batch-size", "1"], "--batch-size"),
    (_TRAIN + ["--lr", "-1"], "--lr"), (_TRAIN + ["--lr", "inf"], "--lr"),
    (_TRAIN + ["--seed", "-3"], "--seed"), (_TRAIN + ["--input-size", "0"], "--input-size"),
    (_TRAIN + ["--input-size", "100000"], "--input-size"),
    (_TRAIN[:5] + ["12"] + _TRAIN[6:], "--bits"),
    (_TRAIN[:5] + [str(2**30)] + _TRAIN[6:], "--bits"),
    (["eval", KATHER, "--seeds", "a,b"], "--seeds"), (["eval", KATHER, "--seeds", ","], "--seeds"),
    (["eval", KATHER, "--baseline", "lsh-pixels", "--bits", "0"], "--bits"),
    (["explain", _Q, _Q, "--opacity", "2"], "--opacity"),
    (_TRAIN + ["--option", "epochs=abc"], "--option"), (_TRAIN + ["--option", "bits"], "--option"),
])
def test_bad_numbers_are_usage_errors_not_tracebacks(tmp_path, capsys, argv, option):
    names = {"lib": tmp_path / "lib.h5", "out": tmp_path / "out"}
    argv = [str(a).format(**names) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and option.lstrip("-").split("-")[0] in err
    assert err.strip().splitlines()[-1].startswith(("hashview", "usage"))
    assert not (tmp_path / "lib.h5").exists() and not (tmp_path / "out").exists()
