"""Bit packing, device choice and the Encoder (hashview.encode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _model_helpers import tissue_images
from hashview.encode import (Encoder, _POPCOUNT, hamming_distance, pack_codes, pick_device,
                             unpack_codes)
from hashview.errors import ModelError
from hashview.models import DEFAULT_MODEL, build_model, load_model
from hashview.models.store import LoadedModel
from hashview.models.cards import ModelCard
from hashview.progress import Cancelled


# ---------------------------------------------------------------- packing

def test_pack_codes_sign_convention_and_bit_order():
    row = [1.0, -1.0, 0.0, 0.5, -0.2, 0.0, -0.0, 1e-9,   # 1 0 0 1 0 0 0 1 -> 0x91
           0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3]       # 0 ... 0 1       -> 0x01
    packed = pack_codes(np.array([row, [0.0] * 16], dtype=np.float32))
    assert packed.dtype == np.uint8 and packed.shape == (2, 2)
    assert packed.tolist() == [[0x91, 0x01], [0x00, 0x00]]
    assert np.array_equal(pack_codes(torch.tensor([row])), packed[:1])


def test_unpack_roundtrip_and_zero_is_minus_one():
    relaxed = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    relaxed[0, :4] = 0.0
    codes = unpack_codes(pack_codes(relaxed), 32)
    assert codes.dtype == np.int8 and codes.shape == (5, 32)
    assert np.array_equal(codes, np.where(relaxed > 0, 1, -1))
    assert list(codes[0, :4]) == [-1, -1, -1, -1]


def test_hamming_distance():
    a = np.array([[0x00, 0xFF], [0x0F, 0x00]], dtype=np.uint8)
    b = np.array([[0x00, 0x00], [0xFF, 0xFF], [0x01, 0x80]], dtype=np.uint8)
    assert hamming_distance(a, b).tolist() == [[8, 8, 8], [4, 12, 4]]
    assert hamming_distance(a[0], b).tolist() == [8, 8, 8]
    table = np.arange(256, dtype=np.uint8)
    assert np.array_equal(_POPCOUNT[table], [bin(i).count("1") for i in range(256)])
    # Hamming = (K - <b_q, b_d>) / 2 on +-1 codes.
    ua, ub = unpack_codes(a, 16).astype(int), unpack_codes(b, 16).astype(int)
    assert np.array_equal(hamming_distance(a, b), (16 - ua @ ub.T) // 2)


# ---------------------------------------------------------------- devices

def test_pick_device(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ModelError) as err:
        pick_device("cuda")
    assert "CUDA is not available" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError):
        pick_device("tpu")


# ---------------------------------------------------------------- encoder

@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL)


def test_encoder_on_tissue_tiles(default_model):
    images = tissue_images(12)
    encoder = Encoder(default_model, device="cpu")
    assert encoder.batch_size == 64
    codes = encoder.encode(images)
    relaxed = encoder.encode_relaxed(images)
    assert codes.shape == (12, 8) and codes.dtype == np.uint8
    assert relaxed.shape == (12, 64) and relaxed.dtype == np.float32
    assert np.all(np.abs(relaxed) <= 1)  # tanh; a saturated unit is exactly 1.0 in float32
    assert np.array_equal(codes, pack_codes(relaxed))
    # Another encoder with a different batch size: same codes except at near-zero values.
    small = Encoder(load_model(DEFAULT_MODEL), device="cpu", batch_size=5).encode_relaxed(images)
    assert np.allclose(small, relaxed, atol=1e-5)
    stable = np.abs(relaxed) > 1e-4
    assert np.array_equal((small > 0)[stable], (relaxed > 0)[stable])


def test_encoder_normalises_and_resizes():
    net = build_model("dch", 16).eval()
    card = ModelCard("d", "dch", 16, 128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 0.5))
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    encoder = Encoder(LoadedModel(net, card), device="cpu")
    white = Image.new("RGB", (200, 90), (255, 255, 255))
    grey = Image.new("L", (128, 128), 0)
    encoder.encode([white, grey])
    x = seen[0]
    assert x.shape == (2, 3, 128, 128)
    assert torch.allclose(x[0, 0], torch.full((128, 128), 2.0))   # (1 - 0.5) / 0.25
    assert torch.allclose(x[0, 1:], torch.ones(2, 128, 128))
    assert torch.allclose(x[1], -torch.tensor([2.0, 1.0, 1.0]).view(3, 1, 1).expand(3, 128, 128))


def test_encode_batches_is_lazy_reports_progress_and_cancels(default_model):
    images = tissue_images(7)
    encoder = Encoder(default_model, device="cpu", batch_size=3)
    events = []
    parts = list(encoder.encode_batches((im for im in images), progress=events.append,
                                        total=7))
    assert [p.shape[0] for p in parts] == [3, 3, 1]
    assert np.array_equal(np.concatenate(parts), encoder.encode(images))
    assert [(e.stage, e.done, e.total) for e in events][-1] == ("encoding", 7, 7)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()

    def cancel_after_first(event):
        if event.done >= 3:
            raise Cancelled()
    with pytest.raises(Cancelled):
        list(encoder.encode_batches(images, progress=cancel_after_first))


def test_encode_empty_input(default_model):
    encoder = Encoder(default_model, device="cpu")
    assert encoder.encode([]).shape == (0, 8)
    assert encoder.encode_relaxed([]).shape == (0, 64)


def test_default_model_codes_are_reproducible():
    images = tissue_images(4)
    a = Encoder(load_model(DEFAULT_MODEL), device="cpu").encode(images)
    b = Encoder(load_model(DEFAULT_MODEL), device="cpu").encode(images)
    assert np.array_equal(a, b)


def test_a_patch_gets_the_same_code_indexed_and_queried(tmp_path):
    """Indexing a patch folder and encoding the raw image as a query resize the same way."""
    from pathlib import Path

    from hashview.indexing import index_paths
    from hashview.library import Library

    model = load_model("dch-64")
    folder = Path(__file__).parent / "data" / "kather"
    index_paths([str(folder)], tmp_path / "lib.h5", model=model)
    encoder = Encoder(model, device="cpu")
    with Library.open(tmp_path / "lib.h5") as lib:
        codes = lib.codes()
        sources = lib.sources()
    assert len(sources) >= 8
    queried = encoder.encode([Image.open(s.path) for s in sources])
    stored = np.stack([codes[s.tile_start] for s in sources])
    np.testing.assert_array_equal(queried, stored)
