"""The recipe scripts (benchmarks/train_models.py, train_quick.py) train what their recipes say,
not what a user's own-folder run does by default (start from the general model, refit only the
hash layer, retrain on every patch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hashview.training import train_from_folder

ROOT = Path(__file__).resolve().parents[1]
KATHER = ROOT / "tests" / "data" / "kather"
TINY = dict(epochs=1, batch_size=8, steps_per_epoch=1, device="cpu", input_size=64)


def _train_models():
    spec = importlib.util.spec_from_file_location("train_models_script",
                                                  ROOT / "benchmarks" / "train_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_recipe_without_a_start_trains_from_scratch_on_its_split(tmp_path):
    as_written = _train_models().as_written
    result = train_from_folder(KATHER, "mth", 16, tmp_path, **as_written(TINY))
    card = result.card
    assert "init_from" not in card.training
    assert card.training["config"]["method"] == "network"
    assert card.split is not None and card.split["seed"] == 0  # judged on its held-out part
    assert not (tmp_path / "held-out").exists()  # no final retrain on every tile


def test_a_recipe_with_a_start_trains_every_layer_from_it(tmp_path):
    as_written = _train_models().as_written
    result = train_from_folder(KATHER, "mth", 16, tmp_path,
                               **as_written({**TINY, "init_from": "mth-64-general"}))
    card = result.card
    assert card.training["init_from"]["model"] == "mth-64-general"
    assert card.training["config"]["method"] == "network" and "head_fit" not in card.training
    assert card.split is not None


def test_a_set_value_the_training_config_refuses_is_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kather2016_subset").symlink_to(KATHER)
    code = _train_models().main(["mth-64", "--splits", "0", "--set", "augment_options=[1]",
                                 "--data-root", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("train_models.py: mth-64: invalid training "
                                               "config: augment_options must be dict, got [1]")
