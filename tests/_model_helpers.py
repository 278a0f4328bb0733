"""Test images for model/encoder tests: the real Kather tiles, else generated stand-ins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

KATHER = Path(__file__).resolve().parent / "data" / "kather"


def tissue_images(n: int = 12) -> list[Image.Image]:
    files = sorted(KATHER.glob("*/*.tif"))[:n] if KATHER.is_dir() else []
    images = [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(0)
    while len(images) < n:  # fallback: smooth coloured blobs, 150x150 like Kather tiles
        base = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        images.append(Image.fromarray(base).resize((150, 150), Image.BICUBIC))
    return images


def kather_batch(size: int):
    """The 12 real Kather tiles of tests/data/kather (4 classes x 3) as a normalised
    ``(x, labels)`` training batch at ``size`` px."""
    import torch

    from hashview.slides.folders import scan_patch_folder
    from hashview.training.data import PatchesInMemory

    data = PatchesInMemory(scan_patch_folder(Path(__file__).resolve().parent / "data" / "kather"),
                        size)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25, torch.from_numpy(data.labels)


def check_trained_model_reloads_identically(arch: str, out_dir, size: int):
    """Train ``arch`` for two tiny steps on the test Kather tiles, reload the saved model and
    check it encodes exactly like the net in memory; returns the training result."""
    import numpy as np

    from hashview.encode import Encoder
    from hashview.models import LoadedModel, load_model
    from hashview.slides.folders import scan_patch_folder
    from hashview.training import TrainConfig, train

    entries = scan_patch_folder(Path(__file__).resolve().parent / "data" / "kather")
    cfg = TrainConfig(arch=arch, bits=16, epochs=1, batch_size=8, input_size=size,
                      steps_per_epoch=2, seed=1, device="cpu")
    result = train(cfg, entries, out_dir)
    loaded = load_model(result.model_path)
    assert loaded.net.arch_kwargs() == result.net.arch_kwargs()
    images = [Image.open(e.path).convert("RGB") for e in entries]
    from_file = Encoder(loaded, device="cpu").encode_relaxed(images)
    in_memory = Encoder(LoadedModel(result.net, result.card), device="cpu").encode_relaxed(images)
    np.testing.assert_array_equal(from_file, in_memory)
    return result
