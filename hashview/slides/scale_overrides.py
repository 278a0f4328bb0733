"""Scales entered by the user for slides whose file records none (µm per level-0 pixel).

They live in ``<user data folder>/slide_scales.json``, keyed by the file's content fingerprint:
the scale follows a slide that is moved or renamed, and another file that later takes the same
path does not inherit it. :func:`hashview.slides.open_source` applies a stored scale to a source
whose file has none, so the viewer, tiling and indexing all measure with it. A scale recorded by
the file itself always wins: the file knows its scanner better than a remembered number.

A missing, unreadable or damaged scales file reads as "no scales": opening a slide never fails
because of it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from hashview.errors import SourceError
from hashview.fileio import atomic_write_bytes, user_data_dir

from .base import Source

log = logging.getLogger(__name__)

SCALES_FILE = "slide_scales.json"
# Plausible level-0 scales: a 100x oil objective is ~0.1 µm/px, a macro photograph ~20 µm/px.
MIN_USER_MPP = 0.05
MAX_USER_MPP = 50.0


def scales_path() -> Path:
    return user_data_dir() / SCALES_FILE


def check_mpp(mpp: float) -> float:
    """``mpp`` as a float, or ``ValueError`` saying which range is accepted."""
    value = float(mpp)
    if not math.isfinite(value) or not MIN_USER_MPP <= value <= MAX_USER_MPP:
        raise ValueError(f"µm per pixel must be from {MIN_USER_MPP:g} to {MAX_USER_MPP:g}, "
                         f"got {mpp!r}")
    return value


def _fingerprint(path: str | Path) -> str | None:
    from hashview.library.fingerprint import fingerprint_file  # h5py only when needed

    try:
        return fingerprint_file(path)
    except SourceError:
        return None


def _load() -> dict[str, dict]:
    try:
        data = json.loads(scales_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", scales_path(), exc)
        return {}
    return data if isinstance(data, dict) else {}


def stored_mpp(path: str | Path) -> float | None:
    """The scale stored for the file at ``path``, or ``None``."""
    if not scales_path().is_file():  # the usual case: no fingerprinting at all
        return None
    fingerprint = _fingerprint(path)
    entry = _load().get(fingerprint) if fingerprint else None
    try:
        return check_mpp(entry["mpp"]) if isinstance(entry, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def store_mpp(path: str | Path, mpp: float | None) -> None:
    """Remember ``mpp`` for the file at ``path``; ``None`` forgets it. Raises ``ValueError`` for
    an implausible scale and :class:`SourceError` when the file cannot be read."""
    from hashview.library.fingerprint import fingerprint_file

    fingerprint = fingerprint_file(path)
    scales = _load()
    if mpp is None:
        scales.pop(fingerprint, None)
    else:
        # the path is only a note for a person reading the file; the fingerprint is the key
        scales[fingerprint] = {"mpp": check_mpp(mpp), "path": str(Path(path).resolve())}
    scales_path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(scales_path(), json.dumps(scales, indent=1).encode("utf-8"))


def apply_stored_mpp(source: Source) -> bool:
    """Give ``source`` its stored scale when its file records none; True if one was applied."""
    if source.mpp is not None:
        return False
    mpp = stored_mpp(source.path)
    if mpp is None:
        return False
    source.set_user_mpp(mpp)
    return True
