"""Case metadata (schema 3): free per-source columns such as diagnosis, site, stain or scanner.

Layout (docs/library-format.md, "Schema 3"): ``/metadata/keys/text`` + ``/metadata/keys/text_end``
hold the column names like ``/labels``; ``/metadata/text`` holds, per source row, one
NUL-terminated UTF-8 value per key (empty = no value), and ``/metadata/text_end`` the end offset
of each row. Rows exist for sources ``0 .. R-1``; sources appended later have no metadata. The
group is written only by a copy-on-write rewrite (``editing.py``), never by an append.

The source's label and patient id stay in ``/sources/text``; :func:`sources_where` matches them
and the free columns alike, so the CLI and the app filter searches the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

import h5py
import numpy as np

from hashview.errors import LibraryError, printable
from hashview.library.validation import StoredData, damaged

if TYPE_CHECKING:
    from hashview.library.store import Library

MAX_KEYS = 256
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 4096
# What the source row itself holds: no free column may shadow it (``--where label=...``).
BUILT_IN_KEYS = ("label", "patient")
RESERVED_KEYS = frozenset({*BUILT_IN_KEYS, "patient_id", "case", "file", "path", "slide",
                           "source", "name", "id"})


@dataclass
class MetadataTable:
    """Free metadata columns: ``keys`` and per source row (``rows[i]`` for source ``i``) one
    value per key ("" = none). Sources past ``len(rows)`` have no metadata."""

    keys: list[str] = field(default_factory=list)
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def of(self, source_id: int) -> dict[str, str]:
        """The values set for one source (empty keys left out)."""
        if not 0 <= source_id < len(self.rows):
            return {}
        return {k: v for k, v in zip(self.keys, self.rows[source_id]) if v}


def key_problem(key: str) -> Optional[str]:
    """Why ``key`` cannot name a metadata column, or None."""
    if not key.strip() or key != key.strip():
        return f"metadata key {key!r} is empty or has surrounding spaces"
    if key.lower() in RESERVED_KEYS:
        return f"metadata key {key!r} is reserved (label and patient id are source fields)"
    if "\0" in key or len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"metadata key {key[:40]!r} has a NUL or is over {MAX_KEY_BYTES} bytes"
    return None


def value_problem(key: str, value: str) -> Optional[str]:
    if "\0" in value:
        return f"value of {key!r} contains a NUL character"
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        return f"value of {key!r} is over {MAX_VALUE_BYTES} bytes"
    return None


# ------------------------------------------------------------------ reading (schema 3)
def _split(blob: np.ndarray, what: str, path: Path) -> list[str]:
    try:
        text = blob.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(path, f"{what} is not UTF-8") from None
    values = text.split("\0")
    if values[-1]:
        raise damaged(path, f"{what} does not end with a NUL")
    return values[:-1]


def _ends(data: StoredData, name: str, n: int, text_len: int, path: Path) -> np.ndarray:
    ends = data.read(data.dataset(name, "int64"), n)
    if n and (ends[0] < 0 or np.any(np.diff(ends) < 0) or ends[-1] > text_len):
        raise damaged(path, f"/{name} offsets are not increasing within the text")
    return ends


def load_metadata(f: h5py.File, data: StoredData, n_sources: int, path: Path) -> MetadataTable:
    """The ``/metadata`` group of a schema-3 file, checked like every other table; an empty
    table when the group is absent."""
    link = f.get("metadata", getlink=True)
    if link is None:
        return MetadataTable()
    key_text = data.dataset("metadata/keys/text", "uint8")
    key_ends_ds = data.dataset("metadata/keys/text_end", "int64")
    if len(key_ends_ds) > MAX_KEYS:
        raise damaged(path, f"/metadata has {len(key_ends_ds)} keys, at most {MAX_KEYS}")
    key_ends = _ends(data, "metadata/keys/text_end", len(key_ends_ds), len(key_text), path)
    keys = _split(data.read(key_text, int(key_ends[-1]) if len(key_ends) else 0),
                  "/metadata/keys/text", path)
    if len(keys) != len(key_ends):
        raise damaged(path, "/metadata/keys/text does not match its offsets")
    for key in keys:
        problem = key_problem(key)
        if problem:
            raise damaged(path, printable(problem))
    if len({k.lower() for k in keys}) != len(keys):
        raise damaged(path, "/metadata has a key twice")
    text = data.dataset("metadata/text", "uint8")
    ends_ds = data.dataset("metadata/text_end", "int64")
    n_rows = len(ends_ds)
    if n_rows > n_sources:
        raise damaged(path, f"/metadata has {n_rows} rows for {n_sources} sources")
    if n_rows and not keys:
        raise damaged(path, "/metadata has rows but no keys")
    ends = _ends(data, "metadata/text_end", n_rows, len(text), path)
    if n_rows and int(ends[-1]) > n_rows * len(keys) * (MAX_VALUE_BYTES + 1):
        raise damaged(path, f"/metadata values are over {MAX_VALUE_BYTES} bytes")
    values = _split(data.read(text, int(ends[-1]) if n_rows else 0), "/metadata/text", path)
    if len(values) != n_rows * len(keys):
        raise damaged(path, "/metadata/text does not hold one value per key and row")
    counts = np.diff(np.concatenate([[0], ends]))
    per_row = len(keys)
    rows = [tuple(values[i * per_row:(i + 1) * per_row]) for i in range(n_rows)]
    lengths = [sum(len(v.encode("utf-8")) + 1 for v in row) for row in rows]
    if lengths != counts.tolist():
        raise damaged(path, "/metadata/text_end does not match the values")
    if any(len(v) > MAX_VALUE_BYTES for v in values):  # characters <= bytes: a cheap bound
        raise damaged(path, f"a /metadata value is over {MAX_VALUE_BYTES} bytes")
    return MetadataTable(keys=keys, rows=rows)


# ------------------------------------------------------------------ writing (rewrites only)
def write_metadata(f: h5py.File, table: MetadataTable) -> None:
    """Create the ``/metadata`` group in a new file (a rewrite's temporary file)."""
    group = f.create_group("metadata")
    keys = group.create_group("keys")
    key_blob = b"".join((k + "\0").encode("utf-8") for k in table.keys)
    row_blobs = [b"".join((v + "\0").encode("utf-8") for v in row) for row in table.rows]
    columns = (
        (keys, "text", np.frombuffer(key_blob, np.uint8), 1024),
        (keys, "text_end", np.cumsum([len((k + "\0").encode("utf-8")) for k in table.keys],
                                     dtype=np.int64), 128),
        (group, "text", np.frombuffer(b"".join(row_blobs), np.uint8), 1 << 14),
        (group, "text_end", np.cumsum([len(b) for b in row_blobs], dtype=np.int64), 256),
    )
    for where, name, values, chunk in columns:
        dtype = np.uint8 if name == "text" else np.int64
        where.create_dataset(name, data=np.asarray(values, dtype), maxshape=(None,),
                             chunks=(chunk,))


def compact(table: MetadataTable, n_sources: int) -> MetadataTable:
    """Drop keys no source uses and trailing rows without values (or past ``n_sources``)."""
    rows = [tuple(r) for r in table.rows[:n_sources]]
    used = [j for j in range(len(table.keys)) if any(r[j] for r in rows)]
    rows = [tuple(r[j] for j in used) for r in rows]
    while rows and not any(rows[-1]):
        rows.pop()
    return MetadataTable(keys=[table.keys[j] for j in used], rows=rows)


def merged(table: MetadataTable, n_sources: int,
           updates: Mapping[int, Mapping[str, str]]) -> MetadataTable:
    """``table`` with ``updates`` (source id -> {key: value}; "" clears) applied."""
    keys = list(table.keys)
    index = {k.lower(): j for j, k in enumerate(keys)}
    for values in updates.values():
        for key in values:
            if key.lower() not in index:
                index[key.lower()] = len(keys)
                keys.append(key)
    rows = [list(r) + [""] * (len(keys) - len(r)) for r in table.rows]
    rows += [[""] * len(keys) for _ in range(n_sources - len(rows))]
    for source_id, values in updates.items():
        for key, value in values.items():
            rows[source_id][index[key.lower()]] = value
    return compact(MetadataTable(keys=keys, rows=[tuple(r) for r in rows]), n_sources)


# ------------------------------------------------------------------ filtering
def parse_conditions(texts: Iterable[str]) -> list[tuple[str, str]]:
    """``["stain=HE", "site = colon"]`` -> ``[("stain", "HE"), ("site", "colon")]``;
    ValueError (one line) for a condition without ``=`` or key."""
    out = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a condition is KEY=VALUE (e.g. stain=HE), got {text!r}")
        out.append((key.strip(), value.strip()))
    return out


def known_keys(library: "Library") -> list[str]:
    return [*BUILT_IN_KEYS, *library.metadata_keys()]


def sources_where(library: "Library", conditions: Iterable[tuple[str, str]]) -> set[int]:
    """Ids of the sources meeting every ``(key, value)`` condition (AND). Keys are ``label``,
    ``patient`` (also ``patient_id``) or a metadata column, matched without regard to case;
    values match whole, ignoring case and surrounding spaces; an empty value matches sources
    without one. An unknown key raises LibraryError naming the known keys."""
    table = library.metadata_table()
    lowered = {k.lower(): j for j, k in enumerate(table.keys)}
    chosen = set(range(library.n_sources))
    for key, value in conditions:
        wanted = value.strip().casefold()
        name = key.strip().lower()
        if name == "patient_id":
            name = "patient"
        if name in BUILT_IN_KEYS:
            attr = "label" if name == "label" else "patient_id"
            have = {s.id: getattr(s, attr) or "" for s in library.sources()}
        elif name in lowered:
            j = lowered[name]
            have = {i: (table.rows[i][j] if i < len(table.rows) else "")
                    for i in range(library.n_sources)}
        else:
            raise LibraryError(library.path, f"no metadata key {key!r} (known: "
                                             f"{', '.join(known_keys(library))})")
        chosen &= {i for i, v in have.items() if v.strip().casefold() == wanted}
    return chosen


class MetadataReading:
    """The metadata half of Library (mixed in; the snapshot is loaded by ``schema.load``)."""

    def metadata_keys(self) -> list[str]:
        """The free metadata columns of this library (not label and patient id)."""
        return list(self._snapshot.metadata.keys)

    def metadata(self, source_id: int) -> dict[str, str]:
        """One source's free metadata: ``{key: value}`` for the values it has."""
        return self._snapshot.metadata.of(int(self.source(source_id).id))

    def metadata_table(self) -> MetadataTable:
        """All metadata (a copy): keys, and one row of values per source that has some."""
        table = self._snapshot.metadata
        return MetadataTable(keys=list(table.keys), rows=list(table.rows))
