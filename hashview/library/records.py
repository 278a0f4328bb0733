"""Plain records exchanged with a library: model provenance, sources and tiles.

These are what callers build and receive; the HDF5 layout is in ``store.py`` and
``docs/library-format.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from hashview.code_kinds import CODE_KIND_NAMES, code_kind

FORMAT_NAME = "hashview-library"
SCHEMA_VERSION = 3  # the newest schema read and written (3: case metadata)
STATUS_COMPLETE = "complete"
CODE_KINDS = CODE_KIND_NAMES  # under the name hashview.library exports


@dataclass(frozen=True)
class ModelInfo:
    """The model that made a library's codes, plus the tiling it was run with.

    ``code_kind`` is "binary" (packed bits; ``bits`` = code length) or "float" (descriptors
    compared by cosine; ``bits`` = their dimension).
    """

    name: str
    arch: str
    bits: int
    sha256: str
    tile_size: int = 224
    target_mpp: float = 0.5
    code_kind: str = "binary"
    # JSON text of the stain reference every tile is normalised to before encoding ("" when
    # none; see hashview.stain_reference): codes with and without it are not comparable
    stain_reference: str = ""

    @classmethod
    def coerce(cls, obj: Any, **overrides) -> "ModelInfo":
        """Build from a ModelInfo, a ModelCard-like object (name/arch/bits/sha256) or a dict.

        Dict keys may be either ``name``/``arch``/``sha256`` or the ``model_*`` spelling used by
        :meth:`Library.create`.
        """
        if isinstance(obj, ModelInfo):
            values = {f.name: getattr(obj, f.name) for f in fields(cls)}
        elif isinstance(obj, Mapping):
            values = {}
            for key in ("name", "arch", "sha256"):
                if key in obj or f"model_{key}" in obj:
                    values[key] = obj.get(key, obj.get(f"model_{key}"))
            for key in ("bits", "tile_size", "target_mpp", "code_kind", "stain_reference"):
                if key in obj:
                    values[key] = obj[key]
        else:
            values = {key: getattr(obj, key) for key in ("name", "arch", "bits", "sha256")}
            for key in ("tile_size", "target_mpp", "code_kind"):
                if getattr(obj, key, None) is not None:
                    values[key] = getattr(obj, key)
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("name", "arch", "bits", "sha256") if values.get(k) is None]
        if missing:
            raise ValueError(f"model info is missing {', '.join(missing)}")
        kind = str(values.get("code_kind") or "binary")
        code_kind(kind)  # a ValueError naming the known kinds for any other
        return cls(name=str(values["name"]), arch=str(values["arch"]), bits=int(values["bits"]),
                   sha256=str(values["sha256"]),
                   tile_size=int(values.get("tile_size", 224)),
                   target_mpp=float(values.get("target_mpp", 0.5)), code_kind=kind,
                   stain_reference=str(values.get("stain_reference") or ""))

    def describe(self) -> str:
        size = code_kind(self.code_kind).size_text(self.bits)
        return f"model '{self.name}' ({size}, sha256 {self.sha256[:12]})"


@dataclass
class SourceRecord:
    """One indexed slide or patch. ``id`` is its row in ``/sources`` (assigned by the library).

    Unknown values are ``None`` here (stored as NaN / "" in the file).
    """

    path: str
    fingerprint: str
    name: str = ""
    byte_size: int = 0
    mtime: float = 0.0
    mpp: Optional[float] = None
    width: int = 0
    height: int = 0
    kind: str = "slide"  # "slide" | "patch"
    label: Optional[str] = None
    patient_id: Optional[str] = None
    mpp_assumed: bool = False
    id: int = -1
    tile_start: int = 0
    tile_count: int = 0
    status: str = STATUS_COMPLETE
    added: str = ""  # ISO-8601 UTC, set by the library

    @classmethod
    def from_input(cls, record: "SourceRecord | Mapping[str, Any]") -> "SourceRecord":
        """Normalise what a caller passes to ``add_source``; library-owned fields are reset."""
        if isinstance(record, SourceRecord):
            values = {f.name: getattr(record, f.name) for f in fields(cls)}
        else:
            known = {f.name for f in fields(cls)}
            unknown = set(record) - known
            if unknown:
                raise ValueError(f"unknown source fields: {', '.join(sorted(unknown))}")
            values = dict(record)
        if not values.get("path") or not values.get("fingerprint"):
            raise ValueError("a source needs 'path' and 'fingerprint'")
        values.update(id=-1, tile_start=0, tile_count=0, status=STATUS_COMPLETE, added="")
        rec = cls(**values)
        rec.path = os.path.abspath(str(rec.path))
        rec.name = rec.name or os.path.basename(rec.path)
        if rec.kind not in ("slide", "patch"):
            raise ValueError(f"source kind must be 'slide' or 'patch', not {rec.kind!r}")
        rec.mpp = None if rec.mpp is None or not math.isfinite(float(rec.mpp)) else float(rec.mpp)
        rec.label = rec.label or None
        rec.patient_id = rec.patient_id or None
        for key in ("path", "name", "fingerprint", "label", "patient_id"):
            if "\0" in str(getattr(rec, key) or ""):  # NUL separates text fields on disk
                raise ValueError(f"{key} contains a NUL character")
        return rec


@dataclass(frozen=True)
class TileRecord:
    """One stored tile: where it is (level-0 pixels of its source) and its label."""

    index: int
    source_id: int
    x: int
    y: int
    size: int
    label: Optional[str]
