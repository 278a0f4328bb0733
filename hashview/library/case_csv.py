"""Case data from a CSV file: one row per slide, matched to the library's sources.

The CSV (UTF-8, a header row) names each slide in a ``file``, ``path`` or ``slide`` column
(the first of these found, in that order). A row matches the source whose stored path equals
the cell (relative paths taken from the CSV's folder), else the one source whose file name is
the cell's file name; a file name shared by several sources is refused (give the full path).
``label`` sets the source's label (and its tiles' labels when it changes), ``patient``,
``patient_id`` or ``case`` its patient id, and every other column is a free metadata column.
An empty cell means no value.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from hashview.errors import HashViewError, LibraryError
from hashview.library.metadata import MAX_KEYS, key_problem, value_problem
from hashview.library.editing import EditResult, set_case_data
from hashview.library.records import SourceRecord

KEY_COLUMNS = ("file", "path", "slide")
LABEL_COLUMNS = ("label",)
PATIENT_COLUMNS = ("patient", "patient_id", "case")
MAX_CSV_BYTES = 32 << 20
MAX_ROWS = 1_000_000


class CaseFileError(HashViewError):
    """A case CSV that cannot be used (not UTF-8, no file column, duplicate rows...)."""


@dataclass
class CaseTable:
    """The rows of a case CSV: the slide column's cells and ``{key: value}`` per row, where
    ``label`` and ``patient`` are the source fields and other keys free columns."""

    path: str
    key_column: str
    keys: list[str]
    rows: list[tuple[str, dict[str, str]]]


@dataclass
class CaseMatch:
    updates: dict[int, dict[str, str]] = field(default_factory=dict)
    matched: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    without_row: list[int] = field(default_factory=list)


def read_case_csv(path: str | Path) -> CaseTable:
    """Read and check a case CSV; one-line CaseFileError for anything unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CaseFileError(path, "not a file")
        if size > MAX_CSV_BYTES:
            raise CaseFileError(path, f"too large ({size:,} bytes; at most {MAX_CSV_BYTES:,})")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CaseFileError(path, "no such file") from None
    except OSError as e:
        raise CaseFileError(path, f"cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CaseFileError(path, f"not UTF-8 text (byte {e.start})") from None
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise CaseFileError(path, f"not a valid CSV ({e})") from None
    records = [r for r in records if any(cell.strip() for cell in r)]
    if not records:
        raise CaseFileError(path, "empty: no header row")
    header = [h.strip() for h in records[0]]
    lowered = [h.lower() for h in header]
    key_column = next((k for k in KEY_COLUMNS if k in lowered), None)
    if key_column is None:
        raise CaseFileError(path, f"no column naming the slides ({', '.join(KEY_COLUMNS)}); "
                                  f"columns: {', '.join(header)[:200]}")
    if len(records) - 1 > MAX_ROWS:
        raise CaseFileError(path, f"too many rows ({len(records) - 1:,}; at most {MAX_ROWS:,})")
    columns = _columns(path, header, lowered, key_column)
    rows: list[tuple[str, dict[str, str]]] = []
    seen: dict[str, int] = {}
    for line, record in enumerate(records[1:], start=2):
        if len(record) > len(header):
            raise CaseFileError(path, f"row {line} has {len(record)} cells, the header "
                                      f"{len(header)}")
        cells = [c.strip() for c in record] + [""] * (len(header) - len(record))
        name = cells[lowered.index(key_column)]
        if not name:
            raise CaseFileError(path, f"row {line} names no slide")
        if name in seen:
            raise CaseFileError(path, f"{name!r} is in rows {seen[name]} and {line}")
        seen[name] = line
        values = {key: cells[j] for j, key in columns}
        for key, value in values.items():
            problem = value_problem(key, value)
            if problem:
                raise CaseFileError(path, f"row {line}: {problem}")
        rows.append((name, values))
    return CaseTable(str(path), key_column, [k for _, k in columns], rows)


def _columns(path: Path, header: list[str], lowered: list[str],
             key_column: str) -> list[tuple[int, str]]:
    """(index, key) of every column holding case data."""
    out = []
    roles: dict[str, str] = {}
    for j, (name, low) in enumerate(zip(header, lowered)):
        if low == key_column:
            continue
        if low in LABEL_COLUMNS or low in PATIENT_COLUMNS:
            key = "label" if low in LABEL_COLUMNS else "patient"
            if key in roles:
                raise CaseFileError(path, f"columns {roles[key]!r} and {name!r} both give the "
                                          f"{key}")
            roles[key] = name
        elif low in KEY_COLUMNS:
            continue  # a second way to name the slide: not case data
        else:
            problem = key_problem(name)
            if problem:
                raise CaseFileError(path, problem)
            key = name
        if key.lower() in {k.lower() for _, k in out}:
            raise CaseFileError(path, f"column {name!r} appears twice")
        out.append((j, key))
    if len(out) > MAX_KEYS:
        raise CaseFileError(path, f"too many columns ({len(out)}; at most {MAX_KEYS})")
    return out


def patients_of(table: CaseTable) -> dict[str, str]:
    """``{slide: patient}`` from the rows with a patient, each slide keyed by its cell, its
    path (relative cells taken from the CSV's folder) and its file name, for matching slides
    that are not in a library (training from annotated slides)."""
    folder = os.path.dirname(os.path.abspath(table.path))
    out: dict[str, str] = {}
    for name, values in table.rows:
        patient = values.get("patient")
        if patient:
            for key in (name, os.path.normpath(os.path.join(folder, name)),
                        os.path.basename(name)):
                out.setdefault(key, patient)
    return out


def apply_case_csv(library_path: str | Path, table: CaseTable) -> tuple[EditResult, CaseMatch]:
    """Match the rows to the library's sources and store their case data (one rewrite). A CSV
    matching no source is refused (CaseFileError) and the library left as it is."""
    match = CaseMatch()

    def updates(sources: list[SourceRecord]) -> dict[int, dict[str, str]]:
        nonlocal match
        match = match_cases(library_path, sources, table)
        if not match.updates:
            raise CaseFileError(table.path, f"no row matches a source of {library_path} "
                                            f"({len(match.unmatched)} rows)")
        return match.updates

    return set_case_data(library_path, updates), match


def match_cases(library_path, sources: list[SourceRecord], table: CaseTable) -> CaseMatch:
    """Which source each row describes: the stored path first, then the file name."""
    by_path = {s.path: s.id for s in sources}
    by_name: dict[str, list[int]] = {}
    for s in sources:
        by_name.setdefault(os.path.basename(s.path), []).append(s.id)
    folder = os.path.dirname(os.path.abspath(table.path))
    out = CaseMatch()
    claimed: dict[int, str] = {}
    for name, values in table.rows:
        full = os.path.normpath(os.path.join(folder, name))
        source_id = by_path.get(name, by_path.get(full))
        if source_id is None:
            ids = by_name.get(os.path.basename(name), [])
            if len(ids) > 1:
                raise LibraryError(library_path, f"{name!r} (in {table.path}) matches "
                                                 f"{len(ids)} sources by file name; give the "
                                                 "full path in the CSV")
            source_id = ids[0] if ids else None
        if source_id is None:
            out.unmatched.append(name)
            continue
        if source_id in claimed:
            raise LibraryError(library_path, f"rows {claimed[source_id]!r} and {name!r} (in "
                                             f"{table.path}) describe the same source")
        claimed[source_id] = name
        out.updates[source_id] = values
        out.matched.append(name)
    out.without_row = [s.id for s in sources if s.id not in claimed]
    return out
