"""Labelled patch folders made from the Kather test tiles, for tests that need more patches
per label than the data folder holds."""

from __future__ import annotations

from pathlib import Path

KATHER = Path(__file__).resolve().parent / "data" / "kather"


def turned_patches(folder: Path, labels=("01_TUMOR", "07_ADIPOSE")) -> Path:
    """A labelled patch folder with 12 patches per label (each of the 3 Kather test tiles of
    the label turned 4 ways): enough for a library check at k=10."""
    from PIL import Image

    for label in labels:
        (folder / label).mkdir(parents=True)
        for path in sorted((KATHER / label).iterdir()):
            with Image.open(path) as image:
                for turn in range(4):
                    image.rotate(90 * turn).save(folder / label / f"{path.stem}-{turn}.png")
    return folder
