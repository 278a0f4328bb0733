"""The bad-input corpus (tests/data/bad) through the command line.

Every bad file is indexed from a folder that also holds a good patch, into a copy of an existing
library: a refused file gives exactly one ``hashview: <file>: <reason>`` line, the good patch is
added, and every source stored before is unchanged. Libraries and model files from the corpus go
through ``index --library/--model``, ``search`` and ``info``: one line, exit 1, nothing changed,
and the pickle payload never runs. The app's side is tests/gui/test_bad_inputs_gui.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, KATHER
from hashview.cli import main as cli_main
from hashview.library import Library

BAD = DATA / "bad"
sys.path.insert(0, str(BAD))
from make_bad_inputs import (MANIFEST, PICKLE_MARKER_ENV, make_runtime_inputs,  # noqa: E402
                             write_corpus)

CORPUS_LIMIT_BYTES = 300_000
MODEL_FILES = ("pickle-payload.pt", "pickle-payload.safetensors")
LIBRARY_FILES = ("foreign.h5", "future-schema.h5")
IMAGE_INPUTS = {name: outcome for name, (_, outcome) in MANIFEST.items()
                if not name.endswith((".h5",) + tuple(Path(m).suffix for m in MODEL_FILES))}
REFUSED = {name: outcome.removeprefix("refused: ") for name, outcome in IMAGE_INPUTS.items()
           if outcome.startswith("refused: ")}
INDEXED = sorted(name for name, outcome in IMAGE_INPUTS.items() if outcome == "indexed")
PATCHES = sorted(p for folder in sorted(KATHER.iterdir()) for p in sorted(folder.iterdir()))
BASE_PATCHES, GOOD_PATCH = PATCHES[:3], PATCHES[3]


# ---------------------------------------------------------------------------- helpers
def snapshot(path: Path) -> dict[str, tuple]:
    """fingerprint -> (path, label, positions, codes) of every stored source."""
    with Library.open(path, "r") as library:
        codes, table = library.codes(), library.tile_table()
        out = {}
        for source in library.sources():
            rows = slice(source.tile_start, source.tile_start + source.tile_count)
            out[source.fingerprint] = (
                source.path, source.label,
                np.stack([table["x"][rows], table["y"][rows], table["size"][rows]]).tobytes(),
                codes[rows].tobytes())
        assert len(out) == len(library.sources()), "a source is stored twice"
        assert library.n_tiles == len(codes)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    """(exit code, the ``hashview: <file>: <reason>`` lines on stderr)."""
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("hashview: ")]


@pytest.fixture(scope="module")
def base_library(tmp_path_factory):
    """A library holding three Kather patches: the "existing library" every test appends to."""
    folder = tmp_path_factory.mktemp("base")
    path = folder / "base.h5"
    assert cli_main(["index", *map(str, BASE_PATCHES), "--library", str(path)]) == 0
    return path


@pytest.fixture
def library(base_library, tmp_path):
    path = tmp_path / "library.h5"
    shutil.copy(base_library, path)
    return path


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """The file the pickle payload touches if it ever runs."""
    path = tmp_path / "pickle-payload-ran"
    monkeypatch.setenv(PICKLE_MARKER_ENV, str(path))
    return path


def assert_kept_and_added(library: Path, before: dict, added: list[Path]) -> None:
    after = snapshot(library)
    for fingerprint, stored in before.items():
        assert after.get(fingerprint) == stored, "a source stored before was changed or lost"
    new_paths = sorted(after[f][0] for f in set(after) - set(before))
    assert new_paths == sorted(str(p.resolve()) for p in added)


# ---------------------------------------------------------------------------- the corpus
def test_corpus_is_complete_small_and_what_the_script_writes(tmp_path):
    present = {p.name for p in BAD.iterdir()}
    assert set(MANIFEST) <= present
    assert sum(p.stat().st_size for p in BAD.iterdir() if p.is_file()) < CORPUS_LIMIT_BYTES
    write_corpus(tmp_path, hdf5=False)  # the HDF5 files carry creation times: not compared
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (BAD / path.name).read_bytes(), f"{path.name} is stale"


def test_pickle_payload_is_live(tmp_path):
    """Control: unpickling the payload really runs it, so the marker checks below mean it."""
    marker = tmp_path / "ran"
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], "
                    "'rb'))", str(BAD / "pickle-payload.pt")], check=True, timeout=60,
                   env={**os.environ, PICKLE_MARKER_ENV: str(marker)})
    assert marker.exists()


# ---------------------------------------------------------------------------- images, slides
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_index_refuses_bad_file_in_one_line_and_goes_on(capsys, tmp_path, library, name):
    folder = tmp_path / "inbox"
    folder.mkdir()
    bad, good = folder / name, folder / GOOD_PATCH.name
    shutil.copy(BAD / name, bad)
    shutil.copy(GOOD_PATCH, good)
    before = snapshot(library)

    code, messages = run_cli(capsys, "index", folder, "--library", library)

    assert code == 3  # some inputs failed, others were indexed
    assert len(messages) == 1 and messages[0].startswith(f"hashview: {bad}: "), messages
    assert REFUSED[name] in messages[0]
    assert_kept_and_added(library, before, [good])


@pytest.mark.parametrize("name", INDEXED)
def test_index_accepts_odd_but_valid_image(capsys, tmp_path, library, name):
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(BAD / name, folder / name)
    before = snapshot(library)
    code, messages = run_cli(capsys, "index", folder, "--library", library)
    assert (code, messages) == (0, [])
    assert_kept_and_added(library, before, [folder / name])


def test_search_with_bad_query_image_is_one_line(capsys, library):
    for name, reason in sorted(REFUSED.items()):
        code, messages = run_cli(capsys, "search", library, BAD / name)
        assert code == 1 and len(messages) == 1 and reason in messages[0], (name, messages)
        assert str(BAD / name) in messages[0]


def test_runtime_inputs_unreadable_loop_and_non_utf8_name(capsys, tmp_path, library,
                                                          monkeypatch):
    folder = tmp_path / "inbox"
    made = make_runtime_inputs(folder, GOOD_PATCH)
    good = folder / "good.tif"
    shutil.copy(PATCHES[4], good)
    unreadable = made["unreadable"]
    if os.geteuid() == 0:
        # root reads any file whatever its mode: make open() answer as it would for a user
        import builtins

        real_open = builtins.open

        def open_as_user(file, *args, **kwargs):
            if os.fspath(file) == str(unreadable):
                raise PermissionError(13, "Permission denied", str(unreadable))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_as_user)
    before = snapshot(library)

    code, messages = run_cli(capsys, "index", folder, "--library", library)

    assert code == 3
    by_file = {m.split(": ", 2)[1]: m.split(": ", 2)[2] for m in messages}
    printable_name = str(folder / "latin1-\\xe9chantillon.png")
    assert set(by_file) == {str(unreadable), printable_name} and len(messages) == 2, messages
    assert by_file[printable_name] == "file name is not valid UTF-8; rename the file to index it"
    assert by_file[str(unreadable)] == "cannot read (Permission denied)"
    # the loop is walked once and the self-referencing link is skipped, without a message
    assert_kept_and_added(library, before, [good])


@pytest.mark.slow
def test_whole_corpus_in_one_real_index_process(tmp_path, library):
    """`python -m hashview index` on the corpus mixed with good patches, as a user runs it."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in IMAGE_INPUTS:
        shutil.copy(BAD / name, folder / name)
    make_runtime_inputs(folder / "odd", PATCHES[5])  # content unlike the good patch's
    good = folder / GOOD_PATCH.name
    shutil.copy(GOOD_PATCH, good)
    before = snapshot(library)

    run = subprocess.run([sys.executable, "-m", "hashview", "index", str(folder), "--library",
                          str(library), "--device", "cpu"], capture_output=True, text=True,
                         errors="replace", timeout=300)

    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr
    failed = [line for line in run.stderr.splitlines() if line.startswith("hashview: ")]
    named = {line.split(": ", 2)[1] for line in failed}
    expected = {str(folder / n) for n in REFUSED} | {
        str(folder / "odd" / "latin1-\\xe9chantillon.png")}
    if os.geteuid() != 0:
        expected.add(str(folder / "odd" / "unreadable.png"))
    assert named == expected and len(failed) == len(expected), run.stderr
    indexed = [folder / n for n in INDEXED] + [good]
    if os.geteuid() == 0:
        indexed.append(folder / "odd" / "unreadable.png")  # root can read it
    assert_kept_and_added(library, before, indexed)


# ---------------------------------------------------------------------------- libraries
@pytest.mark.parametrize("name", LIBRARY_FILES)
def test_foreign_and_future_libraries_are_refused_unchanged(capsys, tmp_path, name):
    library = tmp_path / name
    shutil.copy(BAD / name, library)
    digest = sha256(library)
    reason = "not a HashView library" if name == "foreign.h5" else "newer than this HashView"
    for argv in (("index", GOOD_PATCH, "--library", library),
                 ("search", library, GOOD_PATCH), ("info", library)):
        code, messages = run_cli(capsys, *argv)
        assert code == 1 and len(messages) == 1, (argv, messages)
        assert messages[0].startswith(f"hashview: {library}: ") and reason in messages[0]
    assert sha256(library) == digest


# ---------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODEL_FILES)
def test_pickle_model_is_refused_and_never_runs(capsys, tmp_path, library, marker, name):
    for suffix in (".json", Path(name).suffix):
        shutil.copy(BAD / (Path(name).stem + suffix), tmp_path / (Path(name).stem + suffix))
    model = tmp_path / name
    digest = sha256(library)
    for argv in (("index", GOOD_PATCH, "--library", library, "--model", model),
                 ("search", library, GOOD_PATCH, "--model", model)):
        code, messages = run_cli(capsys, *argv)
        assert code == 1 and len(messages) == 1, (argv, messages)
        assert messages[0].startswith(f"hashview: {model}: ")
        assert "pickle" in messages[0] or "not a valid safetensors file" in messages[0]
    assert not marker.exists(), "the pickle payload ran"
    assert sha256(library) == digest


def test_model_with_other_bits_than_the_library_is_refused(capsys, library):
    digest = sha256(library)
    code, messages = run_cli(capsys, "index", GOOD_PATCH, "--library", library,
                                "--model", "dch-32")
    assert code == 1 and len(messages) == 1 and str(library) in messages[0], messages
    code, messages = run_cli(capsys, "search", library, GOOD_PATCH, "--model", "dch-32")
    assert code == 1 and len(messages) == 1 and "32 bits" in messages[0], messages
    assert sha256(library) == digest
