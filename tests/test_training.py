"""Training: losses by hand, HED colour space, seeded augmentation, the loop (loss goes down,
checkpoint/resume reproduces a straight run, cancel, save/reload)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hashview.encode import Encoder
from hashview.errors import ModelError
from hashview.models import LoadedModel, load_model
from hashview.progress import Cancelled
from hashview.slides.folders import scan_patch_folder
from hashview.training import TrainConfig, train, train_from_folder
from hashview.training.data import (RGB_FROM_HED, AugmentConfig, BalancedBatchSampler,
                                    PatchesInMemory, augment, epoch_generator, hed_to_rgb,
                                    rgb_to_hed)
from hashview.training.losses import (DCHLoss, HATDHLoss, form_triplets, quantization_error,
                                      squared_distances)
from hashview.training.loop import _Run

KATHER = Path(__file__).resolve().parent / "data" / "kather"

SIZE = 64  # tiny input keeps every test fast on 2 CPU cores


@pytest.fixture(scope="module")
def entries():
    return scan_patch_folder(KATHER)  # 4 classes x 3 real Kather tiles


@pytest.fixture(scope="module")
def dataset(entries):
    return PatchesInMemory(entries, SIZE)


def tiny_config(**kw) -> TrainConfig:
    base = dict(bits=16, epochs=2, batch_size=8, input_size=SIZE, steps_per_epoch=2, seed=3,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- losses by hand

CODES = torch.tensor([[0.5, -0.5], [0.3, 0.1], [-0.2, 0.4]])
LABELS = torch.tensor([0, 0, 1])


def test_quantization_error_sign_zero_is_minus_one_and_stop_gradient():
    h = torch.tensor([[0.0, 0.5]], requires_grad=True)
    q = quantization_error(h)
    assert q.item() == pytest.approx(1.0 + 0.25)  # sign(0) = -1: (-1 - 0)^2
    q.sum().backward()
    # d/dh (s - h)^2 with s constant = -2 (s - h)
    assert h.grad[0].tolist() == pytest.approx([2.0, -1.0])


def test_hatdh_loss_two_bit_codes_by_hand():
    # batch-hard picks (0, 1, 2) and (1, 0, 2); sample 2 has no positive. Squared distances:
    d01, d02, d12 = 0.2**2 + 0.6**2, 0.7**2 + 0.9**2, 0.5**2 + 0.3**2  # 0.40, 1.30, 0.34
    q0, q1, q2 = 0.5**2 + 0.5**2, 0.7**2 + 0.9**2, 0.8**2 + 0.6**2     # 0.50, 1.30, 1.00
    l1, l2, l3, beta = 0.3, 0.2, 0.5, 0.1
    loss = HATDHLoss(l1, l2, l3, beta, mode="batch-hard")
    t1 = max(d01 - d02 + l1, 0) + max(d01 - l2, 0) + max(l3 - d02, 0) + beta * (q0 + q1 + q2)
    t2 = max(d01 - d12 + l1, 0) + max(d01 - l2, 0) + max(l3 - d12, 0) + beta * (q1 + q0 + q2)
    value, parts = loss(CODES, LABELS)
    assert parts["triplets"] == 2
    assert value.item() == pytest.approx((t1 + t2) / 2, abs=1e-6)  # = 0.74
    assert value.item() == pytest.approx(0.74, abs=1e-6)
    # normalise_by_bits: every squared norm divided by L = 2
    norm = HATDHLoss(l1, l2, l3, beta, mode="batch-hard", normalise_by_bits=True)
    n1 = max(d01 / 2 - d02 / 2 + l1, 0) + max(d01 / 2 - l2, 0) + max(l3 - d02 / 2, 0) \
        + beta * (q0 + q1 + q2) / 2
    n2 = max(d01 / 2 - d12 / 2 + l1, 0) + max(d01 / 2 - l2, 0) + max(l3 - d12 / 2, 0) \
        + beta * (q0 + q1 + q2) / 2
    assert norm(CODES, LABELS)[0].item() == pytest.approx((n1 + n2) / 2, abs=1e-6)  # = 0.47


def test_hatdh_paper_params_per_dataset():
    kather = HATDHLoss.for_dataset("kather")
    assert (kather.lambda1, kather.lambda2, kather.lambda3, kather.beta) == (0.3, 0.2, 0.2, 0.01)
    idc = HATDHLoss.for_dataset("idc_breast")
    assert (idc.lambda1, idc.lambda2, idc.lambda3, idc.beta) == (0.4, 0.3, 0.4, 0.1)


def test_triplet_mining_modes():
    x = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    dist = squared_distances(x)
    triplets = lambda mode: sorted(zip(*(t.tolist() for t in form_triplets(labels, mode, dist))))
    assert triplets("batch-hard") == [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]
    # semi-hard: closest negative farther than the positive, else the farthest negative
    assert triplets("semi-hard") == [(0, 1, 2), (1, 0, 3), (2, 3, 0), (3, 2, 1)]
    g = torch.Generator().manual_seed(0)
    labels6 = torch.tensor([0, 0, 0, 1, 1, 2])
    a, p, n = form_triplets(labels6, "random", generator=g)
    assert a.tolist() == [0, 1, 2, 3, 4]  # sample 5 has no positive
    assert all(labels6[i] == labels6[j] and i != j for i, j in zip(a, p))
    assert all(labels6[i] != labels6[k] for i, k in zip(a, n))
    again = form_triplets(labels6, "random", generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(u, v) for u, v in zip((a, p, n), again))


def test_dch_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    codes = torch.tensor([[0.5, -0.25], [0.0, 0.9]])
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    quant = ((0.5**2 + 0.75**2) + (1.0 + 0.1**2)) / 2  # sign(0) = -1; summed over bits
    value, _ = DCHLoss(gamma=0.1)(logits, codes, labels)
    assert value.item() == pytest.approx(ce + 0.1 / 2 * quant, abs=1e-6)
    assert DCHLoss().gamma == 1e-4  # "10e-4" in the paper means 10^-4


# ---------------------------------------------------------------- data

def test_hed_round_trip_and_pure_stain(dataset):
    rgb = torch.from_numpy(dataset.images[:4]).permute(0, 3, 1, 2).double() / 255
    back = hed_to_rgb(rgb_to_hed(rgb))
    assert torch.allclose(back, rgb.clamp_min(1e-6), atol=1e-9)
    # A pure-haematoxylin pixel (OD = the H stain vector) deconvolves to (1, 0, 0).
    pure = torch.exp(-RGB_FROM_HED[0]).view(1, 3, 1, 1)
    expected = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(rgb_to_hed(pure).flatten(), expected, atol=1e-9)
    rgb32 = rgb.float()
    assert (hed_to_rgb(rgb_to_hed(rgb32)) - rgb32).abs().max() < 1e-4


def test_augment_is_seeded_and_in_range(dataset):
    x = torch.from_numpy(dataset.images[:6]).permute(0, 3, 1, 2).float() / 255
    a = augment(x, epoch_generator(0, 1, 1))
    b = augment(x, epoch_generator(0, 1, 1))
    c = augment(x, epoch_generator(0, 2, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 0.005  # it does change the images


_COLOUR_ONLY = dict(flips_rotations=False, max_zoom=1.0, hed_scale=0, hed_shift=0,
                   brightness=0, contrast=0)


def test_colour_jitter_keeps_grey_grey_and_greyscale_removes_colour():
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    grey = x[:, :1].expand(-1, 3, -1, -1).clone()
    hue_only = AugmentConfig(**_COLOUR_ONLY, hue=0.3, saturation=0.5)
    # A grey pixel has no hue or saturation: rotating and scaling them leaves it as it is.
    assert (augment(grey, torch.Generator().manual_seed(1), hue_only) - grey).abs().max() < 1e-5
    moved = augment(x, torch.Generator().manual_seed(1), hue_only)
    assert (moved - x).abs().mean() > 0.01 and moved.min() >= 0 and moved.max() <= 1
    always_grey = augment(x, torch.Generator().manual_seed(1),
                          AugmentConfig(**_COLOUR_ONLY, grayscale=1.0))
    assert (always_grey - always_grey[:, :1]).abs().max() < 1e-5
    never = augment(x, torch.Generator().manual_seed(1), AugmentConfig(**_COLOUR_ONLY))
    assert torch.equal(never, x)


@pytest.mark.parametrize("options, message", [
    ({"hue": 0.9}, "hue <= 0.5"), ({"grayscale": -1}, "grayscale must be a number >= 0"),
    ({"sharpness": 1}, "unknown augmentation option 'sharpness'")])
def test_augment_options_are_checked_before_training(options, message):
    with pytest.raises(ModelError, match=message):
        TrainConfig(arch="mth", augment_options=options).resolved()


def test_augment_geometry_is_an_exact_dihedral_transform():
    x = torch.rand(16, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    only_geometry = AugmentConfig(max_zoom=1.0, hed_scale=0, hed_shift=0, brightness=0,
                                  contrast=0)
    y = augment(x, torch.Generator().manual_seed(1), only_geometry)
    used = set()
    for i in range(len(x)):
        candidates = [torch.rot90(x[i].flip(-1) if f else x[i], k, dims=(-2, -1))
                      for f in (0, 1) for k in range(4)]
        errors = [(c - y[i]).abs().max().item() for c in candidates]
        assert min(errors) < 1e-5
        used.add(errors.index(min(errors)))
    assert len(used) >= 4  # several transforms drawn


def test_dataset_and_balanced_sampler(dataset):
    assert dataset.images.shape == (12, SIZE, SIZE, 3) and dataset.images.dtype == np.uint8
    assert dataset.class_names == ["01_TUMOR", "02_STROMA", "04_LYMPHO", "07_ADIPOSE"]
    sampler = BalancedBatchSampler(dataset.labels, 8, torch.Generator().manual_seed(0))
    assert (sampler.p, sampler.k, len(sampler)) == (4, 2, 2)
    for batch in sampler:
        counts = np.bincount(dataset.labels[batch], minlength=4)
        assert counts.tolist() == [2, 2, 2, 2]
    # 2 batches x 2 draws per class walk each class's shuffled 3 images (then wrap around)
    assert {i for batch in sampler for i in batch} == set(range(12))


# ---------------------------------------------------------------- the loop

@pytest.mark.parametrize("arch,extra", [("hatdh", {}), ("hatdh", {"normalise_by_bits": True,
                                                                  "triplet_mode": "semi-hard",
                                                                  "aux_ce_weight": 0.5}),
                                        ("dch", {"pretrain_epochs": 1}),
                                        ("dch", {"pretrain_epochs": 0}),
                                        ("dafh", {}), ("mth", {})])
def test_steps_lower_the_loss_on_a_fixed_batch(dataset, arch, extra):
    cfg = tiny_config(arch=arch, augment=False, schedule="constant", epochs=2, **extra).resolved()
    run = _Run(cfg, dataset, torch.device("cpu"))
    run.gen_triplets = torch.Generator().manual_seed(0)
    pixels, labels = torch.from_numpy(dataset.images), torch.from_numpy(dataset.labels)
    before = run.batch_loss(pixels, labels)
    for _ in range(10):
        run.step(pixels, labels)
    after = run.batch_loss(pixels, labels)
    assert after < 0.8 * before, (run.stage, before, after)


def _net_tensors(out_dir):
    return {k: v for k, v in load_file(out_dir / "checkpoint.safetensors").items()
            if k.startswith(("net.", "head.", "class_layer.", "projection."))}


@pytest.mark.parametrize("arch,extra,cancel", [
    ("hatdh", {"aux_ce_weight": 0.5}, "epoch 1/2 loss"),          # between epochs
    ("hatdh", {"triplet_mode": "batch-hard"}, "epoch 2/2 batch 1/2"),  # mid-epoch
    ("dch", {"pretrain_epochs": 1}, "epoch 1/2 loss"),              # across the DCH stages
    ("dch", {"pretrain_epochs": 1, "ema_decay": 0.9, "label_smoothing": 0.1},
     "epoch 2/2 batch 1/"),                                          # EMA restored mid-epoch
    ("mth", {}, "epoch 2/2 batch 1/"),         # two named extra modules restored mid-epoch
])
def test_resume_matches_an_uninterrupted_run(entries, tmp_path, arch, extra, cancel):
    cfg = tiny_config(arch=arch, **extra)
    straight = train(cfg, entries, tmp_path / "straight")

    def stop(p):
        if p.message.startswith(cancel):
            raise Cancelled()
    with pytest.raises(Cancelled):
        train(cfg, entries, tmp_path / "resumed", progress=stop)
    assert not (tmp_path / "resumed" / straight.model_path.name).exists()
    resumed = train(cfg, entries, tmp_path / "resumed", resume=True)
    a, b = _net_tensors(tmp_path / "straight"), _net_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    assert resumed.card.sha256 == straight.card.sha256
    assert resumed.history == pytest.approx(straight.history, abs=1e-6)


def test_ema_model_is_saved_and_differs_from_the_raw_weights(entries, tmp_path):
    result = train(tiny_config(ema_decay=0.5), entries, tmp_path)
    raw = _net_tensors(tmp_path)  # the checkpoint keeps the raw (optimised) weights
    saved = {f"net.{k}": v for k, v in result.net.state_dict().items()}
    differs = [k for k, v in saved.items() if v.is_floating_point()
               and not torch.allclose(v.float(), raw[k].float().half().float(), atol=1e-4)]
    assert differs
    with pytest.raises(ModelError, match="ema_decay"):
        tiny_config(ema_decay=1.0).resolved()


def test_cancel_writes_a_loadable_checkpoint(entries, tmp_path):
    def stop(p):
        if "batch 1/" in p.message:
            raise Cancelled()
    with pytest.raises(Cancelled):
        train(tiny_config(), entries, tmp_path, progress=stop)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (meta["epoch"], meta["batch"]) == (0, 1)
    optim = torch.load(tmp_path / "checkpoint-optim.pt", weights_only=True)
    assert optim["optimizer"]["state"] and "last_epoch" in optim["scheduler"]
    with pytest.raises(ModelError, match="different config"):
        train(tiny_config(lr=0.5), entries, tmp_path, resume=True)


def test_saved_model_reloads_and_encodes_like_the_trained_net(entries, tmp_path):
    events = []
    result = train(tiny_config(epochs=1), entries, tmp_path, progress=events.append)
    assert events[-1].stage == "training" and (events[-1].done, events[-1].total) == (1, 1)
    assert len(result.history) == 1 and result.seconds > 0
    loaded = load_model(result.model_path)
    card = loaded.card
    assert card.trained and card.class_names == sorted({e.label for e in entries})
    assert card.training["config"]["arch"] == "hatdh" and card.training["epochs"] == 1
    assert card.metrics == {} and card.training["data"]["images"] == 12
    images = [Image.open(e.path).convert("RGB") for e in entries]
    from_file = Encoder(loaded, device="cpu").encode_relaxed(images)
    in_memory = Encoder(LoadedModel(result.net, result.card), device="cpu").encode_relaxed(images)
    np.testing.assert_array_equal(from_file, in_memory)


def test_train_from_folder_saves_the_split(tmp_path):
    result = train_from_folder(KATHER, "dch", 8, tmp_path, epochs=2, batch_size=8, seed=1,
                               input_size=SIZE, steps_per_epoch=1, device="cpu",
                               from_scratch=True, keep_held_out=True)
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["train"]) == 8 and len(split["test"]) == 4
    assert result.card.split["train"] == split["train"]
    assert result.card.training["data"]["images"] == 8


def test_init_from_starts_from_a_trained_model_and_refuses_another_arch(entries, tmp_path):
    from hashview.training.init import init_weights
    from hashview.models import build_model

    first = train(tiny_config(arch="mth", epochs=1), entries, tmp_path / "a")
    fresh = build_model("mth", 16, input_size=SIZE)
    summary = init_weights(fresh, "mth", 16, str(first.model_path))
    trained = load_model(first.model_path).net.state_dict()
    for name, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0)
    assert summary["tensors_copied"] == len(trained) and summary["tensors_kept_fresh"] == []
    # a run started from it records where it started, and its first loss is the trained one's
    second = train(tiny_config(arch="mth", epochs=1, init_from=str(first.model_path)), entries,
                   tmp_path / "b")
    assert second.card.training["init_from"]["sha256"] == first.card.sha256
    # and what the start had seen, which stays known where the start's file is gone
    from hashview.models.lineage import seen_datasets, start_record
    recorded = second.card.training["init_from"]["seen"]
    assert recorded["datasets"] == sorted(seen_datasets(first.card)) != []
    assert recorded == start_record(first.card)
    scratch = train(tiny_config(arch="mth", epochs=1), entries, tmp_path / "c")
    assert second.history[0] < scratch.history[0]
    # another code length: everything but the hash layer is copied
    other = init_weights(build_model("mth", 32, input_size=SIZE), "mth", 32,
                         str(first.model_path))
    assert other["hash_layer_fresh"] and other["tensors_kept_fresh"] == [
        "hash_layer.weight", "hash_layer.bias"]
    with pytest.raises(ModelError, match="the run trains dch-16"):
        train(tiny_config(arch="dch", init_from=str(first.model_path)), entries, tmp_path / "d")


def test_adamw_is_available_with_decoupled_weight_decay(dataset):
    cfg = tiny_config(arch="dch", optimizer="adamw", weight_decay=0.05).resolved()
    assert cfg.lr == 1e-3  # AdamW's default rate where the objective does not set one
    run = _Run(cfg, dataset, torch.device("cpu"))
    assert type(run.optimizer) is torch.optim.AdamW
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ModelError, match="unknown optimizer"):
        tiny_config(optimizer="sgd").resolved()
    # LGFFEM's defaults are the paper's AdamW at 5e-3 (decay 0.05, ours); they go with AdamW only
    paper = TrainConfig(arch="lgffem").resolved()
    assert (paper.optimizer, paper.lr, paper.weight_decay) == ("adamw", 5e-3, 0.05)
    adam = TrainConfig(arch="lgffem", optimizer="adam").resolved()
    assert (adam.lr, adam.weight_decay) == (1e-3, 0.0)
    mth = TrainConfig(arch="mth").resolved()
    assert (mth.optimizer, mth.lr, mth.weight_decay) == ("adam", 1e-3, 0.0)


# ---------------------------------------------------------------- objectives and config

def test_every_registered_model_with_an_objective_is_trainable():
    from hashview.models import available_architectures
    from hashview.training.objectives import objective_class, trainable_architectures

    archs = trainable_architectures()
    assert {"hatdh", "dch", "dafh", "mth"} <= set(archs) <= set(available_architectures())
    assert all(objective_class(a).arch == a and archs[a] for a in archs)
    with pytest.raises(ModelError, match="training supports"):
        TrainConfig(arch="resnet").resolved()


def test_objective_options_defaults_overrides_and_unknown_keys():
    cfg = TrainConfig.from_options(arch="mth", eta=0.2, epochs=3).resolved()
    assert cfg.epochs == 3 and cfg.objective_options == {"eta": 0.2, "delta": 0.3,
                                                         "alpha": 1.0, "beta": 1.0}
    assert cfg.input_size == 64 and cfg.sampler == "balanced" and cfg.pretrain_epochs is None
    assert TrainConfig(arch="dafh").resolved().objective_options["focal_gamma"] == 1.5
    assert TrainConfig(arch="dch", epochs=9).resolved().pretrain_epochs == 3
    with pytest.raises(ModelError, match="no option 'margin'"):
        TrainConfig.from_options(arch="mth", margin=0.3).resolved()
    with pytest.raises(ModelError, match="pretrain_epochs"):
        TrainConfig(arch="dch", epochs=2, pretrain_epochs=2).resolved()


@pytest.mark.parametrize("options, words", [
    ({"arch_kwargs": 5}, "arch_kwargs must be dict"),
    ({"steps_per_epoch": "x"}, "steps_per_epoch"),
    ({"augment": 1}, "augment must be bool"), ({"lr": -1.0}, "lr must be a positive"),
    ({"input_size": 512}, "input_size"), ({"arch_kwargs": {"heads": 10**6}}, "heads"),
])
def test_options_of_the_wrong_type_or_range_are_refused_before_training(options, words):
    """``--option`` values arrive as JSON or text: each is checked against its field's type and
    the range a model card may hold, in one line, before anything is built."""
    with pytest.raises(ModelError, match=words):
        TrainConfig.from_options(arch="mth", bits=16, **options).resolved()


def test_bundled_model_configs_resolve_unchanged():
    from hashview.models import list_models

    cards = [c for c in list_models() if c.training.get("config")]
    assert cards
    for card in cards:
        saved = card.training["config"]
        resolved = TrainConfig.from_dict(saved).resolved().to_dict()
        assert {k: v for k, v in resolved.items() if k in saved} == saved, card.name


def test_checkpoint_config_from_before_objective_options_still_resumes(entries, tmp_path):
    cfg = tiny_config(epochs=2)

    def stop(p):
        if p.message.startswith("epoch 1/2 loss"):
            raise Cancelled()
    with pytest.raises(Cancelled):
        train(cfg, entries, tmp_path, progress=stop)
    meta_path = tmp_path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["objective_options"]  # as written before the field existed
    meta_path.write_text(json.dumps(meta))
    assert len(train(cfg, entries, tmp_path, resume=True).history) == 2
