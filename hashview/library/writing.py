"""Appending to a library: validation, the two-flush commit, and repairing an interrupted one.

Mixed into :class:`hashview.library.Library`; the protocol is in docs/library-format.md
("Appending and crash safety").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from hashview.errors import LibraryError
from hashview.library import files
from hashview.library.files import LockBusy
from hashview.library.records import SourceRecord
from hashview.library.schema import (SOURCE_COLUMNS, STATUS_COMMITTED, TILE_COLUMNS,
                                     source_rows, utc_now, validate_tiles)

_MAX_LABELS = np.iinfo(np.int16).max
# A second writer in this process is refused by this set (real paths) with its own message, before
# it would reach the writer lock.
OPEN_FOR_WRITING: set[str] = set()


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
        with self._guard(writing=True):
            label_ids = self._label_ids([label for p in pending for label in p[5]])
            # 1. tiles, past the committed end: invisible until their source rows are complete
            columns = {"codes": np.concatenate([p[1] for p in pending]),
                       "source_id": np.repeat(np.arange(row0, end, dtype=np.int32), counts),
                       "x": np.concatenate([p[2] for p in pending]),
                       "y": np.concatenate([p[3] for p in pending]), "label_id": label_ids}
            tiles = self._file["tiles"]
            for name, data in columns.items():
                tiles[name].resize(start + total, axis=0)
                tiles[name][start:] = data
            # 2. the source rows and their text; `status` last, after a flush: the commit mark.
            sources = self._file["sources"]
            text_start = len(sources["text"])
            values, text = source_rows(recs, [p[4] for p in pending], text_start)
            sources["text"].resize(text_start + len(text), axis=0)
            sources["text"][text_start:] = np.frombuffer(text, np.uint8)
            for name, data in values.items():
                sources[name].resize(end, axis=0)
                sources[name][row0:end] = data
            self._flush()
            sources["status"].resize(end, axis=0)
            sources["status"][row0:end] = STATUS_COMMITTED
            # 3. counts (informative; readers derive them from the complete rows)
            attrs = self._file.attrs
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
    def _exclusive(self):
        """Hold the commit lock: readers wait until HDF5 has written its metadata."""
        if self._locks is None:
            yield
            return
        try:
            with self._locks.exclusive_commit(timeout=files.COMMIT_TIMEOUT_S):
                yield
        except LockBusy:
            raise LibraryError(self._path, f"write failed (readers held the library for over "
                                           f"{files.COMMIT_TIMEOUT_S:.0f} s); sources stored "
                                           "before are kept") from None

    def _flush(self) -> None:
        with self._exclusive():
            self._file.flush()
        # fsync narrows the power-loss window; process crashes are covered by flush alone.
        with contextlib.suppress(Exception):
            os.fsync(self._file.id.get_vfd_handle())

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
        if stale or int(f.attrs.get("n_tiles", -1)) != self._n_tiles:
            with self._guard(writing=True):
                for name, n in stale.items():
                    f[name].resize(n, axis=0)
                f.attrs["n_tiles"], f.attrs["n_sources"] = self._n_tiles, n_sources
                self._flush()

    def _label_ids(self, labels: list[Optional[str]]) -> np.ndarray:
        new = [name for name in dict.fromkeys(labels) if name and name not in self._label_index]
        if new:
            if len(self._labels) + len(new) > _MAX_LABELS:
                raise LibraryError(self._path, f"too many labels (at most {_MAX_LABELS})")
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
