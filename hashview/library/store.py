"""The HDF5 library file: packed codes, tile positions, sources and labels.

Layout and crash-safety rules are specified in docs/library-format.md. In short: an append
writes tiles and source rows past the committed end, flushes, then sets the rows' status to
"complete" and flushes again; only rows of /sources whose status is "complete" count, and tiles
past the last complete source are ignored (and cut off when the file is opened for writing).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import h5py
import numpy as np

from hashview.errors import LibraryError
from hashview.library.records import (SCHEMA_VERSION, SOURCE_COLUMNS, STATUS_COMPLETE,
                                      TILE_COLUMNS, ModelInfo, SourceRecord, TileRecord)
from hashview.library.schema import (check_header, model_info_from_args,
                                     reason_from_oserror, record_from_row, row_values, utc_now,
                                     validate_tiles, write_skeleton)

_MAX_LABELS = np.iinfo(np.int16).max
# HDF5 shares one handle when a process opens a file twice, so its file lock cannot stop a second
# writer in the same process; this set does.
_OPEN_FOR_WRITING: set[str] = set()


class Library:
    """An open library file; make one with :meth:`create`, :meth:`open`, :meth:`open_or_create`."""

    def __init__(self, h5: h5py.File, path: Path, mode: str):
        self._f = h5
        self._path = path
        self._mode = mode
        self._load()
        if mode == "a":
            self._prepare_for_writing()
            _OPEN_FOR_WRITING.add(os.path.realpath(path))

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | Path, model_name: Any, model_arch: Optional[str] = None,
               bits: Optional[int] = None, model_sha256: Optional[str] = None,
               tile_size: int = 224, target_mpp: float = 0.5, overwrite: bool = False) -> "Library":
        """Create an empty library (opened for appending).

        ``model_name`` may also be a ModelInfo, a ModelCard or a dict (then the other model
        arguments may be left out). Refuses an existing file unless ``overwrite``.
        """
        info = model_info_from_args(model_name, model_arch, bits, model_sha256, tile_size,
                                    target_mpp, path)
        path = Path(path)
        if path.exists() and not overwrite:
            raise LibraryError(path, "already exists (open it, or pass overwrite=True to "
                                     "replace it)")
        if os.path.realpath(path) in _OPEN_FOR_WRITING:
            raise LibraryError(path, "already open for writing in this program")
        if info.bits <= 0 or info.bits % 8:
            raise LibraryError(path, f"code length must be a positive multiple of 8 bits, "
                                     f"not {info.bits}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Build in a temporary file and rename, so a crash never leaves a half-made library.
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                with h5py.File(tmp, "w") as f:
                    write_skeleton(f, info)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as e:
            raise LibraryError(path, f"cannot create ({e.strerror or e})") from None
        return cls.open(path, "a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Library":
        """Open an existing library, ``mode`` "r" (read) or "a" (append)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        path = Path(path)
        if not path.exists():
            raise LibraryError(path, "no such file")
        if path.is_dir():
            raise LibraryError(path, "is a folder, not a library file")
        if mode == "a" and os.path.realpath(path) in _OPEN_FOR_WRITING:
            raise LibraryError(path, "already open for writing in this program")
        try:
            if path.stat().st_size == 0:
                raise LibraryError(path, "not an HDF5 file (empty file)")
            if not h5py.is_hdf5(str(path)):
                raise LibraryError(path, "not an HDF5 file")
            h5 = h5py.File(path, "r" if mode == "r" else "r+")
        except LibraryError:
            raise
        except (OSError, ValueError, RuntimeError) as e:
            raise LibraryError(path, reason_from_oserror(e, mode == "a")) from None
        try:
            check_header(h5, path)
            return cls(h5, path, mode)
        except BaseException as e:
            h5.close()
            if isinstance(e, (OSError, KeyError, ValueError, TypeError, RuntimeError)):
                raise LibraryError(path, reason_from_oserror(e, mode == "a")) from None
            raise

    @classmethod
    def open_or_create(cls, path: str | Path, model_name: Any, model_arch: Optional[str] = None,
                       bits: Optional[int] = None, model_sha256: Optional[str] = None,
                       tile_size: int = 224, target_mpp: float = 0.5) -> "Library":
        """Open ``path`` for appending, creating it if missing; refuse a library of another model.

        ``tile_size``/``target_mpp`` only apply to a new library; an existing one keeps its own
        (compare with :attr:`tile_size`/:attr:`target_mpp` and follow them).
        """
        if not Path(path).exists():
            return cls.create(path, model_name, model_arch, bits, model_sha256, tile_size,
                              target_mpp)
        lib = cls.open(path, "a")
        try:
            lib.check_model(model_name, model_arch, bits, model_sha256)
        except BaseException:
            lib.close()
            raise
        return lib

    def check_model(self, model_name: Any, model_arch: Optional[str] = None,
                    bits: Optional[int] = None, model_sha256: Optional[str] = None) -> None:
        """Raise LibraryError unless codes of this model (same sha256 and bits) belong here.

        ``model_name`` may be a ModelCard/ModelInfo/dict as for :meth:`create`.
        """
        other = model_info_from_args(model_name, model_arch, bits, model_sha256, None, None,
                                     self._path)
        mine = self.model
        if other.sha256 != mine.sha256 or other.bits != mine.bits:
            raise LibraryError(self._path, f"made with {mine.describe()}; cannot add codes from "
                                           f"{other.describe()} (use another library file)")

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None
            if self._mode == "a":
                _OPEN_FOR_WRITING.discard(os.path.realpath(self._path))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Library({str(self._path)!r}, {self.n_sources} sources, {self.n_tiles} tiles)"

    # -------------------------------------------------------------- properties
    path = property(lambda self: str(self._path))
    mode = property(lambda self: self._mode)
    model = property(lambda self: self._model)
    bits = property(lambda self: self._model.bits)
    code_bytes = property(lambda self: self._model.bits // 8)
    model_name = property(lambda self: self._model.name)
    model_arch = property(lambda self: self._model.arch)
    model_sha256 = property(lambda self: self._model.sha256)
    tile_size = property(lambda self: self._model.tile_size)
    target_mpp = property(lambda self: self._model.target_mpp)
    n_tiles = property(lambda self: self._n_tiles)
    n_sources = property(lambda self: len(self._sources))
    created = property(lambda self: str(self._file.attrs["created"]))
    updated = property(lambda self: str(self._file.attrs["updated"]))

    @property
    def _file(self) -> h5py.File:
        if self._f is None:
            raise LibraryError(self._path, "library is closed")
        return self._f

    # ----------------------------------------------------------------- reading
    def codes(self) -> np.ndarray:
        """All stored codes, ``np.uint8`` of shape (n_tiles, bits/8)."""
        with self._guard():
            return np.ascontiguousarray(self._file["tiles/codes"][: self._n_tiles], np.uint8)

    def tile_table(self) -> dict[str, np.ndarray]:
        """Per-tile arrays ``source_id, x, y, size, label_id`` (label_id -1 = unknown)."""
        with self._guard():
            return {name: self._file["tiles"][name][: self._n_tiles] for name in TILE_COLUMNS}

    def sources(self) -> list[SourceRecord]:
        return [replace(s) for s in self._sources]

    def source(self, source_id: int) -> SourceRecord:
        if not 0 <= int(source_id) < len(self._sources):
            raise LibraryError(self._path, f"no source with id {source_id}")
        return replace(self._sources[int(source_id)])

    def label_names(self) -> list[str]:
        return list(self._labels)

    def contains(self, fingerprint: str) -> bool:
        """True if a source with this content fingerprint is stored (then skip re-indexing it)."""
        return fingerprint in self._by_fingerprint

    def find_source(self, fingerprint: Optional[str] = None,
                    path: Optional[str | Path] = None) -> Optional[SourceRecord]:
        """The stored source matching the fingerprint and/or path (latest if several)."""
        if fingerprint is None and path is None:
            raise ValueError("find_source needs a fingerprint or a path")
        wanted = None if path is None else os.path.abspath(str(path))
        for rec in reversed(self._sources):
            if (fingerprint is None or rec.fingerprint == fingerprint) and (
                    wanted is None or rec.path == wanted):
                return replace(rec)
        return None

    def tile(self, index: int) -> TileRecord:
        index = int(index)
        if not 0 <= index < self._n_tiles:
            raise IndexError(f"tile {index} out of range (library has {self._n_tiles} tiles)")
        with self._guard():
            t = self._file["tiles"]
            label_id = int(t["label_id"][index])
            return TileRecord(index, int(t["source_id"][index]), int(t["x"][index]),
                              int(t["y"][index]), int(t["size"][index]),
                              self._labels[label_id] if label_id >= 0 else None)

    def source_tiles(self, source_id: int) -> np.ndarray:
        """Level-0 ``(x, y, size)`` rows (int64) of one source's tiles, e.g. to outline them."""
        rec = self.source(source_id)
        start, stop = rec.tile_start, rec.tile_start + rec.tile_count
        with self._guard():
            t = self._file["tiles"]
            return np.stack([t[name][start:stop].astype(np.int64) for name in ("x", "y", "size")],
                            axis=1).reshape(-1, 3)

    def stats(self) -> dict[str, Any]:
        """Summary for ``hashview info``."""
        label_ids = self.tile_table()["label_id"]
        counts = np.bincount(label_ids[label_ids >= 0].astype(np.int64),
                             minlength=len(self._labels))
        file_size = self._path.stat().st_size
        kinds: dict[str, int] = {}
        for s in self._sources:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
        return {
            "path": str(self._path), "schema_version": SCHEMA_VERSION,
            "n_tiles": self._n_tiles, "n_sources": len(self._sources),
            "sources_by_kind": kinds,
            "sources_without_tiles": sum(1 for s in self._sources if s.tile_count == 0),
            "bits": self.bits, "code_bytes_per_tile": self.code_bytes,
            "model": {"name": self.model_name, "arch": self.model_arch,
                      "sha256": self.model_sha256},
            "tile_size": self.tile_size, "target_mpp": self.target_mpp,
            "labels": {name: int(c) for name, c in zip(self._labels, counts) if c > 0},
            "unlabeled_tiles": int(np.sum(label_ids < 0)),
            "file_size": file_size,
            "file_bytes_per_tile": (file_size / self._n_tiles) if self._n_tiles else None,
            "created": self.created, "updated": self.updated,
        }

    # ----------------------------------------------------------------- writing
    def add_source(self, record: SourceRecord | Mapping[str, Any], codes: np.ndarray,
                   xs: Iterable[int], ys: Iterable[int], sizes: Iterable[int],
                   tile_labels: Optional[Sequence[Optional[str]]] = None) -> SourceRecord:
        """Append one complete source and its tiles; return its stored record.

        A source whose fingerprint is already stored is not added again: the existing record is
        returned (check :meth:`contains` first to skip the encoding work). Zero tiles are fine:
        the source is recorded so it is not retried. ``tile_labels`` (one per tile, None =
        unknown) defaults to the source's own label for every tile.
        """
        return self.add_sources([(record, codes, xs, ys, sizes, tile_labels)])[0]

    def add_sources(self, items: Iterable[tuple]) -> list[SourceRecord]:
        """Append many sources in one commit (use for patch folders: one flush per batch).

        ``items``: tuples ``(record, codes, xs, ys, sizes[, tile_labels])`` as for
        :meth:`add_source`. Everything is validated before anything is written; a crash leaves
        the library as it was before the call, or with a prefix of the batch committed.
        """
        if self._mode != "a":
            raise LibraryError(self._path, "opened read-only; open with mode='a' to add sources")
        results: list[Any] = []  # a stored record, or an int: position in `pending`
        pending: list[tuple] = []
        in_batch: dict[str, int] = {}
        for record, codes, xs, ys, sizes, *rest in items:
            try:
                rec = SourceRecord.from_input(record)
            except (ValueError, TypeError) as e:
                raise LibraryError(self._path, f"bad source record: {e}") from None
            if rec.fingerprint in self._by_fingerprint:
                results.append(replace(self._by_fingerprint[rec.fingerprint]))
                continue
            if rec.fingerprint in in_batch:
                results.append(in_batch[rec.fingerprint])
                continue
            codes, xs, ys, sizes = validate_tiles(self._path, self.bits, rec, codes, xs, ys, sizes)
            tile_labels = rest[0] if rest and rest[0] is not None else [rec.label] * len(codes)
            if len(tile_labels) != len(codes):
                raise LibraryError(self._path, f"{rec.name}: {len(tile_labels)} tile labels "
                                               f"for {len(codes)} tiles")
            in_batch[rec.fingerprint] = len(pending)
            results.append(len(pending))
            pending.append((rec, codes, xs, ys, sizes, list(tile_labels)))
        stored = self._commit(pending) if pending else []
        return [replace(stored[r]) if isinstance(r, int) else r for r in results]

    def _commit(self, pending: list[tuple]) -> list[SourceRecord]:
        counts = [len(p[1]) for p in pending]
        start, row0, total = self._n_tiles, len(self._sources), sum(counts)
        with self._guard(writing=True):
            label_ids = self._label_ids([label for p in pending for label in p[5]])
            # 1. tiles, past the committed end: invisible until their source rows are complete
            columns = {"codes": np.concatenate([p[1] for p in pending]),
                       "source_id": np.repeat(np.arange(row0, row0 + len(pending)), counts),
                       "x": np.concatenate([p[2] for p in pending]),
                       "y": np.concatenate([p[3] for p in pending]),
                       "size": np.concatenate([p[4] for p in pending]), "label_id": label_ids}
            tiles = self._file["tiles"]
            for name, data in columns.items():
                tiles[name].resize(start + total, axis=0)
                tiles[name][start:] = data
            # 2. the source rows; status last, after a flush: "complete" is the commit mark.
            # The flush puts the tiles and the other columns on disk before any status does.
            now = utc_now()
            starts = start + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            recs = [replace(p[0], id=row0 + j, tile_start=int(starts[j]), tile_count=counts[j],
                            added=now) for j, p in enumerate(pending)]
            rows = [row_values(rec) for rec in recs]
            end = row0 + len(recs)
            for name in SOURCE_COLUMNS:
                if name == "status":
                    self._flush()
                ds = self._file["sources"][name]
                ds.resize(end, axis=0)
                values = [row[name] for row in rows]
                is_str = isinstance(values[0], str)
                ds[row0:end] = np.array(values, dtype=object if is_str else None)
            # 3. counts (informative; readers derive them from the complete rows)
            attrs = self._file.attrs
            attrs["n_tiles"], attrs["n_sources"], attrs["updated"] = start + total, end, now
            self._flush()
        self._n_tiles = start + total
        for rec in recs:
            self._sources.append(rec)
            self._by_fingerprint[rec.fingerprint] = rec
        return recs

    # ----------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _guard(self, writing: bool = False):
        """Turn HDF5/OS errors into one-line LibraryErrors naming the file."""
        try:
            yield
        except LibraryError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            if writing:
                detail = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                raise LibraryError(self._path, f"write failed ({detail}); sources stored "
                                               "before are kept") from None
            raise LibraryError(self._path, reason_from_oserror(e, False)) from None

    def _flush(self) -> None:
        self._file.flush()
        # fsync narrows the power-loss window; process crashes are covered by flush alone.
        with contextlib.suppress(Exception):
            os.fsync(self._file.id.get_vfd_handle())

    def _load(self) -> None:
        f = self._f
        a = f.attrs
        self._model = ModelInfo(name=str(a["model_name"]), arch=str(a["model_arch"]),
                                bits=int(a["bits"]), sha256=str(a["model_sha256"]),
                                tile_size=int(a["tile_size"]), target_mpp=float(a["target_mpp"]))
        src = f["sources"]
        n_rows = min(len(src[name]) for name in SOURCE_COLUMNS)
        status = src["status"].asstr()[:n_rows]
        n_complete = 0
        while n_complete < n_rows and status[n_complete] == STATUS_COMPLETE:
            n_complete += 1
        cols = {}
        for name, kind in SOURCE_COLUMNS.items():
            ds = src[name].asstr() if kind == "str" else src[name]
            cols[name] = ds[:n_complete]
        self._sources = [record_from_row(i, {k: v[i] for k, v in cols.items()})
                         for i in range(n_complete)]
        self._by_fingerprint = {s.fingerprint: s for s in self._sources}
        last = self._sources[-1] if self._sources else None
        self._n_tiles = last.tile_start + last.tile_count if last else 0
        shortest = min(len(f["tiles"][name]) for name in ("codes", *TILE_COLUMNS))
        if shortest < self._n_tiles or f["tiles/codes"].shape[1] != self._model.bits // 8:
            raise LibraryError(self._path, "library is inconsistent (tile arrays shorter than "
                                           "the sources table says); the file is damaged")
        self._labels = list(f["labels/names"].asstr()[:])
        self._label_index = {name: i for i, name in enumerate(self._labels)}

    def _prepare_for_writing(self) -> None:
        # Keep dirty HDF5 metadata in memory until our explicit flushes, so the file on disk only
        # changes at the commit points of add_source.
        with contextlib.suppress(Exception):
            cfg = self._f.id.get_mdc_config()
            cfg.incr_mode = cfg.flash_incr_mode = cfg.decr_mode = 0  # required to disable evictions
            cfg.evictions_enabled = False
            self._f.id.set_mdc_config(cfg)
        # Drop what an interrupted append left behind (orphan tiles, partial source row).
        with self._guard(writing=True):
            changed = False
            for name in ("codes", *TILE_COLUMNS):
                ds = self._f["tiles"][name]
                if len(ds) != self._n_tiles:
                    ds.resize(self._n_tiles, axis=0)
                    changed = True
            for name in SOURCE_COLUMNS:
                ds = self._f["sources"][name]
                if len(ds) != len(self._sources):
                    ds.resize(len(self._sources), axis=0)
                    changed = True
            if changed or int(self._f.attrs.get("n_tiles", -1)) != self._n_tiles:
                self._f.attrs["n_tiles"] = self._n_tiles
                self._f.attrs["n_sources"] = len(self._sources)
                self._flush()

    def _label_ids(self, labels: list[Optional[str]]) -> np.ndarray:
        new = [name for name in dict.fromkeys(labels) if name and name not in self._label_index]
        if new:
            if len(self._labels) + len(new) > _MAX_LABELS:
                raise LibraryError(self._path, f"too many labels (at most {_MAX_LABELS})")
            # A label added here but never used (crash before commit) is harmless: it has no tiles.
            ds = self._file["labels/names"]
            ds.resize(len(self._labels) + len(new), axis=0)
            ds[len(self._labels):] = new
            for name in new:
                self._label_index[name] = len(self._labels)
                self._labels.append(name)
        return np.array([self._label_index[name] if name else -1 for name in labels], np.int16)
