"""User settings and window state, persisted with QSettings.

With ``$HASHVIEW_HOME`` set (tests, portable installs) the settings live in
``$HASHVIEW_HOME/hashview.ini``, so a test run never touches the user's real settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

MAX_RECENT = 10

# key: (default, type) — one table so the settings dialog and the code agree on defaults.
DEFAULTS: dict[str, tuple[Any, type]] = {
    "device": ("auto", str),            # auto | cuda | cpu
    "model": ("", str),                 # model for new libraries; "" = the default model
    "tile_size": (0, int),              # px, for new libraries; 0 = the model's training tiling
    "target_mpp": (0.0, float),         # µm/px, for new libraries; 0 = the model's
    "top_k": (10, int),
    "cache_mb": (256, int),             # viewer tile cache
    "last_library": ("", str),
    "last_slide": ("", str),            # reopened with the last library at start
    "tile_outlines": (False, bool),
    "sync_zoom": (True, bool),
    "index_engine": ("local", str),     # local | ray (a Ray cluster: pip install hashview[cluster])
    "ray_address": ("", str),           # "" = a local Ray on this computer's cores; auto | HOST:PORT
    "ray_workers": (2, int),            # encoding actors of a Ray run
}


def _qsettings() -> QSettings:
    home = os.environ.get("HASHVIEW_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
        return QSettings(str(Path(home) / "hashview.ini"), QSettings.Format.IniFormat)
    return QSettings("HashView", "HashView")


class AppSettings:
    """Typed access to the app's settings: ``settings.top_k``, ``settings.top_k = 20``."""

    def __init__(self, qsettings: QSettings | None = None):
        object.__setattr__(self, "_q", qsettings or _qsettings())

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(name)
        default, kind = DEFAULTS[name]
        value = self._q.value(name, default)
        if kind is bool:  # INI files give back "true"/"false" strings
            return value in (True, "true", "1", 1)
        try:
            return kind(value)
        except (TypeError, ValueError):
            return default

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in DEFAULTS:
            raise AttributeError(f"unknown setting {name!r}")
        self._q.setValue(name, value)

    def path(self) -> str:
        return self._q.fileName()

    def sync(self) -> None:
        self._q.sync()

    # ---------------------------------------------------------------- recent files
    def recent(self) -> list[str]:
        value = self._q.value("recent", [])
        if isinstance(value, str):  # QSettings returns a lone string for a 1-item list
            value = [value]
        return [str(v) for v in (value or []) if v]

    def add_recent(self, path: str | Path) -> list[str]:
        path = str(Path(path).resolve())
        items = [path] + [p for p in self.recent() if p != path]
        self._q.setValue("recent", items[:MAX_RECENT])
        return items[:MAX_RECENT]

    def clear_recent(self) -> None:
        self._q.setValue("recent", [])

    # ---------------------------------------------------------------- window state
    def window_state(self) -> tuple[QByteArray | None, QByteArray | None]:
        return self._q.value("window/geometry"), self._q.value("window/state")

    def save_window_state(self, geometry: QByteArray, state: QByteArray) -> None:
        self._q.setValue("window/geometry", geometry)
        self._q.setValue("window/state", state)
