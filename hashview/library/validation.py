"""Checks on a library file before its contents are trusted: a library may come from anyone.

Opening a library checks, before reading any column:

- every group and dataset is reached by a hard link and stores its data in the file itself:
  no external or soft links, virtual datasets, external raw storage or filters (HashView
  writes none, and a filter could load a plugin);
- every dataset has the rank, row shape and element type of the schema;
- the model attributes are sane (code length, code kind, tiling);
- the rows about to be read are physically stored: a dataset's declared length costs nothing,
  so a sparse dataset claiming 10**8 rows in a 176 KB file is refused by comparing what is read
  with the bytes its chunks hold (``get_storage_size``) and, in total, with the file's size;
- the sources' tile ranges start at 0, are contiguous and have non-negative counts.

What is read per tile later (``source_id``, ``label_id``) is checked as it is read
(:func:`check_tile_rows`), which costs nothing extra at open.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import h5py
import numpy as np

from hashview.code_kinds import code_kind
from hashview.errors import LibraryError, printable
from hashview.library.records import CODE_KINDS, ModelInfo
from hashview.library.stain_attribute import ATTRIBUTE, parse_reference
from hashview.tiling import MAX_TARGET_MPP, MAX_TILE_SIZE, MIN_TARGET_MPP, MIN_TILE_SIZE

MAX_CODE_BITS = 1 << 16  # far above any model's, low enough that one code row is small
MAX_CHUNK_BYTES = 64 << 20  # HashView writes 16 KiB chunks; reading one row loads its chunk
INT32_MAX = int(np.iinfo(np.int32).max)
_CHECK_BLOCK_ROWS = 1 << 20  # per-tile checks run in blocks: bounded temporary memory
_STORED_LAYOUTS = (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT)


def damaged(path: Path, detail: str) -> LibraryError:
    return LibraryError(path, f"library is damaged ({detail})")


# ------------------------------------------------------------------ attributes
def _scalar_attr(f: h5py.File, path: Path, key: str):
    value = f.attrs.get(key)
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise damaged(path, f"attribute {key} is not a single value")
        value = value.reshape(())[()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def int_attr(f: h5py.File, path: Path, key: str, low: int, high: int) -> int:
    """The integer attribute ``key`` within ``low .. high``, or LibraryError."""
    value = _scalar_attr(f, path, key)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise damaged(path, f"attribute {key} is not an integer: {printable(repr(value))[:80]}")
    if not low <= int(value) <= high:
        raise damaged(path, f"attribute {key} is {int(value)}, outside {low}..{high}")
    return int(value)


def model_from_attrs(f: h5py.File, path: Path) -> ModelInfo:
    """The model attributes of a library (``file_version`` has checked they are present)."""
    values = {key: _scalar_attr(f, path, key) for key in
              ("model_name", "model_arch", "model_sha256")}
    for key, value in values.items():
        if not isinstance(value, str):
            raise damaged(path, f"attribute {key} is not text")
    kind = _scalar_attr(f, path, "code_kind") if "code_kind" in f.attrs else "binary"
    if kind not in CODE_KINDS:
        raise damaged(path, f"code_kind is {printable(repr(kind))[:80]}, not one of "
                            f"{', '.join(CODE_KINDS)}")
    bits = int_attr(f, path, "bits", 1, MAX_CODE_BITS)
    if code_kind(kind).length_problem(bits):  # bits >= 1: only a binary length can be wrong
        raise damaged(path, f"binary codes of {bits} bits: the length must be a multiple of 8")
    # The tiling bounds every search plans with (a 1 px tile would cut a patch into 50,000).
    tile_size = int_attr(f, path, "tile_size", MIN_TILE_SIZE, MAX_TILE_SIZE)
    target_mpp = _scalar_attr(f, path, "target_mpp")
    if (isinstance(target_mpp, (bool, np.bool_)) or not isinstance(target_mpp, numbers.Real)
            or not MIN_TARGET_MPP <= target_mpp <= MAX_TARGET_MPP):
        raise damaged(path, f"target_mpp is {printable(repr(target_mpp))[:80]}, not a number "
                            f"from {MIN_TARGET_MPP:g} to {MAX_TARGET_MPP:g} µm/px")
    stain = _scalar_attr(f, path, ATTRIBUTE) if ATTRIBUTE in f.attrs else ""
    if stain:
        try:
            parse_reference(stain)
        except ValueError as exc:
            raise damaged(path, f"stain_reference {exc}") from None
    return ModelInfo(name=values["model_name"], arch=values["model_arch"], bits=bits,
                     sha256=values["model_sha256"], tile_size=tile_size,
                     target_mpp=float(target_mpp), code_kind=str(kind),
                     stain_reference=stain or "")


def generation_of(f: h5py.File, path: Path) -> int:
    """The commit count (schema 1 has none: its source count grows with every commit)."""
    key = "generation" if "generation" in f.attrs else "n_sources"
    return int_attr(f, path, key, 0, 2 ** 62) if key in f.attrs else 0


# ------------------------------------------------------------------ datasets
def _dtype_matches(actual: np.dtype, expected: str) -> bool:
    if expected == "str":
        return h5py.check_string_dtype(actual) is not None
    if expected == "bool":
        return actual == np.bool_
    wanted = np.dtype(expected)
    return actual.kind == wanted.kind and actual.itemsize == wanted.itemsize


class StoredData:
    """The datasets of one open library file, each checked before it is read.

    Every read goes through :meth:`read` (or is announced with :meth:`reserve`), which refuses
    rows that the dataset's storage, or the file as a whole, cannot hold.
    """

    def __init__(self, f: h5py.File, path: Path):
        self.f, self.path = f, path
        self.file_size = int(f.id.get_filesize())
        self._planned = 0  # bytes of the rows read or reserved so far: all lie in the file

    def dataset(self, name: str, dtype: str, row_shape: tuple = ()) -> h5py.Dataset:
        """``/name``, reached through hard links only, as plain storage of the given type."""
        node = self.f
        parts = name.split("/")
        for i, part in enumerate(parts):
            where = "/" + "/".join(parts[: i + 1])
            link = node.get(part, getlink=True)
            if link is None:
                raise LibraryError(self.path, f"library is incomplete (missing {where})")
            if not isinstance(link, h5py.HardLink):
                raise damaged(self.path, f"{where} is a link to elsewhere; library data must "
                                         "be stored in the file itself")
            node = node[part]
            wanted = h5py.Dataset if i == len(parts) - 1 else h5py.Group
            if not isinstance(node, wanted):
                raise damaged(self.path, f"{where} is not a {wanted.__name__.lower()}")
        self._check_storage(node, "/" + name)
        if node.ndim != 1 + len(row_shape) or tuple(node.shape[1:]) != tuple(row_shape):
            raise damaged(self.path, f"/{name} has shape {node.shape}, expected "
                                     f"(n{''.join(f', {d}' for d in row_shape)})")
        if not _dtype_matches(node.dtype, dtype):
            raise damaged(self.path, f"/{name} holds {node.dtype}, expected {dtype}")
        return node

    def _check_storage(self, ds: h5py.Dataset, where: str) -> None:
        plist = ds.id.get_create_plist()
        if (ds.is_virtual or ds.external or plist.get_external_count()
                or plist.get_layout() not in _STORED_LAYOUTS):
            raise damaged(self.path, f"{where} is not stored in the file itself (virtual or "
                                     "external storage)")
        if plist.get_nfilters():
            raise damaged(self.path, f"{where} is compressed or filtered; HashView libraries "
                                     "never are")
        if ds.chunks is not None:
            chunk_bytes = int(np.prod(ds.chunks, dtype=np.int64)) * ds.dtype.itemsize
            if chunk_bytes > MAX_CHUNK_BYTES:
                raise damaged(self.path, f"{where} has chunks of {chunk_bytes} bytes")

    def reserve(self, ds: h5py.Dataset, rows: int) -> None:
        """Refuse unless rows ``0 .. rows-1`` of ``ds`` are stored in the file."""
        row_bytes = _row_bytes(ds)
        need = int(rows) * row_bytes
        stored = int(ds.id.get_storage_size())
        if need > stored:
            raise damaged(self.path, f"{ds.name} should hold {rows} rows, but the file "
                                     f"stores only {stored // row_bytes}")
        self._planned += need
        if self._planned > self.file_size:
            raise damaged(self.path, f"its tables claim at least {self._planned} bytes of "
                                     f"data, more than the file's {self.file_size}")

    def read(self, ds: h5py.Dataset, rows: int) -> np.ndarray:
        """Rows ``0 .. rows-1`` of ``ds`` (strings decoded as UTF-8), once they are checked."""
        self.reserve(ds, rows)
        if h5py.check_string_dtype(ds.dtype) is not None:
            return ds.asstr(errors="replace")[:rows]
        return ds[:rows]

    def stored_rows(self, ds: h5py.Dataset) -> int:
        """How many rows of ``ds`` its storage can hold (at most its length)."""
        return min(len(ds), int(ds.id.get_storage_size()) // _row_bytes(ds))


def _row_bytes(ds: h5py.Dataset) -> int:
    return max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))


# ------------------------------------------------------------------ sources and tiles
def tile_ranges(path: Path, tile_start: np.ndarray, tile_count: np.ndarray) -> int:
    """Check that source ``i`` owns tiles ``tile_start[i] ..`` right after source ``i - 1``'s;
    return the number of tiles."""
    starts = np.asarray(tile_start, np.int64)
    counts = np.asarray(tile_count, np.int64)
    if not len(starts):
        return 0
    if counts.min() < 0:
        i = int(np.argmax(counts < 0))
        raise damaged(path, f"source {i} has tile_count {counts[i]}")
    ends = np.cumsum(counts)
    expected = ends - counts
    wrong = np.flatnonzero(starts != expected)
    if len(wrong):
        i = int(wrong[0])
        raise damaged(path, f"source {i} has tile_start {starts[i]}, expected {expected[i]} "
                            "(tiles of consecutive sources are contiguous)")
    return int(ends[-1])


def check_tile_rows(path: Path, tile_ends: np.ndarray, n_labels: int, start: int,
                    source_id: np.ndarray, label_id: np.ndarray) -> None:
    """Check tiles ``start ..`` as read: each belongs to the source whose range holds it, and
    its label is -1 (unknown) or in the label table. ``tile_ends``: each source's end tile."""
    for offset in range(0, len(source_id), _CHECK_BLOCK_ROWS):
        lo = start + offset
        ids = source_id[offset: offset + _CHECK_BLOCK_ROWS]
        labels = label_id[offset: offset + _CHECK_BLOCK_ROWS]
        hi = lo + len(ids)
        first = int(np.searchsorted(tile_ends, lo, side="right"))
        last = int(np.searchsorted(tile_ends, hi - 1, side="right"))
        ends = tile_ends[first: last + 1]
        starts = np.concatenate([tile_ends[first - 1: first] if first else [0], ends[:-1]])
        counts = np.minimum(ends, hi) - np.maximum(starts, lo)
        expected = np.repeat(np.arange(first, last + 1), counts)
        if not np.array_equal(ids, expected):
            i = int(np.flatnonzero(ids != expected)[0])
            raise damaged(path, f"tile {lo + i} has source_id {ids[i]}, but lies in the tiles "
                                f"of source {expected[i]}")
        if len(labels) and (labels.min() < -1 or labels.max() >= n_labels):
            i = int(np.flatnonzero((labels < -1) | (labels >= n_labels))[0])
            raise damaged(path, f"tile {lo + i} has label_id {labels[i]}, but the library has "
                                f"{n_labels} labels")


def committed_rows(data: StoredData, status: h5py.Dataset, rows: int, committed) -> tuple[
        int, np.ndarray]:
    """How many leading source rows are committed, and their ``status`` values.

    Only stored rows can be committed (a commit writes them), so no more than the status
    column's storage is read, whatever length the file declares.
    """
    values = data.read(status, min(rows, data.stored_rows(status)))
    not_done = np.flatnonzero(values != committed)
    n = int(not_done[0]) if len(not_done) else len(values)
    return n, values[:n]


def non_negative(path: Path, what: str, values: np.ndarray) -> None:
    """Refuse a source column (sizes, counts) holding a negative value."""
    if len(values) and values.min() < 0:
        i = int(np.flatnonzero(values < 0)[0])
        raise damaged(path, f"source {i} has {what} {values[i]}")
