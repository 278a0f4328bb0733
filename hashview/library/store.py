"""The HDF5 library file: codes, tile positions, sources and labels.

Layout, crash safety and concurrency are specified in docs/library-format.md. In short: an append
writes tiles and source rows past the committed end, flushes, then marks the rows complete and
flushes again; only complete rows of /sources count, and tiles past the last complete source are
ignored (and cut off when the file is opened for writing). HDF5 metadata reaches the file only
while the writer holds the commit lock; readers read under the shared commit lock, each read
from a freshly opened handle, so they see the state of one flush and never HDF5 metadata
cached from an older one (``files.py``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import h5py
import numpy as np

from hashview import code_kinds
from hashview.errors import LibraryError
from hashview.library import files, legacy, schema
from hashview.library.file_access import load_snapshot, read_access, write_new
from hashview.library.files import FileLocks, LockBusy
from hashview.library.metadata import MetadataReading
from hashview.library.records import ModelInfo, SourceRecord, TileRecord
from hashview.library.schema import Snapshot, model_info_from_args, reason_from_oserror
from hashview.library.validation import check_tile_rows, generation_of
from hashview.library.writing import OPEN_FOR_WRITING, LibraryWriting
from hashview.library.stain_attribute import describe as describe_stain


class Library(LibraryWriting, MetadataReading):
    """An open library file; make one with :meth:`create`, :meth:`open`, :meth:`open_or_create`.

    Read-only libraries present the snapshot they were opened at (``generation``); a writer in
    another process may append meanwhile: :meth:`has_changed` tells, and opening again shows
    the new sources.
    """

    def __init__(self, path: Path, mode: str, snapshot: Snapshot, h5: Optional[h5py.File] = None,
                 locks: Optional[FileLocks] = None, inode: Optional[tuple] = None,
                 owns_locks: bool = True):
        self._path = path
        self._mode = mode
        self._f = h5  # writers keep their handle; readers open one per read (see _reading)
        self._locks = locks
        self._owns_locks = owns_locks
        self._inode = inode
        self._closed = False
        self._reserved = 0  # bytes at the file's start known to have their blocks (writers)
        self._use(snapshot)
        if mode == "a":
            OPEN_FOR_WRITING.add(os.path.realpath(path))

    def _use(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._model = snapshot.model
        self._sources = snapshot.sources
        self._by_fingerprint = {s.fingerprint: s for s in self._sources}
        self._labels = snapshot.labels
        self._label_index = {name: i for i, name in enumerate(self._labels)}
        self._n_tiles = snapshot.n_tiles
        self._ends = np.zeros(0, np.int64)

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: str | Path, model_name: Any, model_arch: Optional[str] = None,
               bits: Optional[int] = None, model_sha256: Optional[str] = None,
               tile_size: int = 224, target_mpp: float = 0.5, overwrite: bool = False,
               code_kind: Optional[str] = None) -> "Library":
        """Create an empty library (opened for appending).

        ``model_name`` may also be a ModelInfo, a ModelCard or a dict (then the other model
        arguments may be left out); the code kind comes from its ``code_kind`` ("binary" when
        missing) unless given. Refuses an existing file unless ``overwrite``.
        """
        info = model_info_from_args(model_name, model_arch, bits, model_sha256, tile_size,
                                    target_mpp, path, code_kind)
        path = Path(path)
        if path.exists() and not overwrite:
            raise _Exists(path, "already exists (open it, or pass overwrite=True to replace it)")
        if os.path.realpath(path) in OPEN_FOR_WRITING:
            raise LibraryError(path, "already open for writing in this program")
        length_problem = code_kinds.code_kind(info.code_kind).length_problem(info.bits)
        if length_problem:
            raise LibraryError(path, length_problem)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.remove_stale_temporaries(path)
            # Build in a temporary file and put it in place in one step, so a crash never leaves
            # a half-made library, and a file another process created meanwhile is never
            # replaced (``files.publish``). The writer lock taken on the temporary file stays
            # on the library: no other process can take it over before this one writes.
            tmp, locks = files.make_temp_library(path)
            try:
                write_new(Path(tmp), info)
                files.publish(tmp, path, overwrite)  # on success no temporary file is left
            except BaseException:
                files.discard_temporary(tmp, locks)
                raise
        except FileExistsError:
            raise _Exists(path, "already exists (open it, or pass overwrite=True to replace "
                                "it)") from None
        except LockBusy:
            raise LibraryError(path, "file is in use by another process (locked)") from None
        except (OSError, RuntimeError, ValueError) as e:
            raise LibraryError(path, f"cannot create ({files.write_failure_reason(e)})") from None
        return cls._open_for_writing(path, locks)

    @classmethod
    def _create_unlisted(cls, path: Path, info: ModelInfo, locks: FileLocks,
                         created: Optional[str] = None) -> "Library":
        """A writer on a new file at ``path`` that the caller has writer-locked (``locks``) and
        will rename into place itself (used to upgrade schema-1 files)."""
        write_new(path, info, created)
        h5 = h5py.File(path, "r+", locking=files.HDF5_LOCKING,
                       rdcc_nbytes=files.WRITER_CHUNK_CACHE)
        lib = cls(path, "a", schema.load(h5, path), h5, locks, owns_locks=False)
        lib._prepare_for_writing()
        return lib

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Library":
        """Open an existing library, ``mode`` "r" (read) or "a" (append).

        Appending to a schema-1 library upgrades it to schema 2 first (docs/library-format.md).
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        path = Path(path)
        if not path.exists():
            raise LibraryError(path, "no such file")
        if path.is_dir():
            raise LibraryError(path, "is a folder, not a library file")
        if mode == "a" and os.path.realpath(path) in OPEN_FOR_WRITING:
            raise LibraryError(path, "already open for writing in this program")
        try:
            if path.stat().st_size == 0:
                raise LibraryError(path, "not an HDF5 file (empty file)")
            if not h5py.is_hdf5(str(path)):
                raise LibraryError(path, "not an HDF5 file")
        except OSError as e:
            raise LibraryError(path, reason_from_oserror(e, mode == "a")) from None
        if mode == "r":
            with read_access(path) as (f, inode):
                return cls(path, "r", load_snapshot(f, path), inode=inode)
        return cls._open_for_writing(path)

    @classmethod
    def _open_for_writing(cls, path: Path, locks: Optional[FileLocks] = None) -> "Library":
        """Open for appending; ``locks``: the writer lock already held on the file (a new one)."""
        files.remove_stale_temporaries(path)
        if locks is None:
            try:
                locks = FileLocks(path, writable=True)
            except OSError as e:
                raise LibraryError(path, reason_from_oserror(e, True)) from None
        h5 = None
        try:
            try:
                locks.acquire(files.WRITER_BYTE, exclusive=True)
            except LockBusy:
                raise LibraryError(path, "file is in use by another process (locked)") from None
            # no raw-data chunk cache: every write reaches the file, or fails, at once
            h5 = h5py.File(path, "r+", locking=files.HDF5_LOCKING,
                           rdcc_nbytes=files.WRITER_CHUNK_CACHE)
            inode = locks.inode()
            if inode is not None:
                st = os.fstat(h5.id.get_vfd_handle())
                if (st.st_dev, st.st_ino) != inode:  # replaced between the lock and the open
                    raise LibraryError(path, "library file was replaced while being opened; "
                                             "try again")
            if schema.file_version(h5, path) == 1:
                h5.close()
                h5 = None
                _upgrade_schema1(path)
                locks.close()
                return cls._open_for_writing(path)
            lib = cls(path, "a", schema.load(h5, path), h5, locks)
        except BaseException as e:
            if h5 is not None:
                h5.close()
            locks.close()
            if isinstance(e, (OSError, KeyError, ValueError, TypeError, RuntimeError)):
                raise LibraryError(path, reason_from_oserror(e, True)) from None
            raise
        try:
            lib._prepare_for_writing()
        except BaseException:
            lib.close()
            raise
        return lib

    @classmethod
    def open_or_create(cls, path: str | Path, model_name: Any, model_arch: Optional[str] = None,
                       bits: Optional[int] = None, model_sha256: Optional[str] = None,
                       tile_size: int = 224, target_mpp: float = 0.5,
                       code_kind: Optional[str] = None) -> "Library":
        """Open ``path`` for appending, creating it if missing; refuse a library of another model.

        ``tile_size``/``target_mpp``/``code_kind`` only apply to a new library; an existing one
        keeps its own (compare with :attr:`tile_size`/:attr:`target_mpp` and follow them).
        """
        if not Path(path).exists():
            try:
                return cls.create(path, model_name, model_arch, bits, model_sha256, tile_size,
                                  target_mpp, code_kind=code_kind)
            except _Exists:
                pass  # another process created it first: append to that one (its lock decides)
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

    @classmethod
    def current_generation(cls, path: str | Path) -> int:
        """The generation of the library file at ``path`` now: a number that grows with every
        commit (cheap: reads one attribute). Compare with :attr:`generation`."""
        path = Path(path)
        with read_access(path) as (f, _):
            return generation_of(f, path)

    def has_changed(self) -> bool:
        """True when the file on disk has moved on from this read-only snapshot (a commit since
        it was opened, or the file replaced or gone): open it again to see the changes."""
        if self._mode == "a":
            return False  # this object is the only writer
        try:
            with read_access(self._path) as (f, inode):
                return inode != self._inode or generation_of(f, self._path) != self.generation
        except LibraryError:
            return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._f is not None:
            try:  # whatever HDF5 still holds goes out by a checked flush first (space reserved)
                self._flush()
                with self._exclusive():  # closing writes to the file: not while a reader reads
                    self._f.close()
            except Exception:
                self._abandon()  # the file keeps the last commit
            self._f = None
        if self._locks is not None and self._owns_locks:
            self._locks.close()
        if self._mode == "a":
            OPEN_FOR_WRITING.discard(os.path.realpath(self._path))

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
    code_kind = property(lambda self: self._model.code_kind)
    model_name = property(lambda self: self._model.name)
    model_arch = property(lambda self: self._model.arch)
    model_sha256 = property(lambda self: self._model.sha256)
    tile_size = property(lambda self: self._model.tile_size)
    target_mpp = property(lambda self: self._model.target_mpp)
    n_tiles = property(lambda self: self._n_tiles)
    n_sources = property(lambda self: len(self._sources))
    schema_version = property(lambda self: self._snapshot.version)
    generation = property(lambda self: self._snapshot.generation)
    created = property(lambda self: self._snapshot.created)
    updated = property(lambda self: self._snapshot.updated)

    @property
    def code_bytes(self) -> int:
        """Bytes of one stored code: bits/8, or 2 per dimension for float16 descriptors."""
        return code_kinds.code_kind(self.code_kind).stored_bytes(self.bits)

    # ----------------------------------------------------------------- reading
    def codes(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Stored codes of tiles ``start:stop`` (default all): ``np.uint8`` (n, bits/8), or
        ``np.float32`` (n, dim) for a float library."""
        start, stop = self._row_range(start, stop)
        with self._reading() as f:
            codes = f["tiles/codes"][start:stop]
        return code_kinds.code_kind(self.code_kind).as_encoded(codes)

    def tile_table(self, start: int = 0, stop: Optional[int] = None) -> dict[str, np.ndarray]:
        """Per-tile integer arrays ``source_id, x, y, size, label_id`` (label_id -1 = unknown)
        of tiles ``start:stop`` (default all)."""
        return self._tiles(*self._row_range(start, stop))

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
        t = {name: int(v[0]) for name, v in self._tiles(index, index + 1).items()}
        label = self._labels[t["label_id"]] if t["label_id"] >= 0 else None
        return TileRecord(index, t["source_id"], t["x"], t["y"], t["size"], label)

    def source_tiles(self, source_id: int) -> np.ndarray:
        """Level-0 ``(x, y, size)`` rows (int64) of one source's tiles, e.g. to outline them."""
        rec = self.source(source_id)
        t = self._tiles(rec.tile_start, rec.tile_start + rec.tile_count)
        return np.stack([t[name].astype(np.int64) for name in ("x", "y", "size")],
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
            "path": str(self._path), "schema_version": self.schema_version,
            "generation": self.generation, "n_tiles": self._n_tiles,
            "n_sources": len(self._sources), "sources_by_kind": kinds,
            "sources_without_tiles": sum(1 for s in self._sources if s.tile_count == 0),
            "code_kind": self.code_kind, "bits": self.bits, "code_bytes_per_tile": self.code_bytes,
            "model": {"name": self.model_name, "arch": self.model_arch,
                      "sha256": self.model_sha256},
            "tile_size": self.tile_size, "target_mpp": self.target_mpp,
            **({"stain_normalised": describe_stain(self._model.stain_reference)}
               if self._model.stain_reference else {}),
            "labels": {name: int(c) for name, c in zip(self._labels, counts) if c > 0},
            "metadata_keys": self.metadata_keys(),
            "unlabeled_tiles": int(np.sum(label_ids < 0)),
            "file_size": file_size,
            "file_bytes_per_tile": (file_size / self._n_tiles) if self._n_tiles else None,
            "created": self.created, "updated": self.updated,
        }

    # ----------------------------------------------------------------- helpers
    def _row_range(self, start: int, stop: Optional[int]) -> tuple[int, int]:
        stop = self._n_tiles if stop is None else int(stop)
        if not 0 <= int(start) <= stop <= self._n_tiles:
            raise IndexError(f"tiles {start}:{stop} out of range (library has {self._n_tiles} "
                             "tiles)")
        return int(start), stop

    def _tiles(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-tile ``source_id, x, y, size, label_id`` of rows ``start:stop``, checked."""
        with self._reading() as f:
            if self._snapshot.version == 1:
                out = legacy.read_tiles_v1(f, start, stop)
            else:
                out = schema.read_tiles(f, start, stop)
        check_tile_rows(self._path, self._tile_ends(), len(self._labels), start,
                        out["source_id"], out["label_id"])
        if self._snapshot.version == 1:
            return out
        out["size"] = self._snapshot.source_tile_size[out["source_id"]]
        return {name: out[name] for name in ("source_id", "x", "y", "size", "label_id")}

    def _tile_ends(self) -> np.ndarray:
        """Each source's end tile (exclusive), recomputed when sources were appended."""
        if len(self._ends) != len(self._sources):
            self._ends = np.fromiter((s.tile_start + s.tile_count for s in self._sources),
                                     np.int64, len(self._sources))
        return self._ends

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File]:
        if self._closed:
            raise LibraryError(self._path, "library is closed")
        if self._mode == "a":
            if self._f is None:
                raise LibraryError(self._path, "cannot be used after a failed write; open it "
                                               "again")
            with self._guard():
                yield self._f
            return
        with read_access(self._path) as (f, inode):
            if inode != self._inode:
                raise LibraryError(self._path, "library file was replaced while it was open; "
                                               "open it again")
            with self._guard():
                yield f

    @contextlib.contextmanager
    def _guard(self):
        """Turn HDF5/OS errors of a read into one-line LibraryErrors naming the file (writes:
        ``LibraryWriting._writing``)."""
        try:
            yield
        except LibraryError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise LibraryError(self._path, reason_from_oserror(e, False)) from None

    @property
    def _file(self) -> h5py.File:
        if self._f is None:
            raise LibraryError(self._path, "library is closed" if self._closed else
                               "cannot be used after a failed write; open it again")
        return self._f


class _Exists(LibraryError):
    """Library.create found a file at the path (or one appeared there while it built its own)."""


def _upgrade_schema1(path: Path) -> None:
    """Rewrite the schema-1 library ``path`` as schema 2, atomically (see ``legacy.py``).

    The caller holds the library's writer lock. Source ids, tile order, label order and the
    times sources were added are kept. A source whose tiles have different sizes cannot be
    stored in schema 2 and makes the upgrade fail with a one-line error.
    """
    with Library.open(path, "r") as old:
        snapshot = old._snapshot
        items = legacy.schema2_items(path, snapshot, old.codes(), old.tile_table())
    tmp, locks = files.make_temp_library(path, mode=stat.S_IMODE(os.stat(path).st_mode))
    try:
        new = Library._create_unlisted(Path(tmp), snapshot.model, locks, snapshot.created)
        with new:
            new._label_ids(snapshot.labels)  # keep the label order
            new.add_sources(items, _keep_added=True)
            new._file.attrs["upgraded_from_schema"] = 1
            new._flush()
        os.replace(tmp, path)
    except OSError as e:
        raise LibraryError(path, f"cannot upgrade to schema 2 ({files.write_failure_reason(e)}); "
                                 "the schema-1 file is unchanged") from None
    finally:
        files.discard_temporary(tmp, locks)
