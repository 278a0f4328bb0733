"""The real files the fuzzer starts from, made once per work folder.

- ``library.h5``: the CMU slide and the Kather patches of tests/data indexed with the default
  model (slide and patch sources, labels, about 100 tiles);
- ``library.h5.hvindex``: its IVF sidecar, built as ``hashview index-build`` builds it;
- ``model/NAME.json`` + ``model/NAME.safetensors``: the default bundled model, also the
  smallest (its card is the real one, training record and split included);
- ``query.tif``: a real Kather patch, the search query and the tile a model case indexes;
- ``new-patch.png``: the same patch mirrored, a tile the library does not hold yet (to append);
- ``alt-*.faiss``: other FAISS indexes serialised, to put into a sidecar in place of its own;
- ``seeds.json``: the list above plus the byte ranges worth aiming at in each file (HDF5
  metadata rather than raw chunks, the safetensors header, the sidecar header and the start of
  its FAISS payload).

Building imports torch, so it runs in a child process (``python -m tests.fuzz.seeds FOLDER``)
and the fuzzing parent stays small.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SEED_MODEL = "mth-64-from-idc"
LIBRARY_SOURCES = (DATA / "CMU-1-Small-Region.svs", DATA / "kather")
ALTERNATIVE_INDEXES = ("alt-flat.faiss", "alt-multihash.faiss", "alt-ivf-128bit.faiss")
PAYLOAD_HEAD = 256  # bytes of the FAISS payload holding its sizes and list headers


@dataclass(frozen=True)
class Seeds:
    folder: Path
    library: Path
    sidecar: Path
    card: Path
    weights: Path
    query: Path
    new_patch: Path
    alternative_indexes: tuple[Path, ...]
    hot: dict  # file name -> [[start, stop], ...]

    def hot_ranges(self, name: str) -> list[tuple[int, int]]:
        return [tuple(r) for r in self.hot.get(name, [])]


def subprocess_env() -> dict:
    """The environment of the fuzzer's child processes: this checkout first on the import path,
    one thread each (the machine is shared), and user data kept out of the real home."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "")
                                                       .split(os.pathsep) if p])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def make_seeds(folder: str | os.PathLike) -> Seeds:
    """The seed files in ``folder``, built there first when missing."""
    folder = Path(folder)
    listing = folder / "seeds.json"
    if not listing.exists():
        env = subprocess_env()
        env["HASHVIEW_HOME"] = str(folder / "home")
        subprocess.run([sys.executable, "-m", "tests.fuzz.seeds", str(folder)], cwd=REPO,
                       env=env, check=True)
    data = json.loads(listing.read_text())
    return Seeds(folder=folder, library=folder / data["library"],
                 sidecar=folder / data["sidecar"], card=folder / data["card"],
                 weights=folder / data["weights"], query=folder / data["query"],
                 new_patch=folder / data["new_patch"],
                 alternative_indexes=tuple(folder / p for p in data["alternative_indexes"]),
                 hot=data["hot"])


# ------------------------------------------------------------------ building (child process)

def _build(folder: Path) -> None:
    import faiss
    import numpy as np
    from PIL import Image

    from hashview.indexing import index_paths
    from hashview.library import Library
    from hashview.models.store import bundled_models_dirs
    from hashview.search import Searcher

    folder.mkdir(parents=True, exist_ok=True)
    library = folder / "library.h5"
    for stale in (library, Path(str(library) + ".hvindex")):
        stale.unlink(missing_ok=True)
    report = index_paths(LIBRARY_SOURCES, library, device="cpu")
    if report.failed:
        raise SystemExit(f"seed library: {report.failed}")
    with Library.open(library) as lib:
        searcher = Searcher(lib, index="ivf", use_sidecar=False)
        codes = lib.codes()
    searcher.build_index()  # saves library.h5.hvindex

    model_dir = folder / "model"
    model_dir.mkdir(exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(bundled_models_dirs()[0] / (SEED_MODEL + suffix),
                        model_dir / (SEED_MODEL + suffix))
    query = folder / "query.tif"
    shutil.copyfile(sorted((DATA / "kather").glob("*/*.tif"))[0], query)
    new_patch = folder / "new-patch.png"
    with Image.open(query) as image:
        image.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(new_patch)

    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    multihash = faiss.IndexBinaryMultiHash(64, 4, 16)
    multihash.add(codes)
    wide = np.random.default_rng(0).integers(0, 256, (200, 16), dtype=np.uint8)
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(128), 128, 4)
    ivf.train(wide)
    ivf.add(wide)
    for name, index in zip(ALTERNATIVE_INDEXES, (flat, multihash, ivf)):
        (folder / name).write_bytes(faiss.serialize_index_binary(index).tobytes())

    sidecar = Path(str(library) + ".hvindex")
    weights = model_dir / (SEED_MODEL + ".safetensors")
    listing = {
        "library": library.name, "sidecar": sidecar.name,
        "card": f"model/{SEED_MODEL}.json", "weights": f"model/{SEED_MODEL}.safetensors",
        "query": query.name, "new_patch": new_patch.name, "alternative_indexes": list(ALTERNATIVE_INDEXES),
        "hot": {library.name: hdf5_metadata_ranges(library),
                weights.name: [[0, 8 + _length_prefix(weights)]],
                sidecar.name: _sidecar_ranges(sidecar)},
    }
    (folder / "seeds.json").write_text(json.dumps(listing, indent=1))


def _length_prefix(path: Path, at: int = 0) -> int:
    with open(path, "rb") as f:
        f.seek(at)
        return struct.unpack("<Q", f.read(8))[0]


def _sidecar_ranges(path: Path) -> list[list[int]]:
    payload = 16 + _length_prefix(path, 8)
    return [[0, payload], [payload, min(payload + PAYLOAD_HEAD, path.stat().st_size)]]


def hdf5_metadata_ranges(path: Path) -> list[list[int]]:
    """Byte ranges of an HDF5 file that hold no dataset chunk: superblock, object headers,
    B-trees, heaps (where a flipped byte changes structure rather than a value)."""
    import h5py

    data = []
    with h5py.File(path, "r") as f:
        def collect(_name, obj):
            if isinstance(obj, h5py.Dataset):
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    data.append((info.byte_offset, info.byte_offset + info.size))
        f.visititems(collect)
    ranges, at = [], 0
    for start, stop in sorted(data):
        if start > at:
            ranges.append([at, start])
        at = max(at, stop)
    if at < path.stat().st_size:
        ranges.append([at, path.stat().st_size])
    return ranges


if __name__ == "__main__":
    _build(Path(sys.argv[1]))
