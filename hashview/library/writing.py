"""Appending to a library: validation, the two-flush commit, and repairing an interrupted one.

Mixed into :class:`hashview.library.Library`; the protocol is in docs/library-format.md
("Appending and crash safety"). Every HDF5 error of an append is caught before its commit mark:
the raw data goes to the file at once (no chunk cache), the file's space is reserved before each
flush, what was written is read back, and after any failure the handle is abandoned without
writing anything more (``files.abandon``), so the file keeps exactly the sources committed
before and the append is reported as failed (:class:`LibraryWriteError`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from hashview.errors import LibraryError
from hashview.library import files
from hashview.library.files import LockBusy, write_failure_reason
from hashview.library.records import SourceRecord
from hashview.library.schema import (SOURCE_COLUMNS, STATUS_COMMITTED, TILE_COLUMNS,
                                     source_rows, utc_now, validate_tiles)

_MAX_LABELS = np.iinfo(np.int16).max
# A second writer in this process is refused by this set (real paths) with its own message, before
# it would reach the writer lock.
OPEN_FOR_WRITING: set[str] = set()


class LibraryWriteError(LibraryError):
    """Writing to a library failed (disk full, I/O error...): nothing of the failed append was
    committed, the sources stored before are intact, and the library object can no longer
    write (open the file again once the cause is fixed)."""


class LibraryWriting:
    """The writing half of Library (state and helpers are defined in store.py)."""

    def add_source(self, record: SourceRecord | Mapping[str, Any], codes: np.ndarray,
                   xs: Iterable[int], ys: Iterable[int], sizes: Iterable[int],
                   tile_labels: Optional[Sequence[Optional[str]]] = None) -> SourceRecord:
        """Append one complete source and its tiles; return its stored record.

        A source whose fingerprint is already stored is not added again: the existing record is
        returned (check :meth:`contains` first to skip the encoding work). Zero tiles are fine:
        the source is recorded so it is not retried. ``tile_labels`` (one per tile, None =
        unknown) defaults to the source's own label for every tile. ``codes`` are uint8
        (n, bits/8) packed bits, or for a float library numbers of shape (n, dim). All tiles
        of one source have one size (``sizes`` repeats it).
        """
        return self.add_sources([(record, codes, xs, ys, sizes, tile_labels)])[0]

    def add_sources(self, items: Iterable[tuple], _keep_added: bool = False) -> list[SourceRecord]:
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
            if _keep_added:
                rec.added = record.added
            if rec.fingerprint in self._by_fingerprint:
                results.append(replace(self._by_fingerprint[rec.fingerprint]))
                continue
            if rec.fingerprint in in_batch:
                results.append(in_batch[rec.fingerprint])
                continue
            codes, xs, ys, size = validate_tiles(self._path, self._model, rec, codes, xs, ys,
                                                 sizes)
            tile_labels = rest[0] if rest and rest[0] is not None else [rec.label] * len(codes)
            if len(tile_labels) != len(codes):
                raise LibraryError(self._path, f"{rec.name}: {len(tile_labels)} tile labels "
                                               f"for {len(codes)} tiles")
            if any(label and "\0" in label for label in tile_labels):
                raise LibraryError(self._path, f"{rec.name}: a tile label contains a NUL "
                                               "character")
            in_batch[rec.fingerprint] = len(pending)
            results.append(len(pending))
            pending.append((rec, codes, xs, ys, size, list(tile_labels)))
        stored = self._append(pending) if pending else []
        return [replace(stored[r]) if isinstance(r, int) else r for r in results]

    def _append(self, pending: list[tuple]) -> list[SourceRecord]:
        counts = [len(p[1]) for p in pending]
        start, row0, total = self._n_tiles, len(self._sources), sum(counts)
        now = utc_now()
        starts = start + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        recs = [replace(p[0], id=row0 + j, tile_start=int(starts[j]), tile_count=counts[j],
                        added=p[0].added or now) for j, p in enumerate(pending)]
        end = row0 + len(recs)
        labels = [label for p in pending for label in p[5]]
        self._check_label_room(labels)
        f = self._file
        with self._writing():
            label_ids = self._label_ids(labels)
            # 1. tiles, past the committed end: invisible until their source rows are complete
            columns = {"codes": np.concatenate([p[1] for p in pending]),
                       "source_id": np.repeat(np.arange(row0, end, dtype=np.int32), counts),
                       "x": np.concatenate([p[2] for p in pending]),
                       "y": np.concatenate([p[3] for p in pending]), "label_id": label_ids}
            written = []  # (dataset path, first row, values): read back after the flush
            for name, data in columns.items():
                written.append(_append_rows(f, f"tiles/{name}", start, data))
            # 2. the source rows and their text; `status` last, after a flush: the commit mark.
            text_start = len(f["sources/text"])
            values, text = source_rows(recs, [p[4] for p in pending], text_start)
            written.append(_append_rows(f, "sources/text", text_start,
                                        np.frombuffer(text, np.uint8)))
            for name, data in values.items():
                written.append(_append_rows(f, f"sources/{name}", row0, data))
            self._flush()
            self._verify(written)
            _append_rows(f, "sources/status", row0, np.full(end - row0, STATUS_COMMITTED,
                                                            np.uint8))
            # 3. counts (informative; readers derive them from the complete rows)
            attrs = f.attrs
            generation = self._snapshot.generation + 1
            attrs["n_tiles"], attrs["n_sources"] = start + total, end
            attrs["updated"], attrs["generation"] = now, generation
            self._flush()
        self._n_tiles = start + total
        sizes = np.array([p[4] for p in pending], np.int32)
        self._snapshot = replace(self._snapshot, n_tiles=self._n_tiles, updated=now,
                                 generation=generation, source_tile_size=np.concatenate(
                                     [self._snapshot.source_tile_size, sizes]))
        for rec in recs:
            self._sources.append(rec)
            self._by_fingerprint[rec.fingerprint] = rec
        return recs

    @contextlib.contextmanager
    def _writing(self):
        """Around every write: any failure abandons the handle (nothing more reaches the file)
        and becomes a one-line LibraryWriteError saying the stored sources are kept."""
        try:
            yield
        except BaseException as e:
            self._abandon()
            if isinstance(e, LibraryWriteError) or not isinstance(e, Exception):
                raise
            reason = e.reason if isinstance(e, LibraryError) else write_failure_reason(e)
            raise LibraryWriteError(self._path, self._failure_message(reason)) from None

    def _failure_message(self, reason: str) -> str:
        n = len(self._sources)
        if n == 0:
            return f"write failed ({reason}); the library stays empty"
        return (f"write failed ({reason}); the {n} source{'' if n == 1 else 's'} stored before "
                f"{'is' if n == 1 else 'are'} kept")

    def _abandon(self) -> None:
        """Drop the HDF5 handle without letting it write (see ``files.abandon``); the writer
        lock stays held until :meth:`close`."""
        h5, self._f = self._f, None
        if h5 is None:
            return
        try:  # readers in this process share HDF5's file (and descriptor): not while one reads
            with self._exclusive():
                files.abandon(h5)
        except LibraryError:  # readers held it too long: go ahead
            files.abandon(h5)

    def _verify(self, written: list[tuple[str, int, np.ndarray]]) -> None:
        """Read back what the append wrote (raw data comes from the file: no chunk cache);
        codes by their first and last rows, everything else whole."""
        f = self._file
        for name, first, data in written:
            if not len(data):
                continue
            ds = f[name]
            if len(ds) != first + len(data):
                raise OSError(errno.EIO, f"/{name} has {len(ds)} rows after writing, expected "
                                         f"{first + len(data)}")
            stop = first + len(data)
            want = np.ascontiguousarray(data, dtype=ds.dtype)  # bytes: NaN (unknown mpp) too
            if name == "tiles/codes" and len(data) > 2:
                same = (ds[first].tobytes() == want[0].tobytes()
                        and ds[stop - 1].tobytes() == want[-1].tobytes())
            else:
                same = ds[first:stop].tobytes() == want.tobytes()
            if not same:
                raise OSError(errno.EIO, f"/{name} reads back different from what was written")

    @contextlib.contextmanager
    def _exclusive(self):
        """Hold the commit lock: readers wait until HDF5 has written its metadata."""
        if self._locks is None:
            yield
            return
        try:
            with self._locks.exclusive_commit(timeout=files.COMMIT_TIMEOUT_S):
                yield
        except LockBusy:
            raise LibraryError(self._path, f"readers held the library for over "
                                           f"{files.COMMIT_TIMEOUT_S:.0f} s") from None

    def _flush(self) -> None:
        """Write HDF5's metadata: space first (a flush that ran out of it half-way could leave
        the committed part damaged), then the flush, then fsync; any error raises."""
        f = self._file
        fd = f.id.get_vfd_handle()
        size = f.id.get_filesize()  # HDF5's end of allocated space (or the file's end)
        files.reserve_space(fd, self._reserved, size)
        with self._exclusive():
            f.flush()
        # fsync narrows the power-loss window; process crashes are covered by flush alone. An
        # error here (e.g. a delayed ENOSPC or EIO) means the data may not be there: a failure.
        files.fsync(fd)
        # HDF5 may have cut the file back to its allocated end: blocks below it stay reserved
        self._reserved = min(size, os.fstat(fd).st_size)

    def _prepare_for_writing(self) -> None:
        # Keep dirty HDF5 metadata in memory until our explicit flushes, so the file on disk only
        # changes at the commit points of _append.
        with contextlib.suppress(Exception):
            cfg = self._f.id.get_mdc_config()
            cfg.incr_mode = cfg.flash_incr_mode = cfg.decr_mode = 0  # required to disable evictions
            cfg.evictions_enabled = False
            self._f.id.set_mdc_config(cfg)
        # Drop what an interrupted append left behind (orphan tiles, rows, text, label names).
        f = self._f
        n_sources = len(self._sources)
        text_end = int(f["sources/text_end"][n_sources - 1]) if n_sources else 0
        label_end = int(f["labels/text_end"][len(self._labels) - 1]) if self._labels else 0
        wanted = {**{f"tiles/{n}": self._n_tiles for n in ("codes", *TILE_COLUMNS)},
                  **{f"sources/{n}": n_sources for n in SOURCE_COLUMNS},
                  "sources/text": text_end, "labels/text": label_end,
                  "labels/text_end": len(self._labels)}
        stale = {name: n for name, n in wanted.items() if len(f[name]) != n}
        # the count is informative only (readers derive it), so any other value is rewritten
        if stale or not _attr_equals(f.attrs.get("n_tiles"), self._n_tiles):
            with self._writing():
                for name, n in stale.items():
                    f[name].resize(n, axis=0)
                f.attrs["n_tiles"], f.attrs["n_sources"] = self._n_tiles, n_sources
                self._flush()

    def _check_label_room(self, labels: list[Optional[str]]) -> None:
        new = {name for name in labels if name and name not in self._label_index}
        if len(self._labels) + len(new) > _MAX_LABELS:
            raise LibraryError(self._path, f"too many labels (at most {_MAX_LABELS})")

    def _label_ids(self, labels: list[Optional[str]]) -> np.ndarray:
        new = [name for name in dict.fromkeys(labels) if name and name not in self._label_index]
        if new:
            self._check_label_room(new)
            # A label added here but never used (crash before commit) is harmless: it has no tiles.
            text, ends = self._file["labels/text"], self._file["labels/text_end"]
            blobs = [(name + "\0").encode("utf-8") for name in new]
            start = len(text)
            text.resize(start + sum(len(b) for b in blobs), axis=0)
            text[start:] = np.frombuffer(b"".join(blobs), np.uint8)
            ends.resize(len(self._labels) + len(new), axis=0)
            ends[len(self._labels):] = start + np.cumsum([len(b) for b in blobs])
            for name in new:
                self._label_index[name] = len(self._labels)
                self._labels.append(name)
        return np.array([self._label_index[name] if name else -1 for name in labels], np.int16)


def _append_rows(f, name: str, first: int, data: np.ndarray) -> tuple[str, int, np.ndarray]:
    """Grow dataset ``name`` to ``first + len(data)`` rows and write ``data`` there, through one
    handle closed at once (so an error of HDF5's close is raised here, never lost)."""
    ds = f[name]
    try:
        ds.resize(first + len(data), axis=0)
        if len(data):
            ds[first:] = data
    finally:
        ds.id._close()
    return name, first, data


def _attr_equals(value: Any, expected: int) -> bool:
    """Whether an attribute read from a file holds the single number ``expected``."""
    value = np.asarray(value) if value is not None else None
    return value is not None and value.shape == () and value.dtype.kind in "iu" \
        and int(value) == expected
