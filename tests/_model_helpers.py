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
    from hashview.training.data import PatchDataset

    data = PatchDataset(scan_patch_folder(Path(__file__).resolve().parent / "data" / "kather"),
                        size)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25, torch.from_numpy(data.labels)
