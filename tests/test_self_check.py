"""``hashview check``: a library's model judged on the library's own labels, each patient's
tiles held out (hashview.search.self_check)."""

from __future__ import annotations

import numpy as np
import pytest

from hashview.cli import main
from hashview.library import Library
from hashview.models import ModelCard
from hashview.search import self_check
from hashview.search.self_check import check_library

BITS = 64
CODE_A, CODE_B = np.zeros(8, np.uint8), np.full(8, 255, np.uint8)


def noisy(code: np.ndarray, n: int, rng, flips: int = 4) -> np.ndarray:
    """``n`` copies of a packed code with ``flips`` random bits flipped in each."""
    bits = np.tile(np.unpackbits(code), (n, 1))
    for row in bits:
        row[rng.choice(BITS, flips, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def write(path, sources):
    """``sources``: (patient or None, label, codes) per source."""
    with Library.create(path, "m64", "dch", BITS, "e" * 64) as lib:
        for i, (patient, label, codes) in enumerate(sources):
            n = len(codes)
            lib.add_source({"path": f"/slides/s{i}.svs", "fingerprint": f"f{i}",
                            "patient_id": patient}, codes, np.arange(n), np.zeros(n),
                           np.full(n, 224), tile_labels=[label] * n)
    return path


def test_separable_labels_are_judged_with_each_patient_held_out(tmp_path):
    rng = np.random.default_rng(0)
    sources = [(f"P{p}", label, noisy(code, 6, rng)) for p in range(4)
               for label, code in (("a", CODE_A), ("b", CODE_B))]
    result = check_library(write(tmp_path / "lib.h5", sources), max_queries=40)
    assert result.held_out_by == "patient" and result.query_groups == 4
    assert [(l.label, l.tiles, l.groups, l.queries) for l in result.labels] == [
        ("a", 24, 4, 20), ("b", 24, 4, 20)]
    assert result.balanced_accuracy == 1.0 and result.answered == 1.0
    assert not result.codes.collapsed
    assert result.verdict().startswith("m64 on this library: balanced vote@10 1.00 against "
                                       "chance 0.50 over 2 labels (40 queries from 4 patients")
    assert self_check.ADVICE not in result.lines()
    assert result.trained_on is None  # no installed card named m64
    assert any(line.startswith("NOTE: m64's card is not installed") for line in result.lines())


def test_the_queries_own_patient_cannot_answer_them(tmp_path):
    """Patient P0's "a" tiles look like everyone else's "b" tiles: only P0's own tiles would
    vote them right, and P0 is held out, so they are wrong."""
    rng = np.random.default_rng(1)
    sources = [("P0", "a", noisy(CODE_B, 6, rng)), ("P0", "a", noisy(CODE_B, 6, rng))]
    sources += [(f"P{p}", label, noisy(code, 6, rng)) for p in range(1, 4)
                for label, code in (("a", CODE_A), ("b", CODE_B))]
    result = check_library(write(tmp_path / "lib.h5", sources), max_queries=1000)
    a = result.labels[0]
    assert (a.label, a.queries, a.right, a.wrong, a.voted_instead) == ("a", 30, 18, 12, "b")
    assert "  a: 30 tiles from 4 patients; 18 of 30 voted right (0.60), 12 wrong (mostly b), " \
        "0 no answer" in result.lines()


def test_a_vote_little_better_than_chance_is_called_weak():
    def made(right_a: int, right_b: int) -> self_check.LibraryCheck:
        labels = tuple(self_check.LabelCheck(name, 200, 20, outside=190, queries=200,
                                             right=right, wrong=200 - right)
                       for name, right in (("a", right_a), ("b", right_b)))
        return self_check.LibraryCheck("lib.h5", "m64", 400, 10, "patient",
                                       self_check.CodeCheck(400, 300, 0.01, 0, 64), labels, 40)
    assert made(116, 116).verdict().startswith("WEAK: balanced vote@10 0.58 against chance 0.50")
    assert made(104, 104).verdict().startswith("NEAR CHANCE: balanced vote@10 0.52")
    assert made(140, 140).verdict().startswith("m64 on this library: balanced vote@10 0.70")


def test_sources_without_a_patient_are_held_out_one_by_one(tmp_path):
    rng = np.random.default_rng(2)
    sources = [(None, "a", noisy(CODE_A, 3, rng)) for _ in range(3)]
    sources += [(None, "b", noisy(CODE_B, 3, rng)) for _ in range(3)]
    sources += [(None, "c", noisy(CODE_A, 5, rng))]  # one source: cannot be judged
    result = check_library(write(tmp_path / "lib.h5", sources), k=3)
    assert result.held_out_by == "source" and result.query_groups == 6
    c = result.labels[2]
    assert (c.label, c.groups, c.queries) == ("c", 1, 0)
    assert "  c: 5 tiles from 1 source; not judged (one source holds them all)" in result.lines()


def test_collapsed_codes_and_near_chance_votes_are_said(tmp_path):
    rng = np.random.default_rng(3)
    mostly_one = [(f"P{p}", label, np.tile(CODE_A, (9, 1))) for p in range(4) for label in "ab"]
    mostly_one[0] = ("P0", "a", rng.integers(0, 256, (9, 8), dtype=np.uint8))
    codes = check_library(write(tmp_path / "one.h5", mostly_one)).codes
    assert codes.top_code_share == pytest.approx(63 / 72) and codes.dead_bits < 32
    assert codes.collapsed
    few_bits = [(f"P{p}", label, np.concatenate(
        [np.zeros((9, 5), np.uint8), rng.integers(0, 256, (9, 3), dtype=np.uint8)], axis=1))
        for p in range(4) for label in "ab"]
    result = check_library(write(tmp_path / "bits.h5", few_bits))
    assert result.codes.top_code_share < 0.1 and result.codes.dead_bits >= 40
    assert result.verdict().startswith("COLLAPSED: m64 gives this library's tiles ")
    assert result.verdict().endswith(" bits never change: its hits are arbitrary here")
    random = [(f"P{p}", label, rng.integers(0, 256, (20, 8), dtype=np.uint8))
              for p in range(6) for label in "ab"]
    verdict = check_library(write(tmp_path / "random.h5", random), max_queries=200).verdict()
    assert verdict.startswith("NEAR CHANCE: balanced vote@10 0.")
    assert check_library(tmp_path / "random.h5", max_queries=200).lines()[-1] == (
        self_check.ADVICE)


def test_a_label_too_small_for_a_full_vote_is_not_judged(tmp_path):
    """8 tiles of each label outside any one patient: a top-10 vote could not be right even
    for a perfect model, so the labels are not judged at k=10 (they are at k=3)."""
    rng = np.random.default_rng(7)
    path = write(tmp_path / "lib.h5", [(f"P{p}", label, noisy(code, 4, rng)) for p in range(3)
                                       for label, code in (("a", CODE_A), ("b", CODE_B))])
    result = check_library(path)
    assert result.status == "not judged" and result.queries == 0
    assert "  a: 12 tiles from 3 patients; not judged (8 outside its largest patient: a top-10 " \
           "vote needs 10; try a smaller -k)" in result.lines()
    assert check_library(path, k=3).status == "fine"


def test_one_label_is_not_judged(tmp_path):
    rng = np.random.default_rng(4)
    result = check_library(write(tmp_path / "lib.h5",
                                 [(f"P{p}", "a", noisy(CODE_A, 4, rng)) for p in range(3)]))
    assert result.verdict().startswith("Not judged: it needs labelled tiles of at least two")


def test_tiles_the_model_trained_on_are_not_queried(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    sources = [(f"P{p}", label, noisy(code, 4, rng)) for p in range(3)
               for label, code in (("a", CODE_A), ("b", CODE_B))]
    card = ModelCard("m64", "dch", BITS, 64, split={
        "protocol": "patient", "seed": 0, "data_root": "slides", "train": ["s0.svs", "s1.svs"],
        "test": []})
    monkeypatch.setattr(self_check, "_model_card", lambda name, sha: card)
    result = check_library(write(tmp_path / "lib.h5", sources), k=3)
    assert result.trained_on == 8
    assert [l.queries for l in result.labels] == [8, 8]  # P0's two sources left out
    assert result.query_groups == 2
    assert "8 labelled tiles m64 trained on (its card's record) are not queried" in (
        result.lines())


def test_cli_prints_the_report_or_one_line(tmp_path, capsys):
    rng = np.random.default_rng(6)
    path = write(tmp_path / "lib.h5", [(f"P{p}", label, noisy(code, 4, rng)) for p in range(3)
                                       for label, code in (("a", CODE_A), ("b", CODE_B))])
    assert main(["check", str(path), "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("m64 on this library: balanced vote@3 1.00")
    assert out[1].startswith("codes: ")
    with pytest.raises(SystemExit) as usage:
        main(["check", str(path), "-k", "0"])
    assert usage.value.code == 2
    assert capsys.readouterr().err.strip().endswith("argument -k: must be an integer >= 1, got "
                                                    "'0'")
    (tmp_path / "bad.h5").write_text("not a library")
    assert main(["check", str(tmp_path / "bad.h5")]) == 1
    assert capsys.readouterr().err.strip() == f"hashview: {tmp_path / 'bad.h5'}: not an HDF5 file"


def test_an_empty_library_is_not_judged(tmp_path):
    with Library.create(tmp_path / "empty.h5", "m64", "dch", BITS, "e" * 64):
        pass
    result = check_library(tmp_path / "empty.h5")
    assert result.queries == 0 and result.verdict().startswith("Not judged")


def test_indexing_ends_with_the_check_when_the_labels_can_be_judged(tmp_path, capsys):
    from _patch_folders import turned_patches

    turned_patches(tmp_path / "patches")
    library = str(tmp_path / "lib.h5")
    assert main(["index", str(tmp_path / "patches"), "-l", library]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("check on its labels: ") and "balanced vote@10" in out[1]
    assert ("24 queries from 24 sources" in out[1]) and len(out) in (2, 3)
    assert main(["index", str(tmp_path / "patches"), "-l", library]) == 0  # nothing added
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["index", str(tmp_path / "patches"), "-l", str(tmp_path / "b.h5"),
                 "--no-check"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_float_descriptor_library_is_checked_by_cosine(tmp_path):
    from hashview.library.records import ModelInfo

    rng = np.random.default_rng(9)
    with Library.create(tmp_path / "f.h5", ModelInfo("lg", "lgffem", 32, "e" * 64,
                                                      code_kind="float")) as lib:
        for i in range(24):
            label = "ab"[i % 2]
            centre = np.ones(32) if label == "a" else -np.ones(32)
            codes = (centre + rng.normal(0, 1, (3, 32))).astype(np.float32)
            lib.add_source({"path": f"/x/{i}.png", "fingerprint": f"f{i}",
                            "patient_id": f"P{i % 6}"}, codes, np.arange(3), np.zeros(3),
                           np.full(3, 224), tile_labels=[label] * 3)
    result = check_library(tmp_path / "f.h5")
    assert (result.held_out_by, result.query_groups, result.queries) == ("patient", 6, 72)
    assert result.balanced_accuracy == 1.0 and result.codes.distinct == 72


def test_the_sample_stays_within_its_size_whatever_the_number_of_labels():
    from hashview.search.self_check import stratified_sample

    per_label = {lid: np.arange(lid * 10, lid * 10 + 10) for lid in range(50)}
    chosen = stratified_sample(per_label, 20, seed=0)
    assert len(chosen) == 20 and all(len(tiles) == 1 for tiles in chosen.values())
    chosen = stratified_sample({0: np.arange(100), 1: np.arange(100, 103)}, 20, seed=0)
    assert [len(chosen[0]), len(chosen[1])] == [10, 3]  # the same share where they have it
    assert all((np.diff(tiles) > 0).all() for tiles in chosen.values())


def test_the_interval_resamples_patients_not_queries():
    """Two patients each answering all of their queries one way: the balanced vote of 0.5 has
    an interval from 0 to 1 over patients, though 200 queries would give it a narrow one."""
    from hashview.search.self_check import resampled_interval

    split = {("patient", "P1"): {0: [50, 50], 1: [50, 50]},
             ("patient", "P2"): {0: [0, 50], 1: [0, 50]}}
    low, high = resampled_interval(split, seed=0)
    assert low == 0.0 and high == 1.0
    even = {("patient", f"P{i}"): {0: [5, 10], 1: [5, 10]} for i in range(20)}
    assert resampled_interval(even, seed=0) == (0.5, 0.5)
    assert resampled_interval({("source", 1): {0: [1, 1]}}) is None  # one label: no balance


def test_near_chance_follows_the_interval_over_patients():
    def made(interval):
        labels = tuple(self_check.LabelCheck(name, 200, 2, outside=100, queries=100, right=75,
                                             wrong=25) for name in "ab")
        return self_check.LibraryCheck("lib.h5", "m64", 400, 10, "patient",
                                       self_check.CodeCheck(400, 300, 0.01, 0, 64), labels, 2,
                                       interval=interval)
    assert made((0.0, 1.0)).status == "near chance"  # 0.75 from 2 patients: not known
    assert made((0.70, 0.80)).status == "fine"
    assert made(None).status == "fine"  # without groups: the queries' own sampling error
    assert made((0.70, 0.80)).verdict().endswith(
        "(200 queries from 2 patients, each held out; 0.70-0.80 with the patients resampled)")


def test_a_renamed_copy_of_the_training_folder_is_still_recognised():
    from types import SimpleNamespace
    card = ModelCard("m64", "dch", BITS, 64, split={
        "protocol": "hatdh", "seed": 0, "data_root": "kather",
        "train": ["01_TUMOR/a.tif", "flat.png"], "test": []})
    paths = ["/data/kather/01_TUMOR/a.tif", "/home/me/my copy/01_TUMOR/a.tif",
             "/home/me/my copy/01_TUMOR/b.tif", "/home/me/other/flat.png",
             "/data/kather/flat.png"]
    sources = [SimpleNamespace(id=i, path=p) for i, p in enumerate(paths)]
    # the class folder and file name identify a training tile; a bare file name does not
    assert self_check.trained_sources(sources, card) == {0, 1, 4}
