"""Schema 1 (HashView 0.1 libraries): read it, upgrade it to schema 2, and write it (tests and
the footprint benchmark compare against it).

Schema 1 stored per tile ``source_id`` int32, ``x``/``y`` int64, ``size`` int32, ``label_id``
int16 (30 bytes at 64 bits) and every source column as its own dataset, the text ones as HDF5
variable-length strings with one chunk per row. It is read as it is. Opening one for appending
upgrades it first: the library (``store.py``) rewrites the whole of it, as
:func:`schema2_items` gives it, as schema 2 into a temporary file that then replaces the
original (atomic rename; a crash leaves the schema-1 file untouched).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from hashview.code_kinds import BINARY
from hashview.errors import LibraryError
from hashview.library.records import FORMAT_NAME, STATUS_COMPLETE, SourceRecord
from hashview.library.schema import Snapshot
from hashview.library.validation import (StoredData, committed_rows, damaged, generation_of,
                                         model_from_attrs, non_negative, tile_ranges)

if TYPE_CHECKING:
    from hashview.library.store import Library

STR = h5py.string_dtype("utf-8")
SOURCE_COLUMNS_V1: dict[str, str] = {
    "path": "str", "name": "str", "byte_size": "int64", "mtime": "float64",
    "fingerprint": "str", "mpp": "float64", "width": "int64", "height": "int64",
    "kind": "str", "label": "str", "patient_id": "str", "tile_start": "int64",
    "tile_count": "int64", "mpp_assumed": "bool", "added": "str", "status": "str",
}
TILE_COLUMNS_V1: dict[str, str] = {
    "source_id": "int32", "x": "int64", "y": "int64", "size": "int32", "label_id": "int16",
}


def load_v1(f: h5py.File, path: Path) -> Snapshot:
    """Read a schema-1 library's complete sources, checking columns as ``schema.load`` does."""
    model = model_from_attrs(f, path)
    if model.code_kind != BINARY.name:
        raise damaged(path, "schema 1 stores binary codes only")
    data = StoredData(f, path)
    src = {name: data.dataset(f"sources/{name}", kind)
           for name, kind in SOURCE_COLUMNS_V1.items()}
    tiles = {name: data.dataset(f"tiles/{name}", kind) for name, kind in TILE_COLUMNS_V1.items()}
    tiles["codes"] = data.dataset("tiles/codes", BINARY.stored_dtype.name,
                                  BINARY.row_shape(model.bits))
    names = data.dataset("labels/names", "str")
    n_rows = min(len(ds) for ds in src.values())
    n, _ = committed_rows(data, src["status"], n_rows, STATUS_COMPLETE)
    cols = {name: data.read(ds, n) for name, ds in src.items() if name != "status"}
    n_tiles = tile_ranges(path, cols["tile_start"], cols["tile_count"])
    for what in ("width", "height", "byte_size"):
        non_negative(path, what, cols[what])
    sources = []
    for i in range(n):
        mpp = float(cols["mpp"][i])
        sources.append(SourceRecord(
            id=i, path=str(cols["path"][i]), name=str(cols["name"][i]),
            byte_size=int(cols["byte_size"][i]), mtime=float(cols["mtime"][i]),
            fingerprint=str(cols["fingerprint"][i]), mpp=None if math.isnan(mpp) else mpp,
            width=int(cols["width"][i]), height=int(cols["height"][i]),
            kind=str(cols["kind"][i]), label=str(cols["label"][i]) or None,
            patient_id=str(cols["patient_id"][i]) or None,
            tile_start=int(cols["tile_start"][i]), tile_count=int(cols["tile_count"][i]),
            mpp_assumed=bool(cols["mpp_assumed"][i]), added=str(cols["added"][i]),
            status=STATUS_COMPLETE))
    for ds in tiles.values():
        if len(ds) < n_tiles:
            raise LibraryError(path, "library is inconsistent (tile arrays shorter than the "
                                     "sources table says); the file is damaged")
        data.reserve(ds, n_tiles)  # read later, as asked for
    a = f.attrs
    return Snapshot(version=1, model=model, sources=sources, source_tile_size=None,
                    labels=list(data.read(names, len(names))), n_tiles=n_tiles,
                    generation=generation_of(f, path), created=str(a["created"]),
                    updated=str(a["updated"]))


def read_tiles_v1(f: h5py.File, start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: f["tiles"][name][start:stop] for name in TILE_COLUMNS_V1}


def schema2_items(path: Path, snapshot: Snapshot, codes: np.ndarray,
                  table: dict[str, np.ndarray]) -> list[tuple]:
    """The contents of the schema-1 library ``path`` as ``add_sources`` items of its schema-2
    copy, one ``(source, codes, xs, ys, sizes, labels)`` per source in the stored order.

    ``snapshot``, ``codes`` and ``table`` are what the library read from the file. A source
    whose tiles have different sizes cannot be stored in schema 2: a one-line error.
    """
    sources = snapshot.sources
    for s in sources:
        sizes = table["size"][s.tile_start:s.tile_start + s.tile_count]
        if len(sizes) and sizes.min() != sizes.max():
            raise LibraryError(path, f"cannot upgrade to schema 2: the tiles of source "
                                     f"{s.name!r} have different sizes")
    labels = [snapshot.labels[i] if i >= 0 else None for i in table["label_id"]]
    items = []
    for s in sources:
        rows = slice(s.tile_start, s.tile_start + s.tile_count)
        items.append((s, codes[rows], table["x"][rows], table["y"][rows], table["size"][rows],
                      labels[rows]))
    return items


def write_schema1(library: "Library", path: str | Path) -> None:
    """Write the contents of ``library`` (binary codes) as a schema-1 file at ``path``.

    Same datasets, types and chunking as HashView 0.1 wrote (one append of everything).
    """
    sources = library.sources()
    codes, table = library.codes(), library.tile_table()
    with h5py.File(path, "w") as f:
        a = dict(format=FORMAT_NAME, schema_version=1, model_name=library.model_name,
                 model_arch=library.model_arch, bits=library.bits,
                 model_sha256=library.model_sha256, tile_size=library.tile_size,
                 target_mpp=library.target_mpp, created=library.created,
                 updated=library.updated, hashview_version="0.1.0",
                 n_tiles=library.n_tiles, n_sources=len(sources))
        f.attrs.update(a)
        nbytes = BINARY.stored_bytes(library.bits)
        tiles = f.create_group("tiles")
        tiles.create_dataset("codes", data=codes, maxshape=(None, nbytes),
                             chunks=(max(1024, 65536 // nbytes), nbytes))
        for name, kind in TILE_COLUMNS_V1.items():
            tiles.create_dataset(name, data=table[name].astype(kind), maxshape=(None,),
                                 chunks=(16384,))
        group = f.create_group("sources")
        for name, kind in SOURCE_COLUMNS_V1.items():
            values = [getattr(s, name) for s in sources]
            if name == "mpp":
                values = [math.nan if v is None else v for v in values]
            if kind == "str":
                data = np.array([v or "" for v in values], dtype=object)
            else:
                data = np.array(values, dtype=kind).reshape(len(sources))
            group.create_dataset(name, data=data, maxshape=(None,),
                                 dtype=STR if kind == "str" else kind,
                                 chunks=(1,) if kind == "str" else (256,))
        f.create_group("labels").create_dataset(
            "names", data=np.array(library.label_names(), dtype=object), dtype=STR,
            maxshape=(None,), chunks=(1,))
