"""The on-disk schema (versions 2 and 3): creating, checking, reading and encoding rows.

docs/library-format.md is the specification. Schema 1 (read-only here) lives in ``legacy.py``.
Design choices of schema 2, for small files (target: at most 24 bytes per tile at 64 bits):

- per tile only what differs from tile to tile: code, ``source_id`` (int32), ``x``/``y``
  (int32: slides are far below 2**31 px) and ``label_id`` (int16) = 22 bytes at 64 bits; the tile
  side is the same for every tile of a source, so it is one ``tile_size`` per source;
- no variable-length strings anywhere: a source's text fields are NUL-terminated UTF-8 in one
  byte column (``/sources/text``) with an end offset per source, and label names likewise. That
  removes HDF5's global heap, whose leftovers after a killed append forced one chunk per row
  (about 0.85 KB per patch source) in schema 1, so every column now has ordinary 16 KiB chunks;
- float descriptors are stored as float16 (half the bytes of float32; the cosine top-k they give
  is measured in docs/benchmarks.md, "footprint") and handed out as float32.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from hashview import __version__
from hashview.code_kinds import code_kind
from hashview.errors import LibraryError
from hashview.library.metadata import MetadataTable, load_metadata
from hashview.library.records import (FORMAT_NAME, SCHEMA_VERSION, ModelInfo, SourceRecord)
from hashview.library.validation import (INT32_MAX, StoredData, committed_rows, generation_of,
                                         model_from_attrs, non_negative, tile_ranges)

TILE_COLUMNS: dict[str, str] = {"source_id": "int32", "x": "int32", "y": "int32",
                                "label_id": "int16"}
# Numeric /sources columns; ``status`` (1 = complete) is written last, after a flush: the commit.
SOURCE_COLUMNS: dict[str, str] = {
    "tile_start": "int64", "tile_count": "int32", "tile_size": "int32", "byte_size": "int64",
    "mtime": "float64", "mpp": "float64", "width": "int32", "height": "int32",
    "flags": "uint8", "added": "int64", "text_end": "int64", "status": "uint8",
}
TEXT_FIELDS = ("path", "name", "fingerprint", "label", "patient_id")
FLAG_PATCH, FLAG_MPP_ASSUMED = 1, 2
STATUS_COMMITTED = 1
CHUNK_BYTES = 1 << 14  # 16 KiB: small libraries stay small; reads of 10**7 rows stay fast
SOURCE_CHUNK_ROWS = 256
# Appends and new libraries write schema 2: a file without case metadata needs nothing of schema
# 3, so older HashView versions keep reading it. A copy-on-write edit writes schema 3.
NEW_FILE_VERSION = 2


@dataclass
class Snapshot:
    """What a reader knows after loading a library: a committed prefix of the file."""

    version: int
    model: ModelInfo
    sources: list[SourceRecord]
    source_tile_size: Optional[np.ndarray]  # int32 per source (schema 2); None for schema 1
    labels: list[str]
    n_tiles: int
    generation: int
    created: str
    updated: str
    metadata: MetadataTable = field(default_factory=MetadataTable)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_to_epoch(text: str) -> int:
    try:
        return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
                   .replace(tzinfo=timezone.utc).timestamp())
    except (TypeError, ValueError):
        return 0


def epoch_to_iso(seconds: int) -> str:
    """The ISO time of ``seconds``; "" when unknown (0) or beyond what a date can say."""
    if seconds <= 0:
        return ""
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return ""


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


def _column(group: h5py.Group, name: str, dtype, row_shape: tuple = (), rows: int = 0) -> None:
    row_bytes = np.dtype(dtype).itemsize * int(np.prod(row_shape, dtype=np.int64))
    chunk_rows = rows or max(1, CHUNK_BYTES // row_bytes)
    group.create_dataset(name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=dtype,
                         chunks=(chunk_rows, *row_shape))


def write_skeleton(f: h5py.File, info: ModelInfo, version: int = NEW_FILE_VERSION) -> None:
    now = utc_now()
    f.attrs.update({
        "format": FORMAT_NAME, "schema_version": version, "code_kind": info.code_kind,
        "model_name": info.name, "model_arch": info.arch, "bits": info.bits,
        "model_sha256": info.sha256, "tile_size": info.tile_size,
        "target_mpp": info.target_mpp, "created": now, "updated": now,
        "hashview_version": __version__, "n_tiles": 0, "n_sources": 0, "generation": 0,
    })
    if info.stain_reference:  # optional: a reader that does not know it ignores it
        f.attrs["stain_reference"] = info.stain_reference
    tiles = f.create_group("tiles")
    # No compression anywhere: codes would not shrink, and fixed-size chunks are rewritten in
    # place on append, whereas a compressed chunk moves (and a crash could leave the index
    # pointing at reused space).
    codes_kind = code_kind(info.code_kind)
    _column(tiles, "codes", codes_kind.stored_dtype, codes_kind.row_shape(info.bits))
    for name, kind in TILE_COLUMNS.items():
        _column(tiles, name, np.dtype(kind))
    sources = f.create_group("sources")
    for name, kind in SOURCE_COLUMNS.items():
        _column(sources, name, np.dtype(kind), rows=SOURCE_CHUNK_ROWS)
    _column(sources, "text", np.uint8)
    labels = f.create_group("labels")
    _column(labels, "text", np.uint8, rows=1024)
    _column(labels, "text_end", np.int64, rows=128)


def file_version(f: h5py.File, path: Path) -> int:
    """Check the format attributes; return the schema version (1 to 3)."""
    fmt = f.attrs.get("format")
    if fmt is None:
        raise LibraryError(path, "not a HashView library (no format attribute)")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if str(fmt) != FORMAT_NAME:
        raise LibraryError(path, f"not a HashView library (format is {str(fmt)!r})")
    version = f.attrs.get("schema_version")
    # an integer and nothing else: int() of a complex, a string or an array warns or raises
    if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
        raise LibraryError(path, "not a valid HashView library (bad schema_version)")
    version = int(version)
    if version > SCHEMA_VERSION:
        raise LibraryError(path, f"schema version {version} is newer than this HashView supports "
                                 f"({SCHEMA_VERSION}); upgrade HashView")
    if version < 1:
        raise LibraryError(path, f"unsupported schema version {version}")
    for key in ("model_name", "model_arch", "bits", "model_sha256", "tile_size", "target_mpp"):
        if key not in f.attrs:
            raise LibraryError(path, f"library is incomplete (missing attribute {key})")
    return version


def model_info_from_args(model_name, model_arch, bits, model_sha256, tile_size, target_mpp,
                         path, code_kind: Optional[str] = None) -> ModelInfo:
    """ModelInfo from Library.create-style arguments (model_name may be a card, dict...)."""
    try:
        if isinstance(model_name, str):
            return ModelInfo.coerce({"name": model_name, "arch": model_arch, "bits": bits,
                                     "sha256": model_sha256},
                                    tile_size=tile_size, target_mpp=target_mpp,
                                    code_kind=code_kind)
        return ModelInfo.coerce(model_name, tile_size=tile_size, target_mpp=target_mpp,
                                code_kind=code_kind)
    except (ValueError, TypeError, AttributeError) as e:
        raise LibraryError(path, f"bad model description ({e})") from None


# ------------------------------------------------------------------ text columns
def encode_text(rec: SourceRecord) -> bytes:
    """The NUL-terminated text fields of one source (name left empty when it is the file name)."""
    name = "" if rec.name == os.path.basename(rec.path) else rec.name
    values = (rec.path, name, rec.fingerprint, rec.label or "", rec.patient_id or "")
    return "".join(v + "\0" for v in values).encode("utf-8")


def split_text(blob: np.ndarray, n_rows: int, per_row: int, path: Path) -> list[str]:
    """``n_rows * per_row`` NUL-terminated strings from a byte column."""
    values = blob.tobytes().decode("utf-8", "replace").split("\0")
    if len(values) != n_rows * per_row + 1 or values[-1]:
        raise LibraryError(path, "library is inconsistent (text column does not match its "
                                 "rows); the file is damaged")
    return values[:-1]


def read_labels(data: StoredData, path: Path) -> list[str]:
    ends_ds = data.dataset("labels/text_end", "int64")
    ends = data.read(ends_ds, len(ends_ds))
    text = data.dataset("labels/text", "uint8")
    n = int(np.searchsorted(ends, len(text), side="right"))  # names whose bytes are all there
    return split_text(data.read(text, int(ends[n - 1]) if n else 0), n, 1, path)


# ------------------------------------------------------------------ rows
def source_rows(recs: list[SourceRecord], tile_sizes: list[int],
                text_start: int) -> tuple[dict[str, np.ndarray], bytes]:
    """Numeric column values (without ``status``) and the text bytes of new source rows."""
    texts = [encode_text(r) for r in recs]
    ends = text_start + np.cumsum([len(t) for t in texts], dtype=np.int64)
    cols = {
        "tile_start": [r.tile_start for r in recs], "tile_count": [r.tile_count for r in recs],
        "tile_size": tile_sizes, "byte_size": [int(r.byte_size) for r in recs],
        "mtime": [float(r.mtime) for r in recs],
        "mpp": [math.nan if r.mpp is None else float(r.mpp) for r in recs],
        "width": [int(r.width) for r in recs], "height": [int(r.height) for r in recs],
        "flags": [(FLAG_PATCH if r.kind == "patch" else 0)
                  | (FLAG_MPP_ASSUMED if r.mpp_assumed else 0) for r in recs],
        "added": [iso_to_epoch(r.added) for r in recs], "text_end": ends,
    }
    return ({name: np.asarray(v, dtype=SOURCE_COLUMNS[name]) for name, v in cols.items()},
            b"".join(texts))


def load(f: h5py.File, path: Path) -> Snapshot:
    """Read a schema-2 or -3 library's committed prefix (see "Reading" in docs/library-format.md),
    checking every column before it is read (``validation.py``)."""
    model = model_from_attrs(f, path)
    data = StoredData(f, path)
    src = {name: data.dataset(f"sources/{name}", kind) for name, kind in SOURCE_COLUMNS.items()}
    tiles = {name: data.dataset(f"tiles/{name}", kind) for name, kind in TILE_COLUMNS.items()}
    codes_kind = code_kind(model.code_kind)
    tiles["codes"] = data.dataset("tiles/codes", codes_kind.stored_dtype.name,
                                  codes_kind.row_shape(model.bits))
    source_text = data.dataset("sources/text", "uint8")
    n_rows = min(len(ds) for ds in src.values())
    n, status = committed_rows(data, src["status"], n_rows, STATUS_COMMITTED)
    cols = {name: data.read(ds, n) for name, ds in src.items() if name != "status"}
    cols["status"] = status
    n_tiles = tile_ranges(path, cols["tile_start"], cols["tile_count"])
    for what in ("tile_size", "width", "height", "byte_size"):
        non_negative(path, what, cols[what])
    text_end = int(cols["text_end"][-1]) if n else 0
    if not 0 <= text_end <= len(source_text):
        raise LibraryError(path, "library is inconsistent (source text is shorter than the "
                                 "sources table says); the file is damaged")
    text = split_text(data.read(source_text, text_end), n, len(TEXT_FIELDS), path)
    for ds in tiles.values():
        if len(ds) < n_tiles:
            raise LibraryError(path, "library is inconsistent (tile arrays shorter than the "
                                     "sources table says); the file is damaged")
        data.reserve(ds, n_tiles)  # read later, as asked for
    labels = read_labels(data, path)
    lists = {name: col.tolist() for name, col in cols.items()}
    added_iso: dict[int, str] = {}
    sources = []
    for i in range(n):
        p, name, fingerprint, label, patient = text[5 * i: 5 * i + 5]
        added = lists["added"][i]
        if added not in added_iso:
            added_iso[added] = epoch_to_iso(added)
        mpp, flags = lists["mpp"][i], lists["flags"][i]
        sources.append(SourceRecord(
            id=i, path=p, name=name or os.path.basename(p), fingerprint=fingerprint,
            byte_size=lists["byte_size"][i], mtime=lists["mtime"][i],
            mpp=None if math.isnan(mpp) else mpp, width=lists["width"][i],
            height=lists["height"][i], kind="patch" if flags & FLAG_PATCH else "slide",
            label=label or None, patient_id=patient or None,
            tile_start=lists["tile_start"][i], tile_count=lists["tile_count"][i],
            mpp_assumed=bool(flags & FLAG_MPP_ASSUMED), added=added_iso[added]))
    version = file_version(f, path)
    metadata = load_metadata(f, data, n, path) if version >= 3 else MetadataTable()
    a = f.attrs
    return Snapshot(version=version, model=model, sources=sources,
                    source_tile_size=cols["tile_size"].astype(np.int32),
                    labels=labels, n_tiles=n_tiles,
                    generation=generation_of(f, path), created=str(a["created"]),
                    updated=str(a["updated"]), metadata=metadata)


def read_tiles(f: h5py.File, start: int, stop: int) -> dict[str, np.ndarray]:
    """The stored per-tile columns (``source_id, x, y, label_id``) of rows ``start:stop``."""
    t = f["tiles"]
    return {name: t[name][start:stop] for name in TILE_COLUMNS}


def validate_tiles(path: Path, model: ModelInfo, rec: SourceRecord, codes, xs, ys, sizes):
    """Check one source's tile arrays; return (stored codes, int32 xs, int32 ys, tile size)."""
    codes = _validate_codes(path, model, rec, codes)
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
    xs, ys, sizes = out
    if n and (sizes.min() <= 0 or sizes.max() > INT32_MAX):
        raise LibraryError(path, f"{rec.name}: tile sizes must be positive")
    if n and sizes.min() != sizes.max():
        raise LibraryError(path, f"{rec.name}: the tiles of one source must all have the same "
                                 f"size (got {sizes.min()} to {sizes.max()} px)")
    for what, arr in (("xs", xs), ("ys", ys)):
        if n and (arr.min() < -INT32_MAX or arr.max() > INT32_MAX):
            raise LibraryError(path, f"{rec.name}: {what} beyond ±2**31 px")
    if max(rec.width, rec.height) > INT32_MAX or min(rec.width, rec.height) < 0:
        raise LibraryError(path, f"{rec.name}: width/height out of range")
    return codes, xs.astype(np.int32), ys.astype(np.int32), int(sizes[0]) if n else 0


def _validate_codes(path: Path, model: ModelInfo, rec: SourceRecord, codes) -> np.ndarray:
    codes = np.asarray(codes)  # outside the try: input numpy cannot read is not a bad code
    try:
        return code_kind(model.code_kind).storable(codes, model.bits)
    except ValueError as e:
        raise LibraryError(path, f"{rec.name}: {e}") from None
