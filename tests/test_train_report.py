"""Training on a user's folder: default start model, held-out report and verdict, final retrain
on every patch, resume of the right phase, and ``--model`` given a training folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hashview.cli import main
from hashview.errors import ModelError
from hashview.models import DEFAULT_MODEL, load_model
from hashview.progress import Cancelled
from hashview.training import train_from_folder
from hashview.training.defaults import DEFAULT_START, start_model_name
from hashview.training.report import code_stats, is_collapsed, regression_margin, verdict

KATHER = Path(__file__).resolve().parent / "data" / "kather"  # 4 classes x 3 tiles of 150 px
TINY = dict(epochs=1, batch_size=8, steps_per_epoch=1, device="cpu")
REPORT_KEYS = {"held_out", "codes", "quality", "reasons", "start_model"}


def test_start_model_table_and_choice():
    assert start_model_name("mth") == DEFAULT_START["mth"]
    assert start_model_name("MTH", init_from="mth-64") == "mth-64"
    assert start_model_name("mth", from_scratch=True) is None
    assert start_model_name("dafh") is None  # no start model: from scratch


def test_default_start_with_other_bits_keeps_the_hash_layer_fresh(tmp_path):
    result = train_from_folder(KATHER, "mth", 16, tmp_path, keep_held_out=True, **TINY)
    start = result.card.training["init_from"]
    assert start["model"] == DEFAULT_START["mth"] and start["bits"] == 64
    # a bundled start is named with what it saw, not copied split by split into the card
    assert {"idc_breast", "kather2016_subset"} <= set(start["seen"]["datasets"])
    assert start["seen"]["splits"] == []
    assert start["hash_layer_fresh"] and {"hash_layer.weight", "hash_layer.bias"} <= set(
        start["tensors_kept_fresh"])
    assert result.card.input_size == load_model(DEFAULT_START["mth"]).card.input_size
    assert REPORT_KEYS <= set(result.card.metrics) and result.card.quality in (
        "ok", "collapsed", "worse_than_start", "no_gain")
    assert result.card.metrics["start_model"]["role"] == "start"
    assert result.card.metrics["held_out"]["n_queries"] == 4  # 30 % of 4 x 3 tiles
    assert result.card.tile_size == 150  # every patch is 150 px: slides are read so
    assert result.card.training["data"]["images"] == 8  # kept held out: the training part


def test_from_scratch_compares_with_the_default_model(tmp_path):
    result = train_from_folder(KATHER, "dch", 8, tmp_path, from_scratch=True,
                               keep_held_out=True, input_size=64, **TINY)
    assert "init_from" not in result.card.training
    assert result.report["start_model"]["name"] == DEFAULT_MODEL
    assert result.report["start_model"]["role"] == "reference"


def test_final_retrain_uses_every_patch_and_a_resume_continues_it(tmp_path):
    calls = {"evaluated": False}

    def cancel_in_the_final_run(event):
        calls["evaluated"] |= event.stage == "evaluating"
        if calls["evaluated"] and event.stage == "training" and "batch" in event.message:
            raise Cancelled()

    network = dict(TINY, method="network")  # the whole net: checkpoints to resume from
    with pytest.raises(Cancelled):
        train_from_folder(KATHER, "mth", 16, tmp_path, progress=cancel_in_the_final_run,
                          **network)
    held = tmp_path / "held-out" / "mth-16-kather.safetensors"
    stamp = held.stat().st_mtime_ns
    assert not (tmp_path / "mth-16-kather.safetensors").exists()
    result = train_from_folder(KATHER, "mth", 16, tmp_path, resume=True, **network)
    assert held.stat().st_mtime_ns == stamp  # the held-out run was not redone
    assert result.card.training["data"]["images"] == 12  # train + held-out
    assert load_model(held).card.training["data"]["images"] == 8
    assert "before this model was retrained on all 12" in result.card.metrics["measured_on"]
    assert result.card.metrics["final_codes"]["n_images"] == 12
    assert result.card.split is None  # no held-out part left to evaluate on


def test_code_stats_and_verdict_thresholds():
    codes = np.zeros((8, 2), dtype=np.uint8)
    codes[:, 0] = np.arange(8)  # 8 distinct codes; bits 3-15 never change
    stats = code_stats(codes, 16, n_classes=2)
    assert stats["distinct"] == 8 and stats["dead_bits"] == 13 and is_collapsed(stats)
    healthy = code_stats(np.random.default_rng(0).integers(0, 256, (40, 2), dtype=np.uint8),
                         16, n_classes=4)
    assert healthy["dead_bits"] == 0 and healthy["distinct"] == 40 and not is_collapsed(healthy)
    few = {**healthy, "distinct": 4}  # under an eighth of 40 images
    assert is_collapsed(few) and not is_collapsed({**healthy, "distinct": 6})
    assert is_collapsed({**healthy, "n_images": 12, "distinct": 3})  # fewer than 4 classes
    trained = {"name": "t", "vote_accuracy@10": 0.70, "map": 0.72, "n_queries": 40,
               "codes": healthy}
    start = {"name": "s", "vote_accuracy@10": 0.80, "map": 0.70}
    margin = regression_margin(0.80, 40)
    assert margin == pytest.approx(0.0632, abs=1e-3)
    assert verdict(trained, start)[0] == "worse_than_start"
    assert verdict({**trained, "vote_accuracy@10": 0.75}, start)[0] == "ok"  # within the margin
    assert verdict({**trained, "vote_accuracy@10": 0.75, "map": 0.70}, start)[0] == "no_gain"
    assert verdict({**trained, "codes": few}, start)[0] == "collapsed"


@pytest.fixture
def constant_codes_for_trained_models(monkeypatch):
    """The trained model gives every patch one code (a collapse); other models are real."""
    import hashview.evaluation as evaluation

    real = evaluation.encode_folder_split

    def encode(loaded, entries, *args, **kwargs):
        codes = real(loaded, entries, *args, **kwargs)
        return np.zeros_like(codes) if loaded.card.name.endswith("-kather") else codes

    monkeypatch.setattr(evaluation, "encode_folder_split", encode)


def test_cli_prints_the_report_and_a_collapse_exits_non_zero(
        tmp_path, capsys, constant_codes_for_trained_models):
    argv = ["train", str(KATHER), "--arch", "mth", "--bits", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--keep-held-out",
            "--option", "steps_per_epoch=1"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 4
    out, err = capsys.readouterr()
    assert "held-out report" in out and f"{DEFAULT_START['mth']} (start)" in out
    assert "vote@10" in out
    assert "WARNING: model mth-16-kather COLLAPSED: 1 distinct codes over 12" in err
    card = json.loads((tmp_path / "a" / "mth-16-kather.json").read_text())
    assert card["quality"] == "collapsed" and REPORT_KEYS <= set(card["metrics"])
    assert main(argv + ["--out", str(tmp_path / "b"), "--accept-worse"]) == 0
    assert "COLLAPSED" in capsys.readouterr()[1]


def test_models_list_marks_a_collapsed_model(monkeypatch, capsys):
    import hashview.models as models
    from hashview.models.cards import ModelCard

    card = ModelCard(name="mine", arch="mth", bits=16, input_size=64, trained=True,
                     quality="collapsed")
    outdone = ModelCard(name="mine2", arch="mth", bits=16, input_size=64, trained=True,
                        quality="ok", metrics={"bundled_better": "mth-64-idc"})
    monkeypatch.setattr(models, "list_models", lambda: [card, outdone])
    assert main(["models"]) == 0
    lines = capsys.readouterr()[0].splitlines()
    assert "[COLLAPSED]" in lines[0] and "DID BETTER" not in lines[0]
    assert "[mth-64-idc DID BETTER ON ITS HELD-OUT PART]" in lines[1]


def test_card_warnings_name_the_verdict_and_the_better_bundled_model():
    from hashview.models.cards import ModelCard

    def warnings(**fields):
        return ModelCard(name="m", arch="mth", bits=16, input_size=64, trained=True,
                         **fields).warnings()

    assert warnings(quality="ok") == [] and warnings() == []
    assert warnings(quality="worse_than_start",
                    metrics={"bundled_better": "dch-64-idc"}) == [
        "WORSE THAN ITS START", "dch-64-idc DID BETTER ON ITS HELD-OUT PART"]
    assert warnings(quality="no_gain") == ["NO BETTER THAN ITS START"]
    assert warnings(quality="collapsed", metrics=None) == ["COLLAPSED"]  # built, not validated
    # a card that lies: the name is shown cut, never whole
    shown = warnings(quality="ok", metrics={"bundled_better": "x" * 5000})[0]
    assert len(shown) < 100 and shown.endswith("DID BETTER ON ITS HELD-OUT PART")


def test_model_option_takes_a_training_folder(tmp_path, capsys):
    run = tmp_path / "run"
    result = train_from_folder(KATHER, "dch", 8, run, from_scratch=True, keep_held_out=True,
                               input_size=64, **TINY)
    assert load_model(run).card.sha256 == result.card.sha256
    assert main(["eval", str(KATHER), "--model", str(run), "--seeds", "0"]) == 0
    assert "dch-8-kather" in capsys.readouterr()[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(KATHER), "--model", str(empty)]) != 0
    err = capsys.readouterr()[1].strip()
    assert err == f"hashview: {empty}: no model in this folder (expected NAME.safetensors " \
                  "with NAME.json, as 'hashview train --out' writes them)"
    for name in ("a", "b"):
        for suffix in (".safetensors", ".json"):
            os.link(result.model_path.with_suffix(suffix), run / f"{name}{suffix}")
    with pytest.raises(ModelError, match="3 models in this folder"):
        load_model(run)


def test_a_training_folder_installs_by_name_and_its_library_then_searches(tmp_path, capsys):
    run = tmp_path / "run"
    result = train_from_folder(KATHER, "dch", 8, run, from_scratch=True, keep_held_out=True,
                               input_size=64, **TINY)
    library, query = tmp_path / "lib.h5", sorted(KATHER.glob("*/*"))[0]
    assert main(["index", str(KATHER), "-l", str(library), "--model", str(run)]) == 0
    capsys.readouterr()
    assert main(["search", str(library), str(query)]) != 0  # not installed: say how to fix it
    err = capsys.readouterr()[1]
    assert "its model dch-8-kather is not installed here" in err
    assert "hashview models --install PATH" in err and err.count("\n") == 1

    assert main(["models", "--install", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("installed dch-8-kather: use it by name")
    assert ("WARNING: model dch-8-kather" in err) == bool(result.card.warnings())
    assert main(["models", "--install", str(run)]) == 0
    assert "(replacing the earlier one)" in capsys.readouterr()[0]
    assert main(["models"]) == 0
    listed = [line for line in capsys.readouterr()[0].splitlines() if "dch-8-kather" in line]
    held = result.card.metrics["held_out"]
    assert len(listed) == 1 and f"held-out mAP {held['map']:.3f}" in listed[0]
    assert main(["search", str(library), str(query)]) == 0  # found by name now

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["models", "--install", str(empty)]) != 0
    assert "no model in this folder" in capsys.readouterr()[1]


def test_installing_a_model_named_like_a_bundled_one_is_refused(tmp_path, capsys):
    import shutil

    from hashview.models import bundled_models_dirs
    from hashview.models.store import user_models_dir

    for suffix in (".safetensors", ".json"):
        shutil.copy(bundled_models_dirs()[0] / f"dch-16{suffix}", tmp_path / f"dch-16{suffix}")
    assert main(["models", "--install", str(tmp_path / "dch-16.safetensors")]) != 0
    err = capsys.readouterr()[1]
    assert "a bundled model is named dch-16: rename" in err and err.count("\n") == 1
    assert not (user_models_dir() / "dch-16.json").exists()


def _scores(vote, mean_ap, n_queries=40):
    return {"vote_accuracy@10": vote, "balanced_accuracy@10": vote, "map": mean_ap,
            "n_queries": n_queries, "n_database": 100}


def test_report_names_a_bundled_model_that_did_better_in_a_note():
    from hashview.splits import Split
    from hashview.training.report import (build_report, is_note_only, outdone_by, report_lines,
                                          warning_line)

    healthy = {"distinct": 40, "n_images": 40, "n_classes": 2, "balanced_bits": 1.0,
               "dead_bits": 0, "bits": 64}
    trained = {**_scores(0.80, 0.84), "name": "t", "codes": healthy}
    start = {**_scores(0.75, 0.65), "name": "s", "codes": healthy}
    split = Split("hatdh", 0, "f")
    assert outdone_by(trained, _scores(0.95, 0.80))       # vote clearly above
    assert outdone_by(trained, _scores(0.80, 0.85))       # level vote, higher mAP
    assert not outdone_by(trained, _scores(0.85, 0.70))   # within the margin, lower mAP
    bundled = {"a": _scores(0.95, 0.80), "b": _scores(0.70, 0.90)}
    report = build_report(trained, start, "start", split, bundled)
    assert report["quality"] == "ok" and report["bundled_better"] == "a"
    assert report["best_bundled"] == {"name": "a", **{k: v for k, v in _scores(
        0.95, 0.80).items() if k not in ("n_queries", "n_database")}, "of": 2}
    assert set(report["bundled_models"]) == {"a", "b"}
    line = warning_line(report, "t")
    assert line.startswith("NOTE: model t: bundled model a as it is scored higher") \
        and "consider indexing with a" in line and is_note_only(report)
    assert "picked on these same queries: a 0.950" in "\n".join(report_lines(report, "t"))
    # the trained model ahead of every bundled one: no note at all
    fine = build_report(trained, start, "start", split, {"b": _scores(0.70, 0.90)})
    assert "bundled_better" not in fine and warning_line(fine, "t") is None
    # worse than its start: still a WARNING, the bundled model named too
    worse = build_report({**trained, **_scores(0.50, 0.84)}, start, "start", split, bundled)
    assert warning_line(worse, "t").startswith("WARNING: model t WORSE THAN ITS START") \
        and "bundled model a" in warning_line(worse, "t") and not is_note_only(worse)
    skipped = build_report(trained, start, "start", split, {}, "too many patches")
    assert skipped["bundled_models_skipped"] == "too many patches"
    assert "bundled models not compared: too many patches" in "\n".join(
        report_lines(skipped, "t"))


def test_held_out_run_compares_every_other_bundled_model(tmp_path, monkeypatch):
    import hashview.training.folder_run as folder_run
    from hashview.models import list_models

    result = train_from_folder(KATHER, "mth", 16, tmp_path / "a", keep_held_out=True, **TINY)
    others = {c.name for c in list_models() if c.source == "bundled" and c.trained} \
        - {DEFAULT_START["mth"]}
    compared = result.card.metrics["bundled_models"]
    assert set(compared) == others and len(others) >= 10
    best = result.card.metrics["best_bundled"]
    assert best["of"] == len(others) and best["vote_accuracy@10"] == max(
        s["vote_accuracy@10"] for s in compared.values())
    monkeypatch.setattr(folder_run, "COMPARE_MAX_PATCHES", 11)
    small = train_from_folder(KATHER, "mth", 16, tmp_path / "b", keep_held_out=True, **TINY)
    assert "bundled_models" not in small.report
    assert small.report["bundled_models_skipped"].startswith("the folder has 12 patches")


def test_cli_note_for_a_better_bundled_model_exits_zero(tmp_path, capsys, monkeypatch):
    import hashview.training.report as report

    monkeypatch.setattr(report, "verdict", lambda trained, start: ("ok", []))
    monkeypatch.setattr(report, "outdone_by", lambda trained, other: True)
    argv = ["train", str(KATHER), "--arch", "mth", "--bits", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--keep-held-out",
            "--option", "steps_per_epoch=1", "--out", str(tmp_path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "best of 12 other bundled models as they are" in out
    assert "NOTE: model mth-16-kather: bundled model" in err and "exit 4" not in err


def test_a_damaged_bundled_model_is_named_and_the_training_still_ends(tmp_path, monkeypatch):
    import hashview.models as models
    from hashview.training.report import report_lines

    real = models.load_model

    def load(name, *args, **kwargs):
        if name == "dch-16":
            raise ModelError("resources/models/dch-16.safetensors", "truncated file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", load)
    result = train_from_folder(KATHER, "mth", 16, tmp_path, keep_held_out=True, **TINY)
    failed = result.report["bundled_models_failed"]
    assert list(failed) == ["dch-16"] and "truncated file" in failed["dch-16"]
    assert "dch-16" not in result.report["bundled_models"] and result.model_path.is_file()
    assert any(line.startswith("  bundled model dch-16 could not be compared: ")
               for line in report_lines(result.report, "t"))
