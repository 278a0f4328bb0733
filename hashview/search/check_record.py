"""The last check of a library on its labels, kept beside it (``LIB.h5.hvcheck``), so that a
search can say when the model was found to serve the library's labels badly.

A record holds only for the library (its creation time), the generation and the model it was
made with: any change of the library (tiles added or removed, labels changed), or another
library made at the same path, makes it stale, and a stale record is
ignored, not trusted. So is one that cannot be read (damaged, foreign, too large, not a regular
file). A record that cannot be written leaves the check itself standing; the caller says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from hashview.errors import printable
from hashview.fileio import atomic_write_bytes, read_regular_file
from hashview.search.self_check import COLLAPSED, NEAR_CHANCE, STATUSES, WEAK, LibraryCheck

SUFFIX = ".hvcheck"
FORMAT = 1
MAX_BYTES = 64 * 1024
MAX_VERDICT_CHARS = 2000
# The statuses a search is cautioned by.
CAUTION_STATUSES = (COLLAPSED, NEAR_CHANCE, WEAK)


def record_path(library_path) -> Path:
    return Path(str(library_path) + SUFFIX)


def remember(check: LibraryCheck) -> Optional[str]:
    """Keep ``check`` beside its library; None, or one line on why it could not be kept."""
    judged = len(check.judged)
    data = {"format": FORMAT, "library_created": check.library_created,
            "generation": check.generation,
            "model_sha256": check.model_sha256, "model": check.model, "status": check.status,
            "verdict": check.verdict(), "k": check.k, "queries": check.queries,
            "balanced_accuracy": check.balanced_accuracy,
            "chance": 1.0 / judged if judged else None}
    path = record_path(check.library)
    try:
        atomic_write_bytes(path, json.dumps(data).encode("utf-8"))
    except OSError as exc:
        return f"{printable(path)}: check not kept ({exc.strerror or exc})"
    return None


def _read(library_path) -> Optional[dict]:
    try:
        data = json.loads(read_regular_file(record_path(library_path), MAX_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def last_status(library_path) -> Optional[str]:
    """The status of the last kept check, whatever the library's state since (None when none
    can be read): the app warns again after indexing only when the verdict changed."""
    data = _read(library_path)
    return data["status"] if data is not None and data.get("status") in STATUSES else None


def recalled(library_path, created: str, generation: int, model_sha256: str) -> Optional[dict]:
    """The kept check of the library created at ``created``, at ``generation``, made with this
    model; None when none is kept, it is stale (another library at the same path, a change
    since, another model) or it cannot be read."""
    data = _read(library_path)
    if not (data is not None and data.get("library_created") == (created or "")
            and type(data.get("generation")) is int and data["generation"] == generation
            and isinstance(data.get("model_sha256"), str)
            and data["model_sha256"] == (model_sha256 or "")
            and data.get("status") in STATUSES
            and isinstance(data.get("verdict"), str)
            and len(data["verdict"]) <= MAX_VERDICT_CHARS):
        return None
    return data


def of_library(library_path, stats: dict) -> Optional[dict]:
    """:func:`recalled` for a library described by its ``Library.stats()``."""
    model = stats.get("model") or {}
    return recalled(library_path, str(stats.get("created") or ""), stats.get("generation"),
                    str(model.get("sha256") or ""))


def headline(record: Optional[dict]) -> Optional[str]:
    """The kept check in a few words for a library's header or ``hashview info`` ("NEAR
    CHANCE, balanced 0.50, chance 0.50"), or None when there is none or it judged nothing."""
    if record is None or record["status"] == "not judged":
        return None
    numbers = (record.get("balanced_accuracy"), record.get("chance"))
    flag = "" if record["status"] == "fine" else f"{record['status'].upper()}, "
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return record["status"].upper()
    balanced, chance = numbers
    return f"{flag}balanced {balanced:.2f}, chance {chance:.2f}"


def caution(record: Optional[dict]) -> Optional[str]:
    """A line for search results when the kept check found the model serving the library's
    labels badly; None otherwise."""
    if record is None or record["status"] not in CAUTION_STATUSES:
        return None
    status = record["status"].upper()
    numbers = (record.get("balanced_accuracy"), record.get("chance"), record.get("k"),
               record.get("queries"))
    if record["status"] == COLLAPSED or not all(isinstance(n, (int, float)) and
                                                 not isinstance(n, bool) for n in numbers):
        return f"the library's last check on its labels: {printable(record['verdict'])}"
    balanced, chance, k, queries = numbers
    return (f"votes {status} on this library's labels (last check: balanced vote@{int(k)} "
            f"{balanced:.2f}, chance {chance:.2f}, {int(queries)} queries)")
