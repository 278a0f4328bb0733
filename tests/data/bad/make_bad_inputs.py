"""Write the bad-input corpus next to this script: ``python tests/data/bad/make_bad_inputs.py``.

Each file is small and deterministic; ``MANIFEST`` (below) says what each one is and what HashView
must do with it. Inputs a repository cannot hold (an unreadable file, a symlink loop, a name that
is not UTF-8) are made at run time by the tests with :func:`make_runtime_inputs`.

The pickle payload, if anyone ever unpickled it, would only touch the file named by
``$HASHVIEW_PICKLE_MARKER`` (default ``./hashview-pickle-payload-ran``): the tests use that
marker to prove HashView never executes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
SLIDE = DATA / "CMU-1-Small-Region.svs"
PICKLE_MARKER_ENV = "HASHVIEW_PICKLE_MARKER"
FUTURE_SCHEMA_VERSION = 99  # far ahead, so the file stays "from the future" as the format grows
TRUNCATED_SVS_BYTES = 96 * 1024  # the header and first directories survive, the pixels do not
BOMB_SIDE = 16_000  # 1-bit 16000x16000 PNG: 256 Mpx (over 2x Pillow's limit), ~30 KB on disk
GIANT_SIDE = 1_000_000  # what the giant TIFF header claims: 10^12 pixels

# name -> (what it is, what HashView does with it: "refused: <reason>" or "indexed")
MANIFEST = {
    "truncated.svs": ("the first 96 KiB of an Aperio SVS", "refused: truncated or corrupt"),
    "empty.svs": ("zero bytes", "refused: empty file (0 bytes)"),
    "empty.png": ("zero bytes, in a folder a patch rather than a slide",
                  "refused: empty file (0 bytes)"),
    "notes.svs": ("a text file renamed .svs", "refused: image file (unrecognised format)"),
    "bomb.png": ("PNG decompression bomb, 16000x16000 1-bit", "refused: image too large"),
    "giant-header.tif": ("TIFF header claiming 1000000x1000000 pixels, 8 bytes of data",
                         "refused: image too large"),
    "one-pixel.png": ("1x1 RGB image", "indexed"),
    "sixteen-bit.tif": ("16-bit greyscale TIFF", "indexed"),
    "rgba.png": ("RGBA PNG with a transparent half", "indexed"),
    "grey.png": ("8-bit greyscale PNG", "indexed"),
    "cmyk.jpg": ("CMYK JPEG", "indexed"),
    "foreign.h5": ("HDF5 file written by another program", "refused as a library"),
    "future-schema.h5": ("HashView library with a schema version from the future",
                         "refused as a library"),
    "pickle-payload.pt": ("pickle that would run code when unpickled", "refused as a model"),
    "pickle-payload.safetensors": ("the same pickle posing as safetensors, with a card whose "
                                   "SHA-256 matches it", "refused as a model"),
}


def _pattern(width: int, height: int, channels: int, seed: int):
    """Smooth, tissue-free but non-constant pixels (compress well, decode to distinct codes)."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    planes = [((x * (3 + c + seed) + y * (5 + 2 * c)) % 256) for c in range(channels)]
    pixels = np.stack(planes, axis=-1).astype(np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


def _save(pixels, mode: str, path: Path, **options) -> None:
    from PIL import Image

    height, width = pixels.shape[:2]
    Image.frombytes(mode, (width, height), pixels.tobytes()).save(path, **options)


def write_images(out: Path) -> None:
    from PIL import Image

    _save(_pattern(1, 1, 3, 0), "RGB", out / "one-pixel.png")
    sixteen = _pattern(64, 64, 1, 1).astype("<u2") * 257
    _save(sixteen, "I;16", out / "sixteen-bit.tif")
    rgba = _pattern(64, 64, 4, 2)
    rgba[:, 32:, 3] = 0  # right half fully transparent
    rgba[:, :32, 3] = 255
    _save(rgba, "RGBA", out / "rgba.png")
    _save(_pattern(64, 64, 1, 3), "L", out / "grey.png")
    _save(_pattern(64, 64, 4, 4), "CMYK", out / "cmyk.jpg", quality=90)
    Image.new("1", (BOMB_SIDE, BOMB_SIDE), 0).save(out / "bomb.png", optimize=True)


def write_slides(out: Path) -> None:
    (out / "truncated.svs").write_bytes(SLIDE.read_bytes()[:TRUNCATED_SVS_BYTES])
    (out / "empty.svs").write_bytes(b"")
    (out / "empty.png").write_bytes(b"")
    (out / "notes.svs").write_text("Slide 12, block B: re-scan requested.\nNot an image.\n")
    (out / "giant-header.tif").write_bytes(giant_tiff_header(GIANT_SIDE, GIANT_SIDE))


def giant_tiff_header(width: int, height: int) -> bytes:
    """A little-endian striped 8-bit greyscale TIFF whose one strip is 8 bytes long."""
    tags = [  # (tag, type, count, value): type 3 SHORT, 4 LONG
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
        (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 8),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHI", tag, kind, count)
        + (struct.pack("<HH", value, 0) if kind == 3 else
           struct.pack("<I", data_offset if tag == 273 else value))
        for tag, kind, count, value in tags)
    return (b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(tags)) + entries
            + struct.pack("<I", 0) + bytes(8))


def write_hdf5(out: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(out / "foreign.h5", "w", track_order=True) as f:
        f.attrs["creator"] = "an image analysis program"
        f.create_dataset("images", data=np.zeros((4, 8, 8), np.uint8), track_times=False)
        f.create_dataset("labels", data=np.arange(4), track_times=False)
    write_future_library(out / "future-schema.h5")


def write_future_library(path: Path) -> None:
    """An empty library of the default model claiming a schema version far ahead of ours."""
    import h5py

    from hashview.library import Library
    from hashview.models import DEFAULT_MODEL, load_model

    path.unlink(missing_ok=True)
    card = load_model(DEFAULT_MODEL).card
    Library.create(path, card, tile_size=card.tile_size, target_mpp=card.target_mpp).close()
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = FUTURE_SCHEMA_VERSION
    path.chmod(0o644)  # created through a private temporary file


class _Payload:
    """Unpickling this calls ``exec`` on a line that touches the marker file."""

    CODE = ("import os, pathlib; pathlib.Path(os.environ.get("
            f"{PICKLE_MARKER_ENV!r}, 'hashview-pickle-payload-ran')).touch()")

    def __reduce__(self):
        return exec, (self.CODE,)


def pickle_payload() -> bytes:
    return pickle.dumps({"state_dict": _Payload()}, protocol=2)


def write_models(out: Path) -> None:
    payload = pickle_payload()
    (out / "pickle-payload.pt").write_bytes(payload)
    (out / "pickle-payload.safetensors").write_bytes(payload)
    # A card that vouches for these very bytes, so loading gets past the SHA-256 check and the
    # refusal must come from the weights parser itself.
    card = {"name": "pickle-payload", "arch": "dch", "bits": 64, "input_size": 96,
            "arch_kwargs": {"n_classes": 8, "pooled_size": 4, "lbe_batchnorm": True},
            "description": "bad-input corpus: weights are a pickle, not safetensors",
            "sha256": hashlib.sha256(payload).hexdigest(), "trained": True}
    (out / "pickle-payload.json").write_text(json.dumps(card, indent=2) + "\n")


def make_runtime_inputs(folder: Path, good_image: Path) -> dict[str, Path]:
    """Inputs git cannot hold, made in ``folder``: an unreadable copy of ``good_image``, a
    symlink loop (a folder linking to its parent, and a link to itself) and a file whose name is
    not UTF-8 (a readable image: it must be indexed). Returns them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good_image.read_bytes()
    unreadable = folder / "unreadable.png"
    unreadable.write_bytes(data)
    unreadable.chmod(0)
    loop_dir = folder / "loop"
    loop_dir.mkdir(exist_ok=True)
    (loop_dir / "parent").symlink_to("..", target_is_directory=True)
    (folder / "self-link.png").symlink_to("self-link.png")
    raw_name = os.fsencode(folder) + b"/latin1-\xe9chantillon.png"
    with open(raw_name, "wb") as handle:
        handle.write(data)
    return {"unreadable": unreadable, "symlink loop": loop_dir,
            "self link": folder / "self-link.png", "non-utf8": Path(os.fsdecode(raw_name))}


def write_corpus(out: Path = HERE, hdf5: bool = True) -> None:
    """Every committed file of the corpus into ``out`` (the HDF5 ones need HashView)."""
    write_images(out)
    write_slides(out)
    write_models(out)
    if hdf5:
        write_hdf5(out)


def main() -> int:
    sys.path.insert(0, str(DATA.parent.parent))  # run from a checkout: import its hashview
    write_corpus()
    total = sum(p.stat().st_size for p in HERE.iterdir() if p.is_file())
    for name in sorted(MANIFEST):
        print(f"{name:28s} {(HERE / name).stat().st_size:8d} B  {MANIFEST[name][0]}")
    print(f"corpus: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
