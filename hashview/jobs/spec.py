"""``JobSpec``: what a background job runs, written as JSON for the worker process.

``args`` are the keyword arguments of :func:`hashview.indexing.index_paths` (kind "index"),
:func:`hashview.training.train_from_folder` (kind "train") or
:func:`hashview.search.self_check.check_library` (kind "check", the library as
``library_path``), with paths as strings and the tiling
parameters as a dict under ``params``. Path and dataclass values are converted on construction,
so ``JobSpec("index", {"paths": [Path(...)], ...})`` is fine. ``annotations`` (the fields of
:class:`~hashview.annotations.tiles.AnnotationOptions`) labels an index job's slide tiles, and
makes a train job train on the annotated slides under ``data_folder``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hashview.errors import HashViewError

KINDS = ("index", "train", "check")
# Keys each kind cannot run without; the worker checks the rest against the real signatures.
REQUIRED_ARGS = {
    "index": ("paths", "library_path"),
    "train": ("data_folder", "arch", "bits", "out_dir"),
    "check": ("library_path",),
}
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the id names files: keep it path-safe


def cancel_file_for(spec_path: str | Path) -> Path:
    """``jobs/abc.json`` -> ``jobs/abc.cancel``: its existence asks the worker to stop."""
    return Path(spec_path).with_suffix(".cancel")


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)  # e.g. TilingParams -> the "params" dict
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


@dataclass
class JobSpec:
    kind: str
    args: dict
    id: str = field(default_factory=_new_id)
    created: str = field(default_factory=_now)
    title: str = ""

    def __post_init__(self) -> None:
        where = f"job {self.id}" if isinstance(self.id, str) and self.id else "job"
        if self.kind not in KINDS:
            raise HashViewError(where, f"unknown job kind {self.kind!r} (use {', '.join(KINDS)})")
        if not isinstance(self.args, dict):
            raise HashViewError(where, "args must be a JSON object of keyword arguments")
        if not isinstance(self.id, str) or not _ID_PATTERN.match(self.id):
            raise HashViewError(None, f"job id {self.id!r} must be 1-64 letters, digits, _ or -")
        try:
            # Normalise (Paths -> str, dataclasses -> dict) and prove it survives JSON.
            self.args = json.loads(json.dumps(self.args, default=_jsonable))
        except (TypeError, ValueError) as exc:
            raise HashViewError(where, f"args cannot be written as JSON ({exc})") from None
        missing = [k for k in REQUIRED_ARGS[self.kind] if self.args.get(k) in (None, "", [])]
        if missing:
            raise HashViewError(where, f"{self.kind} job needs argument(s): {', '.join(missing)}")
        if "progress" in self.args:
            raise HashViewError(where, "args must not contain 'progress' (the worker reports it)")
        if self.kind == "index":
            paths = self.args["paths"]
            if isinstance(paths, str):
                self.args["paths"] = paths = [paths]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise HashViewError(where, "index job 'paths' must be a list of file or folder "
                                           "paths")
            if "params" in self.args and not isinstance(self.args["params"], (dict, type(None))):
                raise HashViewError(where, "index job 'params' must be a dict of tiling "
                                           "parameters")
        if not isinstance(self.created, str):
            raise HashViewError(where, "created must be an ISO time string")
        if not isinstance(self.title, str):
            raise HashViewError(where, "title must be a string")
        if not self.title:
            self.title = self.default_title()

    def default_title(self) -> str:
        a = self.args
        if self.kind == "index":
            paths = a["paths"]
            what = Path(paths[0]).name if len(paths) == 1 else f"{len(paths)} inputs"
            where = " on Ray" if a.get("engine") == "ray" else ""
            return f"Index {what} into {Path(a['library_path']).name}{where}"
        if self.kind == "check":
            what = "Compare models" if a.get("models") else "Check"
            return f"{what} on {Path(a['library_path']).name}'s labels"
        return f"Train {a['arch']}-{a['bits']} on {Path(str(a['data_folder'])).name}"

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"kind": self.kind, "args": self.args, "id": self.id, "created": self.created,
                "title": self.title}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, path: str | Path | None = None) -> "JobSpec":
        if not isinstance(data, dict):
            raise HashViewError(path, "job spec is not a JSON object")
        missing = [k for k in ("kind", "args") if k not in data]
        if missing:
            raise HashViewError(path, f"job spec lacks {', '.join(missing)}")
        extra = {k: data[k] for k in ("id", "created", "title") if k in data}
        try:
            return cls(data["kind"], data["args"], **extra)
        except HashViewError as exc:
            if path is None:
                raise
            raise HashViewError(path, exc.message) from None

    @classmethod
    def from_json(cls, text: str, path: str | Path | None = None) -> "JobSpec":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HashViewError(path, f"job spec is not valid JSON ({exc})") from None
        return cls.from_dict(data, path)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): a worker never reads half a spec."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(self.to_json())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as exc:
            raise HashViewError(path, f"cannot write job spec ({exc.strerror or exc})") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> "JobSpec":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise HashViewError(path, "no such job spec") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise HashViewError(path, f"cannot read job spec ({reason})") from None
        return cls.from_json(text, path)
