"""One patch, one code: a query, the library's index, an explanation and the training loop's
validation all compute the same code for the same pixels (hashview.model_input.ModelInput).

Each path runs as the application runs it, on its own copy of the model: the query encodes one
patch at a time, indexing reads the patch files of a folder, the explanation loads its images
like the ``explain`` command, and training validation encodes the decoded training set.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from conftest import KATHER
from hashview import explain
from hashview.encode import Encoder, hamming_distance, pack_codes
from hashview.indexing import index_paths
from hashview.library import Library
from hashview.model_input import ModelInput
from hashview.models import DEFAULT_MODEL, ModelCard, build_model, load_model, save_model
from hashview.models.cards import DEFAULT_MEAN, DEFAULT_STD
from hashview.slides.folders import scan_patch_folder
from hashview.tiling import load_patch
from hashview.training import TrainConfig
from hashview.training.data import PatchesInMemory
from hashview.training.loop import _Run

# Relaxed codes of one patch may differ between paths by float rounding inside the net (batch
# size, thread count, weight memory format: ~1e-6), never by more; a drift in the input
# (a different normalisation) moves them further before it flips a bit, and fails here first.
RELAXED_ATOL = 1e-4
# Float libraries store descriptors as float16.
FLOAT16_ATOL = 1e-3
# An untrained LGFFEM of a few thousand parameters: the float-descriptor paths, quickly.
TINY_LGFFEM = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "neck_channels": 16,
               "neck_layers": 1}


@pytest.fixture(scope="module")
def patch_folder(tmp_path_factory):
    """Two real Kather patches of each of the four classes."""
    folder = tmp_path_factory.mktemp("patches")
    for class_dir in sorted(p for p in KATHER.iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir()
        for path in sorted(class_dir.glob("*.tif"))[:2]:
            shutil.copy(path, folder / class_dir.name / path.name)
    return folder


def _bundled_model(_tmp_path):
    loaded = load_model(DEFAULT_MODEL)
    cfg = TrainConfig.from_dict(loaded.card.training["config"])
    return DEFAULT_MODEL, dataclasses.replace(cfg, device="cpu", batch_size=8,
                                              steps_per_epoch=1)


def _float_model(tmp_path):
    torch.manual_seed(0)
    net = build_model("lgffem", 16, input_size=64, **TINY_LGFFEM)
    card = ModelCard(name="lgffem-tiny", arch="lgffem", bits=16, input_size=64)
    save_model(net, card, tmp_path / "lgffem-tiny")
    cfg = TrainConfig(arch="lgffem", bits=16, input_size=64, arch_kwargs=dict(TINY_LGFFEM),
                      batch_size=8, steps_per_epoch=1, device="cpu")
    return tmp_path / "lgffem-tiny.safetensors", cfg


def _codes_along_every_path(model, cfg: TrainConfig, folder, tmp_path) -> dict:
    """``{path: codes}`` (relaxed where the path has them, else as stored) of the folder's
    patches, in the order of ``scan_patch_folder``."""
    entries = scan_patch_folder(folder)
    size = load_model(model).card.input_size
    codes = {}

    query = Encoder(load_model(model), device="cpu")  # a query is one patch
    codes["query"] = np.concatenate([query.encode_relaxed([load_patch(e.path, size)])
                                     for e in entries])

    report = index_paths([folder], tmp_path / "library.h5", model=load_model(model),
                         device="cpu")
    assert not report.failed, report.failed
    with Library.open(tmp_path / "library.h5") as library:
        stored, table = library.codes(), library.tile_table()
        rows = [int(np.flatnonzero(table["source_id"] == library.find_source(path=e.path).id)[0])
                for e in entries]
    codes["indexed"] = stored[rows]

    explained = load_model(model)
    seen = []
    net_codes = explain._codes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(explain, "_codes", lambda net, x: seen.append(net_codes(net, x)) or seen[-1])
        images = [explain.load_input(str(e.path), explained.card) for e in entries]
        for query_image, hit_image in zip(images[0::2], images[1::2]):
            explain.explain_pair(explained, query_image, hit_image)
    codes["explained"] = torch.cat(seen).detach().numpy()

    run = _Run(cfg.resolved(), PatchesInMemory(entries, size), torch.device("cpu"))
    run.net.load_state_dict(load_model(model).net.state_dict())
    codes["training"] = run.encode(run.data.images)
    return codes


@pytest.mark.parametrize("make_model", [_bundled_model, _float_model], ids=["binary", "float"])
def test_one_patch_gets_one_code_along_every_path(make_model, patch_folder, tmp_path):
    model, cfg = make_model(tmp_path)
    codes = _codes_along_every_path(model, cfg, patch_folder, tmp_path)
    relaxed = {name: codes[name] for name in ("query", "explained", "training")}
    for name, values in relaxed.items():
        assert values.shape == codes["query"].shape, name
        np.testing.assert_allclose(values, codes["query"], rtol=0, atol=RELAXED_ATOL,
                                   err_msg=name)
    if load_model(model).card.code_kind == "float":
        np.testing.assert_allclose(codes["indexed"], codes["query"], rtol=0, atol=FLOAT16_ATOL)
        return
    packed = {name: pack_codes(values) for name, values in relaxed.items()}
    for name, values in packed.items():
        np.testing.assert_array_equal(values, codes["indexed"], err_msg=name)
    assert len(np.unique(codes["indexed"], axis=0)) > 1  # the patches are told apart


def test_explanation_measures_the_searched_distance(patch_folder):
    loaded = load_model(DEFAULT_MODEL)
    query, hit = (load_patch(path, loaded.card.input_size)
                  for path in sorted(patch_folder.glob("*/*.tif"))[::5][:2])
    codes = Encoder(load_model(DEFAULT_MODEL), device="cpu").encode([query, hit])
    stats = explain.explain_pair(loaded, query, hit).stats
    assert stats["hamming"] == int(hamming_distance(codes[0], codes[1])) > 0


def test_model_input_is_the_documented_normalisation_in_channels_last(patch_folder):
    """``(x / 255 - mean) / std`` with the defaults, which bundled cards carry and the training
    loop uses."""
    card = load_model(DEFAULT_MODEL).card
    assert (tuple(card.mean), tuple(card.std)) == (DEFAULT_MEAN, DEFAULT_STD)
    pixels = PatchesInMemory(scan_patch_folder(patch_folder), card.input_size).images
    expected = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
    x = ModelInput.for_card(card)(pixels)
    assert x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=0, atol=1e-6)


def test_a_trained_card_records_the_mean_and_std_the_loop_used(tmp_path, monkeypatch):
    from hashview.training import loop, train

    monkeypatch.setattr(loop, "DEFAULT_MEAN", (0.6, 0.5, 0.4))
    monkeypatch.setattr(loop, "DEFAULT_STD", (0.2, 0.25, 0.3))
    cfg = TrainConfig(arch="lgffem", bits=16, input_size=64, arch_kwargs=dict(TINY_LGFFEM),
                      epochs=1, batch_size=8, steps_per_epoch=1, device="cpu")
    result = train(cfg, scan_patch_folder(KATHER), tmp_path)
    card = load_model(result.model_path).card
    assert (tuple(card.mean), tuple(card.std)) == ((0.6, 0.5, 0.4), (0.2, 0.25, 0.3))
