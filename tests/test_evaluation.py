"""Splits, split files and model/baseline evaluation on patch folders."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from hashview.errors import HashViewError
from hashview.evaluation import (encode_folder_split, evaluate_baseline, evaluate_model,
                                 load_dataset, plot_curves)
from hashview.splits import Split, make_split, patient_split, stratified_split

KATHER = Path(__file__).resolve().parent / "data" / "kather"  # 4 classes x 3 tiles
# the shared data set lies beside the repository (../shared/data); tests using it skip without it
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KATHER_SUBSET = SHARED / "kather2016_subset"  # 8 classes x 33 tiles
IDC_LABELS = SHARED / "idc_breast" / "labels.csv"


# ---------------------------------------------------------------- splits

def test_stratified_split_proportions_and_disjointness():
    labels = ["a"] * 10 + ["b"] * 20 + ["c"] * 3
    train, test = stratified_split(labels, 0.7, seed=0)
    assert set(train).isdisjoint(test) and sorted([*train, *test]) == list(range(33))
    counts = Counter(labels[i] for i in train)
    assert counts == {"a": 7, "b": 14, "c": 2}  # round(0.7 n) per class: 7, 14, round(2.1)
    again = stratified_split(labels, 0.7, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip((train, test), again))
    assert not np.array_equal(train, stratified_split(labels, 0.7, seed=1)[0])


def test_stratified_split_keeps_one_image_each_side():
    train, test = stratified_split(["a", "a", "b"], 0.9, seed=0)
    assert Counter(train.tolist() + test.tolist()) == {0: 1, 1: 1, 2: 1}
    assert len(test) == 1 and len(train) == 2  # "a": 1 + 1 (not 2 + 0); "b" alone stays train
    with pytest.raises(ValueError):
        stratified_split(["a", "b"], 1.0)


def test_patient_split_small_case():
    labels = ["x", "x", "x", "y", "y", "y", "y", "x"]
    patients = ["p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6"]
    train, test = patient_split(labels, patients, 0.5, seed=3)
    side = {patients[i]: "train" for i in train} | {patients[i]: "test" for i in test}
    assert len(side) == 6
    assert not {patients[i] for i in train} & {patients[i] for i in test}
    # each stratum (x: p1 p2 p6; y: p3 p4 p5) has patients on both sides
    assert {side[p] for p in ("p1", "p2", "p6")} == {"train", "test"}
    assert {side[p] for p in ("p3", "p4", "p5")} == {"train", "test"}
    with pytest.raises(ValueError):
        patient_split(["x", "y"], ["p1", None])


@pytest.mark.skipif(not IDC_LABELS.is_file(), reason="IDC labels not available")
def test_patient_split_on_idc_never_shares_a_patient():
    with open(IDC_LABELS, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8699
    labels = [row["label"] for row in rows]
    patients = [row["patient_id"] for row in rows]
    for seed in (0, 1):
        train, test = patient_split(labels, patients, 0.7, seed=seed)
        assert set(train).isdisjoint(test) and len(train) + len(test) == len(rows)
        assert not {patients[i] for i in train} & {patients[i] for i in test}
        assert 0.6 < len(train) / len(rows) < 0.8
        share = defaultdict(float)
        for name, idx in (("train", train), ("test", test)):
            share[name] = np.mean([labels[i] == "IDC" for i in idx])
        assert abs(share["train"] - share["test"]) < 0.1  # class balance kept approximately


def test_split_json_roundtrip(tmp_path):
    split = make_split(["a/1.png", "a/2.png", "b/3.png", "b/4.png"], ["a", "a", "b", "b"],
                       "data", protocol="hatdh", seed=7, train_fraction=0.5)
    assert split.protocol == "hatdh" and split.seed == 7 and split.data_root == "data"
    assert len(split.train) == 2 and len(split.test) == 2
    assert Split.from_json(split.to_json()) == split
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
    assert json.loads(split.to_json())["train"] == split.train
    paths = ["b/4.png", "b/3.png", "a/2.png", "a/1.png", "extra.png"]
    train, test = split.indices(paths)
    assert sorted(paths[i] for i in train) == sorted(split.train)
    with pytest.raises(HashViewError, match="not found in the data folder"):
        split.indices(paths[:2])
    with pytest.raises(HashViewError):
        Split.from_json("[1, 2]")
    with pytest.raises(HashViewError):
        Split.load(tmp_path / "missing.json")
    with pytest.raises(ValueError):
        make_split(["a"], ["a"], "data", protocol="other")


# ---------------------------------------------------------------- evaluation

def _check_result(result, n_seeds):
    json.dumps(result)
    assert len(result["splits"]) == n_seeds and result["seeds"] == list(range(n_seeds))
    for key in ("map", "map@10", "precision@10", "radius2_precision", "vote_accuracy@10"):
        assert 0.0 <= result["mean"][key] <= 1.0 and result["std"][key] >= 0.0


def test_evaluate_baseline_on_test_tiles():
    result = evaluate_baseline("lsh-pixels", KATHER, bits=32, seeds=(0, 1))
    _check_result(result, 2)
    assert result["n_images"] == 12 and result["n_classes"] == 4 and result["bits"] == 32
    assert result["splits"][0]["n_database"] == 8 and result["splits"][0]["n_queries"] == 4
    assert evaluate_baseline("lsh-pixels", KATHER, bits=32, seeds=(0, 1)) == result
    with pytest.raises(HashViewError, match="unknown baseline"):
        evaluate_baseline("pca", KATHER)


@pytest.mark.skipif(not KATHER_SUBSET.is_dir(), reason="Kather subset not available")
def test_lsh_pixels_baseline_calibration_on_kather_subset():
    result = evaluate_baseline("lsh-pixels", KATHER_SUBSET, bits=64, seeds=(0,))
    assert result["splits"][0]["n_database"] == 8 * 23
    assert 0.3 < result["mean"]["map"] < 0.45  # ~0.37 over 5 seeds


def test_evaluate_model_default_on_test_tiles(tmp_path):
    from hashview.models import DEFAULT_MODEL, load_model

    loaded = load_model(DEFAULT_MODEL)
    dataset = load_dataset(KATHER)
    codes = encode_folder_split(loaded, dataset.entries, device="cpu")
    assert codes.shape == (12, loaded.card.bits // 8) and codes.dtype == np.uint8

    result = evaluate_model(loaded, KATHER, seeds=(0,), device="cpu")
    _check_result(result, 1)
    assert result["name"] == DEFAULT_MODEL and result["split_source"] == "protocol"

    # a split saved with the model (card.split) is used when it names this data folder
    split = make_split(dataset.paths, dataset.labels, dataset.name, seed=5)
    card = dataclasses.replace(loaded.card, split=split.to_dict())
    from_card = evaluate_model(dataclasses.replace(loaded, card=card), KATHER, device="cpu")
    assert from_card["split_source"] == "model card" and from_card["seeds"] == [5]
    split.save(tmp_path / "split.json")
    explicit = evaluate_model(loaded, KATHER, split=tmp_path / "split.json", device="cpu")
    assert explicit["split_source"] == "argument"
    assert explicit["mean"]["map"] == pytest.approx(from_card["mean"]["map"])


def test_clear_errors(tmp_path):
    with pytest.raises(HashViewError) as missing:
        evaluate_baseline("lsh-pixels", tmp_path / "nowhere")
    assert "\n" not in str(missing.value) and "nowhere" in str(missing.value)
    with pytest.raises(HashViewError, match="patient_id"):
        evaluate_baseline("lsh-pixels", KATHER, protocol="patient")
    with pytest.raises(HashViewError, match="unknown split protocol"):
        evaluate_baseline("lsh-pixels", KATHER, protocol="random")
    (tmp_path / "flat").mkdir()
    source = next(KATHER.glob("*/*.tif"))
    (tmp_path / "flat" / source.name).write_bytes(source.read_bytes())
    with pytest.raises(HashViewError, match="no label"):
        load_dataset(tmp_path / "flat")


def test_plot_curves_needs_matplotlib(tmp_path):
    result = evaluate_baseline("lsh-pixels", KATHER, bits=16, seeds=(0,))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(HashViewError, match="matplotlib"):
            plot_curves(result, tmp_path / "curves.png")
    else:
        assert plot_curves(result, tmp_path / "curves.png").is_file()


def test_split_files_that_are_not_json_text_are_refused_in_one_line(tmp_path):
    import os

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "latin1.json").write_bytes(b'{"protocol": "\xe9"}')
    os.mkfifo(tmp_path / "fifo.json")  # a plain read would wait for a writer forever
    (tmp_path / "folder.json").mkdir()
    for name, words in (("deep.json", "nested too deeply"), ("latin1.json", "not UTF-8"),
                        ("fifo.json", "FIFO"), ("folder.json", "directory")):
        with pytest.raises(HashViewError) as err:
            Split.load(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and words in str(err.value)
