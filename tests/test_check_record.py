"""The kept check beside a library (LIB.h5.hvcheck) and the caution it puts on search votes
(hashview.search.check_record)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hashview import open_library
from hashview.cli import main
from hashview.library import Library
from hashview.search import check_record
from hashview.search.check_record import caution, recalled, record_path, remember
from hashview.search.self_check import check_library

BITS = 64


def random_library(path, seed=0):
    """Labels that have nothing to do with the codes: a check finds the votes near chance."""
    rng = np.random.default_rng(seed)
    with Library.create(path, "m64", "dch", BITS, "e" * 64) as lib:
        for i in range(12):
            codes = rng.integers(0, 256, (20, 8), dtype=np.uint8)
            lib.add_source({"path": f"/s/{i}.svs", "fingerprint": f"f{i}",
                            "patient_id": f"P{i}"}, codes, np.arange(20), np.zeros(20),
                           np.full(20, 224), tile_labels=["ab"[i % 2]] * 20)
    return path


def test_a_kept_check_holds_for_its_generation_and_model_only(tmp_path):
    path = random_library(tmp_path / "lib.h5")
    check = check_library(path, max_queries=200)
    assert check.status == "near chance"
    assert remember(check) is None and record_path(path).is_file()
    record = recalled(path, check.library_created, check.generation, "e" * 64)
    assert record["status"] == "near chance" and record["verdict"] == check.verdict()
    assert recalled(path, check.library_created, check.generation + 1, "e" * 64) is None  # changed
    assert recalled(path, check.library_created, check.generation, "f" * 64) is None  # model
    assert recalled(path, "2020-01-01T00:00:00Z", check.generation, "e" * 64) is None
    assert caution(record) == (
        f"votes NEAR CHANCE on this library's labels (last check: balanced vote@10 "
        f"{check.balanced_accuracy:.2f}, chance 0.50, {check.queries} queries)")
    assert caution({**record, "status": "fine"}) is None and caution(None) is None
    with Library.open(path) as lib:
        assert check_record.of_library(path, lib.stats()) == record
    assert check_record.last_status(path) == "near chance"  # whatever the library's state
    assert check_record.last_status(tmp_path / "none.h5") is None


@pytest.mark.parametrize("content", [
    b"not json", b"[1, 2]", json.dumps({"format": 1}).encode(),
    b"x" * (check_record.MAX_BYTES + 1)])
def test_a_damaged_or_foreign_record_is_ignored(tmp_path, content):
    path = random_library(tmp_path / "lib.h5")
    check = check_library(path, max_queries=100)
    remember(check)
    good = json.loads(record_path(path).read_text())
    assert recalled(path, check.library_created, check.generation, "e" * 64) is not None
    record_path(path).write_bytes(content)
    assert recalled(path, check.library_created, check.generation, "e" * 64) is None
    for bad in ({**good, "generation": str(good["generation"])}, {**good, "status": "great"},
                {**good, "verdict": "x" * (check_record.MAX_VERDICT_CHARS + 1)}):
        record_path(path).write_text(json.dumps(bad))
        assert recalled(path, check.library_created, check.generation, "e" * 64) is None
    record_path(path).unlink()
    os.mkfifo(record_path(path))  # not a regular file: never opened for reading, never hangs
    assert recalled(path, check.library_created, check.generation, "e" * 64) is None


def test_a_record_that_cannot_be_written_is_one_line(tmp_path):
    path = random_library(tmp_path / "lib.h5")
    check = check_library(path, max_queries=100)
    record_path(path).mkdir()  # a folder where the record goes
    problem = remember(check)
    assert problem.startswith(f"{record_path(path)}: check not kept (")
    assert "\n" not in problem


def test_searches_carry_the_caution_until_the_library_changes(tmp_path, capsys):
    from _patch_folders import turned_patches

    patches = turned_patches(tmp_path / "patches")
    path = tmp_path / "lib.h5"
    assert main(["index", str(patches), "-l", str(path), "--no-check"]) == 0
    # labels that cut across the tissue (every other file): the votes are near chance
    assert main(["relabel", str(path), *map(str, range(0, 24, 2)), "--label", "x"]) == 0
    assert main(["relabel", str(path), *map(str, range(1, 24, 2)), "--label", "y"]) == 0
    query = sorted((patches / "01_TUMOR").iterdir())[0]
    capsys.readouterr()
    session = open_library(path)
    assert "caution" not in session.search(query).summary  # no check kept yet
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith("NEAR CHANCE: ")
    result = session.search(query)
    assert result.caution.startswith("votes NEAR CHANCE on this library's labels (last check: "
                                     "balanced vote@10 ")
    assert f"; caution: {result.caution}" in result.summary
    assert result.to_dict()["caution"] == result.caution
    assert main(["search", str(path), str(query)]) == 0
    assert f"; caution: {result.caution}" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert "check: NEAR CHANCE, balanced " in capsys.readouterr().out
    assert main(["relabel", str(path), "0", "--label", "y"]) == 0
    assert session.search(query).caution is None  # the library changed: the check is stale
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["check"] == (
        "none kept for the library as it is now")


def test_the_headline_for_a_librarys_header(tmp_path):
    from hashview.search.check_record import headline

    record = {"status": "near chance", "balanced_accuracy": 0.5012, "chance": 0.5}
    assert headline(record) == "NEAR CHANCE, balanced 0.50, chance 0.50"
    assert headline({**record, "status": "fine", "balanced_accuracy": 0.83, "chance": 0.125}) \
        == "balanced 0.83, chance 0.12"
    assert headline({"status": "collapsed", "balanced_accuracy": None}) == "COLLAPSED"
    assert headline({"status": "not judged"}) is None and headline(None) is None
