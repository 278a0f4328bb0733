"""Editing a library: remove sources, relabel sources or tiles, relocate moved files, set case
metadata. Every edit rewrites the whole library, copy-on-write.

An append-only file cannot drop rows or rename a label in place without a window where a crash
leaves half an edit. So an edit (``rewrite``) holds the library's writer lock for its whole
length (no append can interleave; a library open for writing elsewhere is refused as busy),
reads the committed library, writes the complete edited library into ``LIB.h5.XXXXXXXX.tmp``
next to it through the ordinary append path (checked writes, fsync), reads that back, and
renames it over the old file. A crash at any moment leaves the old or the new library whole
(a leftover temporary file is removed by the next writer); a full disk or a read-only folder
leaves the old library untouched and no temporary file. The new file is schema 3 with a
generation one above the old, so open readers notice (``Library.has_changed``). The cost is a
rewrite of the whole file (docs/benchmarks.md, "editing").

Removing sources renumbers the source ids and tile rows after them; the search index sidecar
identifies the codes it was built from (count and SHA-256), so a stale one is never used.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from hashview.errors import LibraryError
from hashview.library import files
from hashview.library.files import FileLocks, LockBusy, write_failure_reason
from hashview.library.metadata import MetadataTable, compact, merged, write_metadata
from hashview.library.records import SCHEMA_VERSION, SourceRecord
from hashview.library.schema import utc_now
from hashview.library.store import Library
from hashview.library.writing import OPEN_FOR_WRITING

BUSY = "busy: the library is open for writing elsewhere (an indexing run?); try again later"


@dataclass
class Contents:
    """Everything a library holds, in memory, as an edit sees and changes it."""

    sources: list[SourceRecord]
    tile_sizes: list[int]          # per source
    codes: np.ndarray              # per tile, as Library.codes() gives them
    x: np.ndarray
    y: np.ndarray
    label_ids: np.ndarray          # per tile, into ``labels``; -1 = unknown
    labels: list[str]
    metadata: MetadataTable

    def label_id(self, label: Optional[str]) -> int:
        """The id of ``label`` (added when new); -1 for no label."""
        if not label:
            return -1
        if label not in self.labels:
            self.labels.append(label)
        return self.labels.index(label)

    def tile_rows(self, source_id: int) -> slice:
        s = self.sources[source_id]
        return slice(s.tile_start, s.tile_start + s.tile_count)


@dataclass
class EditResult:
    """What an edit did: one ``summary`` line, and the details for ``--json``."""

    path: str
    action: str
    summary: str
    changed: int
    generation: int
    n_sources: int
    n_tiles: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.path, "action": self.action, "summary": self.summary,
                "changed": self.changed, "generation": self.generation,
                "n_sources": self.n_sources, "n_tiles": self.n_tiles, **self.details}


# ------------------------------------------------------------------ the edits
def remove_sources(path: str | Path, sources: Iterable[int | str]) -> EditResult:
    """Remove sources (ids, paths or file names: :func:`resolve_sources`) with their tiles,
    metadata, and the label names no tile uses any more."""
    specs = list(sources)

    def change(c: Contents) -> dict:
        doomed = set(resolve_sources(path, c.sources, specs))
        _check_ids(path, c, doomed)
        keep = np.array([s.id not in doomed for s in c.sources], bool)
        tiles = np.repeat(keep, [s.tile_count for s in c.sources])
        c.codes, c.x, c.y, c.label_ids = (a[tiles] for a in (c.codes, c.x, c.y, c.label_ids))
        rows = [r for i, r in enumerate(c.metadata.rows) if keep[i]]
        c.metadata = MetadataTable(keys=c.metadata.keys, rows=rows)
        c.tile_sizes = [t for t, k in zip(c.tile_sizes, keep) if k]
        removed = [s for s in c.sources if s.id in doomed]
        c.sources = [s for s in c.sources if s.id not in doomed]
        return {"removed": [{"id": s.id, "path": s.path, "tiles": s.tile_count}
                            for s in removed]}

    def summary(details: dict, new: Contents) -> str:
        tiles = sum(r["tiles"] for r in details["removed"])
        n = len(details["removed"])
        return (f"removed {n} source{'s' if n != 1 else ''} ({tiles} tiles); "
                f"{len(new.sources)} sources, {len(new.codes)} tiles left")

    return edit(path, "remove", change, summary, lambda d: len(d["removed"]))


def relabel_sources(path: str | Path, sources: Iterable[int | str],
                    label: Optional[str]) -> EditResult:
    """Give sources (ids, paths or file names) and all their tiles ``label``; empty or None =
    unknown."""
    specs = list(sources)
    _check_label(path, label)

    def change(c: Contents) -> dict:
        ids = set(resolve_sources(path, c.sources, specs))
        _check_ids(path, c, ids)
        new_id = c.label_id(label)
        for i in sorted(ids):
            c.sources[i] = replace(c.sources[i], label=label or None)
            c.label_ids[c.tile_rows(i)] = new_id
        return {"sources": sorted(ids), "label": label or None,
                "tiles": int(sum(c.sources[i].tile_count for i in ids))}

    return edit(path, "relabel", change,
                 lambda d, _: f"relabelled {len(d['sources'])} sources ({d['tiles']} tiles) "
                              f"as {_shown(d['label'])}", lambda d: len(d["sources"]))


def relabel_tiles(path: str | Path, tile_ids: Iterable[int], label: Optional[str]) -> EditResult:
    """Give single tiles (by row id) ``label``; empty or None = unknown."""
    rows = sorted(set(int(i) for i in tile_ids))
    _check_label(path, label)

    def change(c: Contents) -> dict:
        bad = [i for i in rows if not 0 <= i < len(c.codes)]
        if bad:
            raise LibraryError(path, f"no tile with id {bad[0]} (the library has "
                                     f"{len(c.codes)} tiles)")
        c.label_ids[rows] = c.label_id(label)
        return {"tiles": rows, "label": label or None}

    return edit(path, "relabel", change,
                 lambda d, _: f"relabelled {len(d['tiles'])} tiles as {_shown(d['label'])}",
                 lambda d: len(d["tiles"]))


def relocate(path: str | Path, old_dir: str | Path, new_dir: str | Path) -> EditResult:
    """Rewrite the paths of sources under ``old_dir`` to lie under ``new_dir`` (slides moved);
    the result lists which now exist at the new place and which do not."""
    old = os.path.abspath(str(old_dir)).rstrip(os.sep) or os.sep
    new = os.path.abspath(str(new_dir)).rstrip(os.sep) or os.sep

    def change(c: Contents) -> dict:
        found, missing = [], []
        for i, s in enumerate(c.sources):
            rest = _below(s.path, old)
            if rest is None:
                continue
            moved = os.path.join(new, rest) if rest else new
            c.sources[i] = replace(s, path=moved, name="" if s.name == os.path.basename(s.path)
                                   else s.name)
            (found if os.path.exists(moved) else missing).append(moved)
        return {"old_dir": old, "new_dir": new, "found": found, "missing": missing}

    return edit(path, "relocate", change,
                 lambda d, _: f"relocated {len(d['found']) + len(d['missing'])} sources from "
                              f"{d['old_dir']} to {d['new_dir']}: {len(d['found'])} found "
                              f"there, {len(d['missing'])} missing",
                 lambda d: len(d["found"]) + len(d["missing"]))


CaseData = Mapping[int, Mapping[str, str]]


def set_case_data(path: str | Path,
                  cases: CaseData | Callable[[list[SourceRecord]], CaseData]) -> EditResult:
    """Set per-source case data: ``{source_id: {key: value}}`` where ``label`` sets the source's
    label (and its tiles' labels, when it changes), ``patient`` its patient id, and any other
    key a free metadata column. An empty value means no value. ``cases`` may also be a function
    of the sources giving that mapping, called under the edit's lock (ids cannot shift)."""

    def change(c: Contents) -> dict:
        nonlocal cases
        if callable(cases):
            cases = cases(c.sources)
        free = _free_columns(path, cases)
        _check_ids(path, c, set(cases))
        relabelled = 0
        for i, values in cases.items():
            s = c.sources[i]
            if "label" in values and (values["label"] or None) != s.label:
                c.label_ids[c.tile_rows(i)] = c.label_id(values["label"])
                relabelled += 1
            c.sources[i] = replace(c.sources[i], label=values.get("label", s.label) or None,
                                   patient_id=values.get("patient", s.patient_id) or None)
        c.metadata = merged(c.metadata, len(c.sources), free)
        return {"sources": sorted(cases), "relabelled": relabelled, "keys": c.metadata.keys}

    return edit(path, "meta", change,
                 lambda d, _: f"set case data of {len(d['sources'])} sources "
                              f"({d['relabelled']} relabelled); metadata keys: "
                              f"{', '.join(d['keys']) or 'none'}", lambda d: len(d["sources"]))


def _free_columns(path, cases: CaseData) -> dict[int, dict[str, str]]:
    """The free metadata of ``cases`` (all but label and patient), every key and value checked."""
    from hashview.library.metadata import key_problem, value_problem

    free: dict[int, dict[str, str]] = {}
    for source_id, values in cases.items():
        for key, value in values.items():
            problem = (None if key in ("label", "patient") else key_problem(key)) \
                or value_problem(key, value)
            if problem:
                raise LibraryError(path, problem)
        free[int(source_id)] = {k: v for k, v in values.items() if k not in ("label", "patient")}
    return free


# ------------------------------------------------------------------ naming sources
def resolve_sources(path, sources: Sequence[SourceRecord],
                    specs: Iterable[int | str]) -> list[int]:
    """Source ids for ``specs``: each a source id (an int, or text of digits), a path (matched
    in full first) or a file name. A name shared by several sources, or matching none, raises
    LibraryError."""
    out = []
    for spec in specs:
        text = str(spec)
        if isinstance(spec, (int, np.integer)) or (text.isdigit() and int(text) < len(sources)):
            out.append(int(text))
            continue
        full = os.path.abspath(text)
        hits = [s.id for s in sources if s.path == full]
        if not hits:
            hits = [s.id for s in sources if text in (os.path.basename(s.path), s.name)]
        if not hits:
            raise LibraryError(path, f"no source {text!r} (give an id, a path or a file name)")
        if len(hits) > 1:
            raise LibraryError(path, f"{text!r} names {len(hits)} sources (ids "
                                     f"{', '.join(map(str, hits[:5]))}); give the full path "
                                     "or the id")
        out.append(hits[0])
    return out


# ------------------------------------------------------------------ the rewrite
def edit(path, action: str, change: Callable[[Contents], dict],
         summary: Callable[[dict, Contents], str], count: Callable[[dict], int]) -> EditResult:
    """The one way an edit runs: ``change`` mutates the contents under the writer lock and
    returns its details; the library is rewritten copy-on-write (:func:`rewrite`)."""
    details, new_lib = rewrite(Path(path), change)
    c, n_sources, n_tiles, generation = new_lib
    return EditResult(str(path), action, summary(details, c), count(details), generation,
                      n_sources, n_tiles, details)


def rewrite(path: Path, change: Callable[[Contents], dict]) -> tuple[dict, tuple]:
    """Apply ``change`` to the library at ``path`` copy-on-write (see the module docstring).

    Returns what ``change`` returned and ``(contents, n_sources, n_tiles, generation)`` of the
    new library. Any failure leaves the old library as it was and raises a one-line
    LibraryError."""
    path = Path(path)
    if not path.exists():
        raise LibraryError(path, "no such file")
    if os.path.realpath(path) in OPEN_FOR_WRITING:
        raise LibraryError(path, "already open for writing in this program")
    try:
        locks = FileLocks(path, writable=True)
    except OSError as e:
        raise LibraryError(path, f"cannot edit ({write_failure_reason(e)})") from None
    try:
        try:
            locks.acquire(files.WRITER_BYTE, exclusive=True)
        except LockBusy:
            raise LibraryError(path, BUSY) from None
        files.remove_stale_temporaries(path)
        with Library.open(path, "r") as old:
            if locks.inode() is not None and old._inode != locks.inode():
                raise LibraryError(path, "library file was replaced while being opened; try "
                                         "again")
            contents, kept = _read(old)
        details = change(contents)
        result = _publish(path, contents, kept)
        return details, (contents, *result)
    finally:
        locks.close()


def _read(lib: Library) -> tuple[Contents, dict]:
    """The library's contents, and what the new file keeps of the old one's attributes."""
    table = lib.tile_table()
    sources = lib.sources()
    with lib._reading() as f:
        extra = {k: f.attrs[k] for k in ("upgraded_from_schema",) if k in f.attrs}
    sizes = [int(table["size"][s.tile_start]) if s.tile_count else 0 for s in sources]
    contents = Contents(sources=sources, tile_sizes=sizes, codes=lib.codes(), x=table["x"],
                        y=table["y"], label_ids=table["label_id"].astype(np.int32),
                        labels=lib.label_names(), metadata=lib.metadata_table())
    kept = {"model": lib.model, "created": lib.created, "generation": lib.generation + 1,
            "attrs": extra}
    return contents, kept


def _publish(path: Path, c: Contents, kept: dict) -> tuple[int, int, int]:
    """Write ``c`` as the new library into a temporary file and rename it over ``path``."""
    tmp = None
    tmp_locks = None
    try:
        tmp, tmp_locks = files.make_temp_library(path, mode=stat.S_IMODE(os.stat(path).st_mode))
        new = Library._create_unlisted(Path(tmp), kept["model"], tmp_locks, kept["created"])
        with new:
            _write_contents(new, c, kept["generation"], kept["attrs"])
        with Library.open(tmp, "r") as check:  # the new file reads back whole
            n_sources, n_tiles = check.n_sources, check.n_tiles
        if (n_sources, n_tiles) != (len(c.sources), len(c.codes)):
            raise OSError(f"the new file holds {n_sources} sources and {n_tiles} tiles, "
                          f"expected {len(c.sources)} and {len(c.codes)}")
        os.replace(tmp, path)
        _fsync_folder(path.parent)
        return n_sources, n_tiles, kept["generation"]
    except (OSError, RuntimeError, ValueError, LibraryError) as e:
        reason = e.reason if isinstance(e, LibraryError) else write_failure_reason(e)
        if isinstance(e, LibraryError) and "write failed (" in reason:
            reason = reason[len("write failed ("):].split(");")[0]
        raise LibraryError(path, f"cannot rewrite ({reason}); the library is unchanged") \
            from None
    finally:
        files.discard_temporary(tmp, tmp_locks)


def _write_contents(new: Library, c: Contents, generation: int, extra_attrs: dict) -> None:
    used = np.unique(c.label_ids[c.label_ids >= 0])
    kept = [c.labels[i] for i in used]  # names no tile uses any more are dropped
    with new._writing():
        new._label_ids(kept)
    names = np.array([*c.labels, None], dtype=object)[c.label_ids]  # -1 -> None
    _renumber(c)
    items = []
    for s, size in zip(c.sources, c.tile_sizes):
        rows = slice(s.tile_start, s.tile_start + s.tile_count)
        items.append((s, c.codes[rows], c.x[rows], c.y[rows], np.full(s.tile_count, size),
                      names[rows].tolist()))
    new.add_sources(items, _keep_added=True)
    with new._writing():
        f = new._file
        c.metadata = compact(c.metadata, len(c.sources))
        if c.metadata.keys:
            write_metadata(f, c.metadata)
        f.attrs.update({"schema_version": SCHEMA_VERSION, "generation": generation,
                        "updated": utc_now(), **extra_attrs})
        new._flush()


def _renumber(c: Contents) -> None:
    """Source ids and tile starts as the new file numbers them (after removals)."""
    start = 0
    for i, s in enumerate(c.sources):
        c.sources[i] = replace(s, id=i, tile_start=start)
        start += s.tile_count


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (where a folder can be opened and synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        files.fsync(fd)
    finally:
        os.close(fd)


def _check_ids(path, c: Contents, ids: set[int]) -> None:
    bad = sorted(i for i in ids if not 0 <= i < len(c.sources))
    if bad:
        raise LibraryError(path, f"no source with id {bad[0]} (the library has "
                                 f"{len(c.sources)} sources)")


def _check_label(path, label: Optional[str]) -> None:
    if label and "\0" in label:
        raise LibraryError(path, "a label cannot contain a NUL character")


def _below(stored: str, folder: str) -> Optional[str]:
    """``stored`` relative to ``folder`` when it lies under it ("" when it is it), else None."""
    if stored == folder:
        return ""
    prefix = folder if folder.endswith(os.sep) else folder + os.sep
    return stored[len(prefix):] if stored.startswith(prefix) else None


def _shown(label: Optional[str]) -> str:
    return repr(label) if label else "unknown"
