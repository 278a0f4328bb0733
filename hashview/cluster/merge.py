"""Merge libraries built separately with the same model into one.

Each input's sources are appended with the library's normal commit (a few sources per commit,
like a patch batch), so a merge stopped part-way leaves every committed source intact and a
rerun adds only the rest: sources are keyed by their content fingerprint, and one already in
the target (or met earlier in the merge) is skipped. An input made with another model or
tiling, or one that cannot be read, is reported by name in one line and left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from hashview.errors import HashViewError, LibraryError
from hashview.indexing import IndexReport
from hashview.library import Library, LibraryWriteError, ModelInfo
from hashview.progress import ProgressCallback, report

# One commit holds up to this many sources or tiles: a commit per patch would cost ~100x more.
COMMIT_SOURCES, COMMIT_TILES = 256, 50_000


def merge_libraries(inputs: Iterable[str | Path], into: str | Path,
                    progress: Optional[ProgressCallback] = None) -> IndexReport:
    """Append the sources of every library in ``inputs`` to ``into`` (created when missing,
    for the first readable input's model and tiling)."""
    into = Path(into)
    merged = IndexReport(library=str(into))
    inputs = [Path(p) for p in inputs]
    target: Optional[Library] = None
    seen: dict[str, str] = {}
    try:
        for n, path in enumerate(inputs):
            report(progress, "libraries", n, len(inputs), path.name)
            if _same_file(path, into):
                merged.failed.append(f"{path}: is the library being merged into")
                continue
            try:
                with Library.open(path, "r") as source:
                    target = target or _open_target(into, source.model)
                    _check_same_model(source, target)
                    _copy_sources(source, target, merged, seen, progress)
            except LibraryWriteError:
                raise  # the target cannot take more: what is committed stays
            except HashViewError as exc:
                merged.failed.append(exc.message)
        report(progress, "libraries", len(inputs), len(inputs))
    finally:
        if target is not None:
            target.close()
    merged.summarise_duplicates()
    return merged


def _same_file(path: Path, into: Path) -> bool:
    try:
        return into.exists() and os.path.samefile(path, into)
    except OSError:
        return False


def _open_target(into: Path, model: ModelInfo) -> Library:
    return Library.open_or_create(into, model, tile_size=model.tile_size,
                                  target_mpp=model.target_mpp, code_kind=model.code_kind)


def _check_same_model(source: Library, target: Library) -> None:
    """Codes are comparable only with the same model (weights and bits) and the same tiling."""
    mine, theirs = target.model, source.model
    if (theirs.sha256, theirs.bits) != (mine.sha256, mine.bits):
        raise LibraryError(source.path, f"made with {theirs.describe()}; {target.path} holds "
                                        f"codes of {mine.describe()}: not merged")
    if theirs.stain_reference != mine.stain_reference:  # tiles re-stained otherwise
        raise LibraryError(source.path, f"stain reference differs from {target.path}'s: "
                                        "not merged")
    if (theirs.tile_size, theirs.target_mpp) != (mine.tile_size, mine.target_mpp):
        raise LibraryError(source.path, f"tiles of {theirs.tile_size} px at {theirs.target_mpp} "
                                        f"µm/px; {target.path} has {mine.tile_size} px at "
                                        f"{mine.target_mpp} µm/px: not merged")


def _copy_sources(source: Library, target: Library, merged: IndexReport,
                  seen: dict[str, str], progress: Optional[ProgressCallback]) -> None:
    """Sources of ``source`` not yet in ``target``, committed a batch at a time; only each
    batch's tiles are read, so a merge holds one batch in memory, not a whole library."""
    labels = source.label_names()
    records = source.sources()
    pending: list = []
    pending_tiles = 0
    for n, record in enumerate(records):
        where = f"{record.path} (in {source.path})"
        if record.fingerprint in seen:
            merged.duplicate(where, seen[record.fingerprint])
            continue
        seen[record.fingerprint] = where
        if target.contains(record.fingerprint):
            merged.skipped.append(where)
            continue
        pending.append(record)
        pending_tiles += record.tile_count
        if len(pending) >= COMMIT_SOURCES or pending_tiles >= COMMIT_TILES:
            _commit(target, _with_tiles(source, pending, labels), merged)
            pending, pending_tiles = [], 0
            report(progress, "sources", n + 1, len(records), Path(source.path).name)
    _commit(target, _with_tiles(source, pending, labels), merged)


def _with_tiles(source: Library, records: list, labels: list[str]) -> list[tuple]:
    """``add_sources`` items of ``records`` (in library order): each run of adjacent sources
    is read in one go."""
    items: list[tuple] = []
    first = 0
    while first < len(records):
        last = first
        while (last + 1 < len(records) and records[last + 1].tile_start
               == records[last].tile_start + records[last].tile_count):
            last += 1
        begin = records[first].tile_start
        end = records[last].tile_start + records[last].tile_count
        codes, table = source.codes(begin, end), source.tile_table(begin, end)
        for record in records[first:last + 1]:
            rows = slice(record.tile_start - begin, record.tile_start - begin + record.tile_count)
            tile_labels = [labels[i] if i >= 0 else None for i in table["label_id"][rows]]
            items.append((record, codes[rows], table["x"][rows].astype(np.int64),
                          table["y"][rows].astype(np.int64),
                          table["size"][rows].astype(np.int64), tile_labels))
        first = last + 1
    return items


def _commit(target: Library, pending: list[tuple], merged: IndexReport) -> None:
    if pending:
        target.add_sources(pending)
        merged.added.extend({"path": item[0].path, "tiles": len(item[1])} for item in pending)
