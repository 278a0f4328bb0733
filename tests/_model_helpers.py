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
