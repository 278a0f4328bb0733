"""Stain transfer, cross-stain and cross-folder evaluation, exposure tags and their CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import KATHER
from hashview.cli import main
from hashview.errors import HashViewError
from hashview.generalisation import evaluate_cross_folder, evaluate_cross_stain, exposure
from hashview.models.lineage import lineage_split, seen_datasets, start_record
from hashview.splits import Split
from hashview.stain import StainTransfer, fit_stain_target

MODEL = "dch-16"  # the smallest bundled model: 16 bits at 64 px


def _synthetic_he(seed: int = 0, side: int = 96) -> np.ndarray:
    """Pink-purple H&E-like noise: a stain target unlike the Kather tiles."""
    rng = np.random.default_rng(seed)
    haematoxylin = rng.random((side, side, 1)) * 1.5
    eosin = rng.random((side, side, 1)) * 1.0
    od = haematoxylin * np.array([0.65, 0.70, 0.29]) + eosin * np.array([0.07, 0.99, 0.11])
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def target_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("stain") / "target.png"
    Image.fromarray(_synthetic_he()).save(path)
    return path


def _kather_tile() -> np.ndarray:
    return np.asarray(Image.open(next(KATHER.glob("01_TUMOR/*.tif"))).convert("RGB"))


def test_restain_changes_pixels_and_keeps_shape_and_dtype(target_png):
    tile = _kather_tile()
    for method in ("macenko", "reinhard"):
        transfer = fit_stain_target(target_png, method=method)
        out = transfer.restain(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - tile).mean() > 5
        assert transfer.fallbacks == 0 and transfer.counts[method] == 1


def test_background_is_left_as_it_is_and_a_failing_macenko_falls_back_to_reinhard(
        target_png, monkeypatch):
    transfer = fit_stain_target(target_png)
    near_white = np.clip(np.random.default_rng(1).normal(245, 3, (64, 64, 3)), 0, 255)
    near_white = near_white.astype(np.uint8)
    out = transfer.restain(near_white)
    assert np.array_equal(out, near_white) and out is not near_white
    assert transfer.counts["no_tissue"] == 1 and transfer.counts["macenko"] == 0

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("singular stain matrix")
    monkeypatch.setattr(transfer._macenko, "normalize", singular)
    tile = _kather_tile()
    out = transfer.restain(tile)
    assert out.shape == tile.shape and np.abs(out.astype(int) - tile).mean() > 5
    assert transfer.counts["reinhard_fallback"] == 1 and transfer.fallbacks == 1
    assert transfer.fallback_reasons == {"singular stain matrix": 1}


def test_folder_and_region_targets_and_unreadable_ones(tmp_path, target_png):
    transfer = fit_stain_target(KATHER, sample=3, seed=0)
    assert transfer.restain(_kather_tile()).shape == _kather_tile().shape
    fit_stain_target(f"{target_png}@10,10,50,50")  # a region of an image (or slide)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    for spec in (bad, tmp_path / "missing.svs"):
        with pytest.raises(HashViewError) as error:
            fit_stain_target(spec)
        assert "\n" not in str(error.value) and spec.name in str(error.value)
    with pytest.raises(HashViewError, match="stain target"):
        StainTransfer(np.full((32, 32, 3), 255, np.uint8), name="white")


class _NoOp:
    """A stain 'transfer' that returns each patch as it is: cross-stain must equal in-set."""
    name, method = "identity", "none"

    def __init__(self):
        from collections import Counter
        self.counts = Counter()

    def restain(self, rgb):
        self.counts["none"] += 1
        return rgb


def test_cross_stain_with_an_identity_transfer_has_zero_gap(target_png, monkeypatch):
    import hashview.stain as stain
    monkeypatch.setattr(stain, "StainTransfer", _NoOp)  # fit_targets passes fitted ones through
    cache = {}
    result = evaluate_cross_stain(MODEL, KATHER, {"same": _NoOp()}, seeds=(0, 1), device="cpu",
                                  cache=cache)
    same = result["targets"]["same"]
    assert same["gap"] == {"map": 0.0, "vote_accuracy@10": 0.0}
    assert same["mean"]["n_queries"] == 4 and result["in_set"]["seeds"] == [0, 1]
    assert len(cache) == 1 and same["restain"] == {"none": 12}
    json.dumps(result)


def test_cross_stain_to_a_real_target_reports_a_gap(target_png):
    result = evaluate_cross_stain(MODEL, KATHER, {"synthetic": target_png}, seeds=(0,),
                                  device="cpu")
    target = result["targets"]["synthetic"]
    assert target["restain"].get("macenko", 0) + target["restain"].get("reinhard_fallback", 0) == 12
    in_set = result["in_set"]["mean"]
    assert target["gap"]["map"] == pytest.approx(in_set["map"] - target["mean"]["map"])
    assert target["mean"]["map"] != in_set["map"]


def test_cross_folder_drops_and_counts_classes_the_database_lacks(tmp_path):
    database = tmp_path / "db"
    for label in ("01_TUMOR", "02_STROMA"):
        shutil.copytree(KATHER / label, database / label)
    result = evaluate_cross_folder(MODEL, database, KATHER, device="cpu")
    assert result["dropped"] == {"04_LYMPHO": 3, "07_ADIPOSE": 3} and result["n_dropped"] == 6
    assert result["queries"]["n_kept"] == 6 and result["mean"]["n_queries"] == 6
    assert result["shared_classes"] == ["01_TUMOR", "02_STROMA"]
    with pytest.raises(HashViewError, match="no class name in common"):
        evaluate_cross_folder(MODEL, database, _only(tmp_path, "04_LYMPHO"), device="cpu")


def _only(tmp_path, label):
    folder = tmp_path / "only"
    shutil.copytree(KATHER / label, folder / label)
    return folder


def test_exposure_from_the_card_and_its_init_from_chain():
    from hashview.models import list_models
    cards = {c.name: c for c in list_models()}
    kather, idc = cards["mth-64"], cards["mth-64-idc"]
    assert exposure(kather, "kather2016_subset") == "in-set"
    assert exposure(kather, "oral_oscc") == "zero-shot"
    assert exposure(idc, "idc_breast", "patient") == "new patients"
    child = cards["mth-64-from-idc"]  # fine-tuned on Kather from mth-64-idc, which saw IDC
    assert seen_datasets(child) == {"kather2016_subset", "idc_breast"}
    assert exposure(child, "idc_breast", "patient") == "new patients"
    assert lineage_split(child, "idc_breast").protocol == "patient"
    orphan = dataclasses.replace(child, training={"config": {"init_from": "no-such-model"}},
                                 split=None)
    assert exposure(orphan, "idc_breast") == "unknown"
    # a model trained on two labelled sets at once records the second split in its training
    joint = dataclasses.replace(kather, training={"splits": [idc.split]})
    assert exposure(joint, "idc_breast", "patient") == "new patients"
    assert lineage_split(joint, "idc_breast").train == Split.from_dict(idc.split).train
    assert lineage_split(kather, "idc_breast") is None


def test_a_card_keeps_what_its_start_had_seen_when_the_start_is_gone():
    from hashview.models import list_models
    cards = {c.name: c for c in list_models()}
    child, idc = cards["mth-64-from-idc"], cards["mth-64-idc"]
    record = start_record(idc)
    assert record["datasets"] == ["idc_breast"] and record["splits"] == [idc.split]
    gone = "/no/such/folder/encoder.safetensors"
    moved = dataclasses.replace(child, training={
        "config": {"init_from": gone}, "init_from": {"model": "encoder", "seen": record}})
    assert seen_datasets(moved) == {"kather2016_subset", "idc_breast"}
    assert exposure(moved, "idc_breast", "patient") == "new patients"
    assert lineage_split(moved, "idc_breast").train == Split.from_dict(idc.split).train
    # no record, or a malformed one: the start's data are unknown, never assumed unseen
    for seen in (None, {"datasets": "idc_breast", "splits": []}, {"datasets": [1], "splits": []}):
        bare = dataclasses.replace(moved, training={"config": {"init_from": gone},
                                                    "init_from": {"seen": seen}})
        assert exposure(bare, "idc_breast") == "unknown", seen


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_stain_target_and_queries(capsys, target_png, tmp_path):
    code, out, err = _run(capsys, "eval", KATHER, "-m", MODEL, "--seeds", "0", "--device", "cpu",
                          "--stain-target", f"synth={target_png}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].lstrip().startswith("in-set") and "n=4 queries" in lines[1]
    assert lines[2].lstrip().startswith("stain synth") and "gap" in lines[3]

    code, out, err = _run(capsys, "eval", KATHER, "-m", MODEL, "--queries", KATHER,
                          "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["queries"]["n_kept"] == 12

    code, out, err = _run(capsys, "eval", KATHER, "-m", MODEL, "--stain-target",
                          tmp_path / "nowhere.png")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "nowhere.png" in err


def test_a_start_with_the_models_own_name_still_counts(tmp_path):
    """A hash layer refitted on an earlier stage of the same model (same name, other weights):
    the stage's training data are the model's too."""
    from hashview.models.cards import ModelCard
    stage = ModelCard("m", "mth", 64, 64, sha256="a" * 64, training={
        "config": {"dataset": "idc_breast"}})
    (tmp_path / "m.json").write_text(stage.to_json())
    refit = ModelCard("m", "mth", 64, 64, sha256="b" * 64, trained=True, training={
        "config": {"dataset": "kather2016_subset", "init_from": str(tmp_path / "m.safetensors")}})
    assert seen_datasets(refit) == {"kather2016_subset", "idc_breast"}
    assert exposure(refit, "idc_breast", "patient") == "new patients"
