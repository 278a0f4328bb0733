"""Refitting only the hash layer of a trained start on a small folder (``method="head"``, the
default of ``hashview train`` from a start): the head's weights as the nets expose them, what
the fit changes and what it keeps, and the defaults that choose it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hashview.errors import ModelError
from hashview.models import build_model, load_model
from hashview.slides.folders import scan_patch_folder
from hashview.training import TrainConfig, train, train_from_folder
from hashview.training.defaults import start_recipe

KATHER = Path(__file__).resolve().parent / "data" / "kather"  # 4 classes x 3 tiles of 150 px
START = "mth-64-general"


def _head_input(net, x):
    captured = []
    hook = net.hash_head().register_forward_hook(lambda _m, i, _o: captured.append(i[0]))
    with torch.no_grad():
        logits = net.hash_logits(x)
    hook.remove()
    return captured[0], logits


@pytest.mark.parametrize("arch,size", [("mth", 64), ("hatdh", 64), ("dch", 64)])
def test_hash_head_weights_give_the_logits_and_set_hash_head_replaces_them(arch, size):
    torch.manual_seed(0)
    net = build_model(arch, 16, input_size=size)
    norm = getattr(net, "lbe_norm", None)
    if isinstance(norm, torch.nn.BatchNorm1d):  # statistics a trained DCH would have
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        torch.nn.init.uniform_(norm.weight, 0.5, 2)
        torch.nn.init.uniform_(norm.bias, -1, 1)
    net.eval()
    x = torch.randn(3, 3, size, size)
    features, logits = _head_input(net, x)
    weight, bias = net.hash_head_weights()
    torch.testing.assert_close(features @ weight.T + bias, logits, rtol=1e-4, atol=1e-4)
    new_weight, new_bias = torch.randn_like(weight), torch.randn_like(bias)
    net.set_hash_head(new_weight, new_bias)
    torch.testing.assert_close(_head_input(net, x)[1], features @ new_weight.T + new_bias,
                               rtol=1e-4, atol=1e-4)


def test_architectures_without_one_hash_layer_say_so():
    assert build_model("lgffem", 16).hash_head() is None


def _config(**kw) -> TrainConfig:
    base = dict(arch="mth", bits=64, epochs=1, batch_size=8, input_size=64, seed=0,
                device="cpu", init_from=START, method="head")
    return TrainConfig(**{**base, **kw})


def _mean_distances(codes: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean Hamming distance between patches of one class and of different classes."""
    bits = np.unpackbits(codes, axis=1).astype(int)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(dist[same & off_diagonal].mean()), float(dist[~same].mean())


def test_head_fit_changes_only_the_hash_layer_and_pulls_classes_together(tmp_path):
    from hashview.evaluation import encode_folder_split

    entries = scan_patch_folder(KATHER)
    result = train(_config(), entries, tmp_path)
    start = load_model(START)
    trained = result.net.state_dict()
    changed = {name for name, tensor in start.net.state_dict().items()
               if not torch.allclose(trained[name].float(), tensor.float(), atol=1e-3)}
    assert changed == {"hash_layer.weight", "hash_layer.bias"}
    fit = result.card.training["head_fit"]
    assert fit["n_images"] == len(entries) and fit["n_views"] == 8
    assert len(result.history) == fit["epochs"] and result.history[-1] < result.history[0]
    labels = np.array([e.label for e in entries])
    before = _mean_distances(encode_folder_split(start, entries, "cpu"), labels)
    after = _mean_distances(encode_folder_split(load_model(result.model_path), entries, "cpu"),
                            labels)
    # other classes' codes move away from a patch relative to its own class's codes
    assert after[1] - after[0] > before[1] - before[0] + 4


def test_head_fit_needs_a_start_and_a_single_hash_layer(tmp_path):
    with pytest.raises(ModelError, match="init_from"):
        _config(init_from=None).resolved()
    with pytest.raises(ModelError, match="method must be one of"):
        _config(method="heads").resolved()
    for choosing_an_epoch in ({"keep_best_epoch": True}, {"inner_val_fraction": 0.3}):
        with pytest.raises(ModelError, match="method 'head' has none"):
            _config(**choosing_an_epoch).resolved()
        _config(method="network", **choosing_an_epoch).resolved()  # whole network: fine


def test_folder_runs_refit_the_head_by_default_and_train_the_network_from_scratch(tmp_path):
    tiny = dict(epochs=1, batch_size=8, steps_per_epoch=1, device="cpu", keep_held_out=True)
    result = train_from_folder(KATHER, "mth", 64, tmp_path / "default", **tiny)
    assert result.card.training["config"]["method"] == "head"
    assert "head_fit" in result.card.training and result.report["held_out"]["n_queries"] == 4
    scratch = train_from_folder(KATHER, "mth", 64, tmp_path / "scratch", from_scratch=True,
                                input_size=64, **tiny)
    assert scratch.card.training["config"]["method"] == "network"
    asked = train_from_folder(KATHER, "mth", 64, tmp_path / "asked", method="network", **tiny)
    assert "head_fit" not in asked.card.training and len(asked.history) == 1


def test_starts_of_architectures_without_a_head_fit_keep_training_the_network():
    # asked of the start's net (HashingNet.hash_head), not of a list of architecture names
    from hashview.models import ModelCard
    from hashview.models.store import LoadedModel

    assert start_recipe(load_model(START))["method"] == "head"
    for arch in ("lgffem", "dafh"):
        net = build_model(arch, 16, input_size=64)
        start = LoadedModel(net, ModelCard(name=f"{arch}-test", arch=arch, bits=16,
                                           input_size=64))
        assert "method" not in start_recipe(start)


def test_a_cancelled_head_fit_in_the_final_run_resumes_without_redoing_the_held_out_run(
        tmp_path):
    from hashview.progress import Cancelled

    seen = {"evaluated": False}

    def cancel_in_the_final_fit(event):
        seen["evaluated"] |= event.stage == "evaluating"
        if seen["evaluated"] and "hash head" in event.message:
            raise Cancelled()

    tiny = dict(epochs=1, batch_size=8, device="cpu")
    with pytest.raises(Cancelled):
        train_from_folder(KATHER, "mth", 64, tmp_path, progress=cancel_in_the_final_fit, **tiny)
    held = tmp_path / "held-out" / "mth-64-kather.safetensors"
    stamp = held.stat().st_mtime_ns
    assert not (tmp_path / "mth-64-kather.safetensors").exists()
    result = train_from_folder(KATHER, "mth", 64, tmp_path, resume=True, **tiny)
    assert held.stat().st_mtime_ns == stamp
    assert result.card.training["head_fit"]["n_images"] == 12


def test_cli_says_the_head_was_refitted_and_whole_network_trains_every_layer(tmp_path, capsys):
    from hashview.cli import main

    base = ["train", str(KATHER), "--arch", "mth", "--bits", "64", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--keep-held-out"]
    assert main(base + ["--out", str(tmp_path / "head")]) == 0
    assert "only the hash layer was refitted, on mth-64-general's features" in "".join(
        capsys.readouterr())
    assert load_model(tmp_path / "head").card.training["config"]["method"] == "head"
    assert main(base + ["--whole-network", "--option", "steps_per_epoch=1", "--out",
                        str(tmp_path / "net")]) in (0, 3)
    assert "only the hash layer" not in "".join(capsys.readouterr())
    assert load_model(tmp_path / "net").card.training["config"]["method"] == "network"


def test_a_chosen_start_needs_no_inner_validation_and_its_head_is_refitted(tmp_path,
                                                                            monkeypatch):
    import hashview.training.folder_run as folder_run

    real = folder_run.model_report

    def mth_64_retrieves_best(loaded, *args, **kwargs):  # above any real mAP
        scores = real(loaded, *args, **kwargs)
        return {**scores, "map": 2.0} if loaded.card.name == "mth-64" else scores

    monkeypatch.setattr(folder_run, "model_report", mth_64_retrieves_best)
    result = train_from_folder(KATHER, "mth", 64, tmp_path, device="cpu", keep_held_out=True,
                               choose_start=True)
    assert result.card.training["init_from"]["model"] == "mth-64"
    assert "mth-64-general" in result.report["start_candidates"]
    assert result.card.training["head_fit"]["n_images"] == 8  # the whole training part
