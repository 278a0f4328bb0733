"""Desktop integration on Linux (freedesktop.org): menu entry, file associations, icons.

``install()`` copies the desktop entry, the shared-mime-info package and the icons under
``$XDG_DATA_HOME`` (``~/.local/share``), with the entry's ``Exec`` pointing at this very
``hashview``; ``uninstall()`` removes those files and nothing else. Both then refresh the desktop,
MIME and icon caches with whichever of the standard tools are installed. No Qt here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from hashview.errors import HashViewError
from hashview.resources import find_dir, resource_dir

APP_ID = "org.hashview.HashView"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
# Characters that oblige an Exec argument to be quoted (desktop entry spec, "The Exec key").
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def icon_dir() -> Optional[Path]:
    """``resources/icons`` of a source checkout, or ``hashview/_resources/icons`` if installed."""
    return find_dir("icons")


def linux_dir() -> Optional[Path]:
    """The desktop entry and MIME package: ``packaging/linux`` (or ``_resources/linux``)."""
    return find_dir("linux")


def window_icon_path() -> Optional[Path]:
    """The icon the app sets on its windows, or ``None`` when it is not there."""
    folder = icon_dir()
    for name in ("hashview-256.png", "hashview.svg"):
        if folder is not None and (folder / name).is_file():
            return folder / name
    return None


def data_home() -> Path:
    """``$XDG_DATA_HOME``, else ``~/.local/share`` (a relative value is ignored, as the spec says)."""
    value = os.environ.get("XDG_DATA_HOME", "")
    return Path(value) if os.path.isabs(value) else Path.home() / ".local" / "share"


def hashview_command() -> list[str]:
    """The command that starts this HashView: the ``hashview`` script beside this Python, else
    the one on PATH, else ``python -m hashview``."""
    beside = Path(sys.executable).parent / "hashview"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("hashview")
    if found:
        return [str(Path(found).resolve())]
    return [str(Path(sys.executable).resolve()), "-m", "hashview"]


def quote_exec_arg(arg: str) -> str:
    """One ``Exec`` argument, quoted and escaped as the desktop entry spec requires."""
    if any(c in _RESERVED for c in arg):
        arg = '"' + re.sub(r'(["`$\\])', r"\\\1", arg) + '"'
    # The string-value escape (backslash doubled) applies on top of the quoting rule.
    return arg.replace("%", "%%").replace("\\", "\\\\")


def exec_line(command: Sequence[str]) -> str:
    return " ".join(quote_exec_arg(a) for a in command) + " %F"


def desktop_entry(command: Optional[Sequence[str]] = None) -> str:
    """The packaged desktop entry with ``Exec`` (and ``TryExec``) set to ``command``."""
    command = list(command or hashview_command())
    text = _source(f"{APP_ID}.desktop").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith("TryExec="):
            continue
        if line.startswith("Exec="):
            lines.append(f"TryExec={command[0]}")
            line = "Exec=" + exec_line(command)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _source(name: str) -> Path:
    path = resource_dir("linux") / name
    if not path.is_file():
        raise HashViewError(path, "desktop integration file missing from this HashView copy")
    return path


def targets(base: Optional[Path] = None) -> dict[Path, Optional[Path]]:
    """Every file the integration installs: destination -> source (``None``: generated)."""
    icons = resource_dir("icons")
    if not icons.is_dir():
        raise HashViewError(icons, "icon folder missing from this HashView copy")
    sources = [None, _source(f"{APP_ID}.xml")]
    sources += [icons / f"hashview-{n}.png" for n in ICON_SIZES] + [icons / "hashview.svg"]
    for src in sources[1:]:
        if not src.is_file():
            raise HashViewError(src, "icon missing from this HashView copy")
    return dict(zip(_installed_paths(base or data_home()), sources))


def _refresh(base: Path) -> list[dict]:
    """Run the cache tools that exist; report each one (ran, exit code, or missing)."""
    tools = [("update-desktop-database", ["-q", str(base / "applications")]),
             ("update-mime-database", [str(base / "mime")]),
             ("gtk-update-icon-cache", ["-f", "-t", "-q", str(base / "icons" / "hicolor")])]
    report = []
    for tool, args in tools:
        exe = shutil.which(tool)
        if exe is None:
            report.append({"tool": tool, "ran": False, "reason": "not installed"})
            continue
        try:
            done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120,
                                  check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            report.append({"tool": tool, "ran": False, "reason": str(exc)})
            continue
        entry = {"tool": tool, "ran": True, "returncode": done.returncode}
        if done.returncode:
            entry["reason"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
        report.append(entry)
    return report


def install(base: Optional[Path] = None, command: Optional[Sequence[str]] = None,
            refresh: bool = True) -> dict:
    """Write (or rewrite) every file; unchanged files are left alone. Idempotent."""
    base = Path(base) if base else data_home()
    written, unchanged = [], []
    try:
        for dest, src in targets(base).items():
            data = (desktop_entry(command).encode("utf-8") if src is None
                    else src.read_bytes())
            if dest.is_file() and dest.read_bytes() == data:
                unchanged.append(str(dest))
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
            written.append(str(dest))
    except OSError as exc:
        raise HashViewError(getattr(exc, "filename", None) or base,
                            f"cannot write ({exc.strerror or exc})") from None
    return {"data_home": str(base), "written": written, "unchanged": unchanged,
            "exec": exec_line(list(command or hashview_command())),
            "refreshed": _refresh(base) if refresh else []}


def uninstall(base: Optional[Path] = None, refresh: bool = True) -> dict:
    """Remove the files ``install`` writes (only those); folders and other files stay."""
    base = Path(base) if base else data_home()
    removed, absent = [], []
    for dest in _installed_paths(base):
        try:
            dest.unlink()
            removed.append(str(dest))
        except FileNotFoundError:
            absent.append(str(dest))
        except OSError as exc:
            raise HashViewError(dest, f"cannot remove ({exc.strerror or exc})") from None
    return {"data_home": str(base), "removed": removed, "absent": absent,
            "refreshed": _refresh(base) if refresh and removed else []}


def _installed_paths(base: Path) -> list[Path]:
    """Destinations only (no sources needed, so uninstall works from a broken copy too)."""
    paths = [base / "applications" / f"{APP_ID}.desktop",
             base / "mime" / "packages" / f"{APP_ID}.xml"]
    paths += [base / "icons" / "hicolor" / f"{n}x{n}" / "apps" / f"{APP_ID}.png"
              for n in ICON_SIZES]
    paths.append(base / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg")
    return paths
