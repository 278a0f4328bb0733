"""Fine-tuning a small folder: the epoch kept by an inner validation split (the start as it
is among the candidates), stopping early on an unchanged schedule, frozen early layers, and
the ``no_gain`` verdict when the trained model is no better than its start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hashview.cli import main
from hashview.errors import ModelError
from hashview.models import load_model
from hashview.slides.folders import scan_patch_folder
from hashview.training import TrainConfig, train, train_from_folder
from hashview.training.report import verdict, warning_line

KATHER = Path(__file__).resolve().parent / "data" / "kather"  # 4 classes x 3 tiles of 150 px
START = "mth-64-general"


@pytest.fixture(scope="module")
def entries():
    return scan_patch_folder(KATHER)


def config(**kw) -> TrainConfig:
    base = dict(arch="mth", bits=64, epochs=2, batch_size=8, input_size=64, steps_per_epoch=1,
                seed=0, device="cpu", init_from=START)
    return TrainConfig(**{**base, **kw})


def _state(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_a_run_that_only_hurts_keeps_the_start_as_it_is(entries, tmp_path):
    # a rate this high wrecks the codes in one step: epoch 0 (the start) must be the one kept
    result = train(config(lr=50.0, keep_best_epoch=True), entries[::2], tmp_path,
                   val_entries=entries[1::2])
    assert result.card.training["kept_epoch"] == 0
    assert [e["val_map"] for e in result.log][0] < result.card.training["kept_val_map"]
    start = load_model(START).net.state_dict()
    for name, tensor in result.net.state_dict().items():
        torch.testing.assert_close(tensor, start[name].to(tensor.dtype), rtol=0, atol=1e-3)


def test_without_selection_the_last_epoch_is_saved(entries, tmp_path):
    result = train(config(lr=50.0), entries[::2], tmp_path, val_entries=entries[1::2])
    assert "kept_epoch" not in result.card.training and len(result.log) == 2


def test_stop_epoch_ends_early_on_the_full_schedule(entries, tmp_path):
    full = train(config(epochs=3), entries, tmp_path / "full")
    stopped = train(config(epochs=3, stop_epoch=1), entries, tmp_path / "stopped")
    assert len(stopped.log) == 1 and stopped.log[0]["lr"] == full.log[0]["lr"]
    assert stopped.history == full.history[:1]
    with pytest.raises(ModelError, match="stop_epoch"):
        config(epochs=3, stop_epoch=4).resolved()


def test_frozen_children_stay_the_start(entries, tmp_path):
    result = train(config(lr=1e-2, freeze_children=4), entries, tmp_path)
    start, trained = load_model(START).net, result.net
    for frozen, fresh in zip(list(trained.children())[:4], list(start.children())[:4]):
        for (name, tensor), (_, before) in zip(frozen.state_dict().items(),
                                               fresh.state_dict().items()):
            torch.testing.assert_close(tensor, before.to(tensor.dtype), rtol=0, atol=1e-3,
                                       msg=name)
    assert not torch.allclose(trained.hash_layer.weight, start.hash_layer.weight, atol=1e-3)


def test_folder_run_validates_on_its_training_part_and_retrains_to_the_kept_epoch(tmp_path):
    result = train_from_folder(KATHER, "mth", 64, tmp_path, epochs=2, batch_size=8,
                               steps_per_epoch=1, device="cpu", lr=50.0, method="network",
                               keep_best_epoch=True, inner_val_fraction=0.3)
    report = result.report
    held = load_model(tmp_path / "held-out")
    split = json.loads((tmp_path / "split.json").read_text())
    fitted = held.card.training["data"]["images"]
    assert fitted + report["inner_validation"]["n_images"] == len(split["train"]) == 8
    assert fitted < 8 and report["kept_epoch"] == 0
    final = result.card.training
    assert final["config"]["stop_epoch"] == 0 and final["log"] == []
    assert final["data"]["images"] == 12
    assert report["quality"] == "no_gain" and "keep using mth-64-general" in report["reasons"][0]


def test_no_gain_verdict_and_its_line():
    codes = {"distinct": 40, "n_images": 40, "n_classes": 4, "dead_bits": 0, "bits": 64}
    start = {"name": "s", "vote_accuracy@10": 0.80, "map": 0.70}
    trained = {"name": "t", "vote_accuracy@10": 0.80, "map": 0.70, "n_queries": 40,
               "codes": codes}
    assert verdict(trained, start)[0] == "no_gain"
    assert verdict({**trained, "map": 0.71}, start)[0] == "ok"
    assert verdict({**trained, "vote_accuracy@10": 0.825}, start)[0] == "ok"
    assert verdict({**trained, "vote_accuracy@10": 0.70}, start)[0] == "worse_than_start"
    line = warning_line({"quality": "no_gain", "reasons": ["keep using s"]}, "t")
    assert line.startswith("NOTE: model t is NO BETTER THAN ITS START")


def test_cli_says_no_gain_and_exits_zero(tmp_path, capsys):
    argv = ["train", str(KATHER), "--arch", "mth", "--bits", "64", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--keep-held-out", "--lr", "50",
            "--option", "steps_per_epoch=1", "--option", "keep_best_epoch=true",
            "--option", "inner_val_fraction=0.3", "--whole-network", "--out", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr()[1]
    assert "NO BETTER THAN ITS START" in err and "keep using mth-64-general" in err


def test_report_lines_say_the_kept_epoch_and_the_candidate_starts():
    from hashview.training.report import report_lines

    scores = {"vote_accuracy@10": 0.8, "balanced_accuracy@10": 0.8, "map": 0.7,
              "n_queries": 4, "n_database": 8}
    codes = {"distinct": 12, "n_images": 12, "balanced_bits": 1.0, "dead_bits": 0}
    report = {"held_out": scores, "codes": codes, "kept_epoch": 3,
              "inner_validation": {"n_images": 3, "map": 0.9},
              "start_candidates": {"mth-64": 0.5, "mth-64-general": 0.9}}
    text = "\n".join(report_lines(report, "t"))
    assert "kept epoch 3 (0: the start as it is), validation mAP 0.900 on 3" in text
    assert "mth-64 0.500, mth-64-general 0.900" in text


def test_the_start_is_chosen_among_bundled_models_by_inner_validation(tmp_path, monkeypatch):
    import hashview.training.folder_run as folder_run

    real = folder_run.model_report

    def mth_64_retrieves_best(loaded, *args, **kwargs):  # above any real mAP
        scores = real(loaded, *args, **kwargs)
        return {**scores, "map": 2.0} if loaded.card.name == "mth-64" else scores

    monkeypatch.setattr(folder_run, "model_report", mth_64_retrieves_best)
    result = train_from_folder(KATHER, "mth", 64, tmp_path, epochs=1, batch_size=8,
                               steps_per_epoch=1, device="cpu", keep_held_out=True,
                               keep_best_epoch=True, inner_val_fraction=0.3,
                               choose_start=True, method="network")
    candidates = result.report["start_candidates"]
    assert {"mth-64", "mth-64-general", "mth-64-from-idc", "mth-64-idc"} <= set(candidates)
    best = max(sorted(candidates), key=lambda name: (candidates[name], name == START))
    assert best == "mth-64" and result.card.training["init_from"]["model"] == best
    assert result.report["start_model"]["name"] == best
    assert result.card.input_size == load_model(best).card.input_size


def test_too_few_patients_to_validate_on_splits_the_training_part_by_patch():
    import dataclasses

    from hashview.evaluation import load_dataset
    from hashview.splits import make_split
    from hashview.training.folder_run import _inner_split

    data = load_dataset(KATHER)
    one_patient = dataclasses.replace(data, patients=["p1"] * len(data.paths))
    split = make_split(data.paths, data.labels, data.name, "hatdh", 0)
    split = dataclasses.replace(split, protocol="patient")
    inner = _inner_split(one_patient, split, 0.3)
    assert inner.protocol == "hatdh" and inner.test and set(inner.test) <= set(split.train)
    assert _inner_split(data, split, 0.0) is None
