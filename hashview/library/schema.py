"""The on-disk schema: creating, checking and converting rows (docs/library-format.md)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hashview import __version__
from hashview.errors import LibraryError
from hashview.library.records import (FORMAT_NAME, SCHEMA_VERSION, SOURCE_COLUMNS,
                                      TILE_COLUMNS, ModelInfo, SourceRecord)

STR = h5py.string_dtype("utf-8")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def h5_dtype(kind: str):
    return STR if kind == "str" else np.dtype(kind)


def reason_from_oserror(e: BaseException, writing: bool) -> str:
    text = str(e).lower()
    errno = getattr(e, "errno", None)
    if "truncated" in text or "bad object header" in text or "bad symbol table" in text:
        return "HDF5 file is truncated or corrupt"
    if "lock" in text:
        return "file is in use by another process (locked)"
    if errno == 30 or "read-only file system" in text:
        return "cannot open for writing (read-only file system)"
    if errno == 13 or "permission denied" in text:
        return "cannot open for writing (permission denied)" if writing else "permission denied"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"HDF5 file is unreadable or corrupt ({first})"


def write_skeleton(f: h5py.File, info: ModelInfo) -> None:
    now = utc_now()
    f.attrs.update({
        "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION,
        "model_name": info.name, "model_arch": info.arch, "bits": info.bits,
        "model_sha256": info.sha256, "tile_size": info.tile_size,
        "target_mpp": info.target_mpp, "created": now, "updated": now,
        "hashview_version": __version__, "n_tiles": 0, "n_sources": 0,
    })
    nbytes = info.bits // 8
    tiles = f.create_group("tiles")
    # No compression anywhere: codes would not shrink, and fixed-size chunks are rewritten in
    # place on append, whereas a compressed chunk moves (and a crash could leave the index
    # pointing at reused space).
    tiles.create_dataset("codes", shape=(0, nbytes), maxshape=(None, nbytes), dtype=np.uint8,
                         chunks=(max(1024, 65536 // nbytes), nbytes))
    for name, kind in TILE_COLUMNS.items():
        tiles.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5_dtype(kind),
                             chunks=(16384,))
    # Variable-length strings get one chunk per row. HDF5 writes raw chunk data when a dataset
    # handle closes but the string heap only at flush; overwriting a slot that holds a string
    # reference from a killed append makes HDF5 free a heap object that never reached the disk
    # ("bad heap index"). A row in its own chunk is only reachable once the chunk index (flushed
    # with the heap) knows it, so leftovers of a killed append are never read back.
    sources = f.create_group("sources")
    for name, kind in SOURCE_COLUMNS.items():
        sources.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5_dtype(kind),
                               chunks=(1,) if kind == "str" else (256,))
    f.create_group("labels").create_dataset("names", shape=(0,), maxshape=(None,), dtype=STR,
                                            chunks=(1,))


def check_header(f: h5py.File, path: Path) -> None:
    fmt = f.attrs.get("format")
    if fmt is None:
        raise LibraryError(path, "not a HashView library (no format attribute)")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if str(fmt) != FORMAT_NAME:
        raise LibraryError(path, f"not a HashView library (format is {str(fmt)!r})")
    try:
        version = int(f.attrs.get("schema_version"))
    except (TypeError, ValueError):
        raise LibraryError(path, "not a valid HashView library (bad schema_version)") from None
    if version > SCHEMA_VERSION:
        raise LibraryError(path, f"schema version {version} is newer than this HashView supports "
                                 f"({SCHEMA_VERSION}); upgrade HashView")
    if version < 1:
        raise LibraryError(path, f"unsupported schema version {version}")
    required = ["tiles/codes", "labels/names", *(f"tiles/{n}" for n in TILE_COLUMNS),
                *(f"sources/{n}" for n in SOURCE_COLUMNS)]
    missing = [name for name in required if name not in f]
    if missing:
        raise LibraryError(path, f"library is incomplete (missing /{missing[0]})")
    for key in ("model_name", "model_arch", "bits", "model_sha256", "tile_size", "target_mpp"):
        if key not in f.attrs:
            raise LibraryError(path, f"library is incomplete (missing attribute {key})")


def row_values(rec: SourceRecord) -> dict[str, Any]:
    return {
        "path": rec.path, "name": rec.name, "byte_size": int(rec.byte_size),
        "mtime": float(rec.mtime), "fingerprint": rec.fingerprint,
        "mpp": math.nan if rec.mpp is None else float(rec.mpp),
        "width": int(rec.width), "height": int(rec.height), "kind": rec.kind,
        "label": rec.label or "", "patient_id": rec.patient_id or "",
        "tile_start": rec.tile_start, "tile_count": rec.tile_count,
        "mpp_assumed": bool(rec.mpp_assumed), "added": rec.added, "status": rec.status,
    }


def record_from_row(i: int, row: dict[str, Any]) -> SourceRecord:
    mpp = float(row["mpp"])
    return SourceRecord(
        id=i, path=str(row["path"]), name=str(row["name"]), byte_size=int(row["byte_size"]),
        mtime=float(row["mtime"]), fingerprint=str(row["fingerprint"]),
        mpp=None if math.isnan(mpp) else mpp, width=int(row["width"]),
        height=int(row["height"]), kind=str(row["kind"]), label=str(row["label"]) or None,
        patient_id=str(row["patient_id"]) or None, tile_start=int(row["tile_start"]),
        tile_count=int(row["tile_count"]), mpp_assumed=bool(row["mpp_assumed"]),
        added=str(row["added"]), status=str(row["status"]))


def model_info_from_args(model_name, model_arch, bits, model_sha256, tile_size, target_mpp,
                         path) -> ModelInfo:
    """ModelInfo from Library.create-style arguments (model_name may be a card, dict...)."""
    try:
        if isinstance(model_name, str):
            return ModelInfo.coerce({"name": model_name, "arch": model_arch, "bits": bits,
                                     "sha256": model_sha256},
                                    tile_size=tile_size, target_mpp=target_mpp)
        return ModelInfo.coerce(model_name, tile_size=tile_size, target_mpp=target_mpp)
    except (ValueError, TypeError, AttributeError) as e:
        raise LibraryError(path, f"bad model description ({e})") from None


def validate_tiles(path: Path, bits: int, rec: SourceRecord, codes, xs, ys, sizes):
    """Check one source's tile arrays; return them as (uint8 codes, int64 xs, ys, sizes)."""
    nbytes = bits // 8
    codes = np.asarray(codes)
    if codes.size == 0:
        codes = codes.reshape(0, nbytes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != nbytes:
        raise LibraryError(path, f"{rec.name}: codes must be uint8 of shape (n, {nbytes}) for "
                                 f"{bits}-bit codes, got {codes.dtype} {codes.shape}")
    n = len(codes)
    out = []
    for what, values in (("xs", xs), ("ys", ys), ("sizes", sizes)):
        arr = np.asarray(list(values) if not hasattr(values, "__len__") else values)
        if arr.shape != (n,):
            raise LibraryError(path, f"{rec.name}: {what} has shape {arr.shape}, expected ({n},)")
        if n and not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise LibraryError(path, f"{rec.name}: {what} must be integer pixel values")
        out.append(arr.astype(np.int64))
    if n and (out[2].min() <= 0 or out[2].max() > np.iinfo(np.int32).max):
        raise LibraryError(path, f"{rec.name}: tile sizes must be positive")
    return (np.ascontiguousarray(codes), *out)
