"""Can Qt open a window here? Asked before Qt loads its platform plugin.

When there is no display (or DISPLAY names one that no X server answers on), or a system
library that Qt's platform plugin needs is missing, Qt prints several lines and aborts the
process (exit 134) while the QApplication is made. On Linux the usual culprits are the small
xcb libraries (``libxcb-cursor0`` on Ubuntu desktops, ``libxcb-icccm4``, ``libxcb-keysyms1``,
...), which PySide6 does not bundle.

``window_problem()`` returns one line that names what is missing and how to fix it, or ``None``
when the window can open or when this check cannot tell: then Qt tries, as it would without the
check. Qt-free: PySide6 is imported only to find Qt's plugin folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

# The Debian/Ubuntu package of each system library that Qt's xcb and wayland plugins (and
# QtGui under them) load: the fix a missing library's message names.
DEBIAN_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xinput.so.0": "libxcb-xinput0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}

# Qt >= 6.5 opens this one itself (dlopen) in some builds instead of linking it, so ldd on the
# plugin may not list it; without it the xcb plugin refuses to load all the same.
XCB_CURSOR = "libxcb-cursor.so.0"

DEMO_HINT = '"hashview demo" runs without a window'

# ``missing_libraries(platform)``: the sonames that platform's plugin cannot find, [] when it
# finds them all, None when that cannot be told.
LibraryLister = Callable[[str], Optional[list]]
# ``display_answers(DISPLAY)``: whether that X server takes a connection, None if it cannot tell.
DisplayProbe = Callable[[str], Optional[bool]]


def window_problem(environ: Optional[Mapping[str, str]] = None,
                   missing_libraries: Optional[LibraryLister] = None,
                   system: str = sys.platform,
                   display_answers: Optional[DisplayProbe] = None) -> Optional[str]:
    """One line saying why Qt cannot open a window here, or None (it can, or cannot be told)."""
    try:
        return _window_problem(os.environ if environ is None else environ,
                               missing_libraries or missing_plugin_libraries, system,
                               display_answers or x_display_answers)
    except Exception:  # noqa: BLE001  (a check that fails must not stop an app that may work)
        return None


def _window_problem(environ: Mapping[str, str], missing_libraries: LibraryLister,
                    system: str, display_answers: DisplayProbe) -> Optional[str]:
    if not system.startswith("linux"):
        return None  # Windows and macOS have their display built in
    requested = bool(environ.get("QT_QPA_PLATFORM", "").strip())
    no_display: list[str] = []  # the variables that would name each platform's display
    missing_by_platform: dict[str, list[str]] = {}
    silent_display = None  # an X display that no server answers on (a stale DISPLAY)
    # Qt tries the platforms in turn and aborts only when none loads: so does this check.
    for platform in qt_platforms(environ):
        if platform == "xcb":
            display_variable = "DISPLAY"
        elif platform.startswith("wayland"):
            platform, display_variable = "wayland", "WAYLAND_DISPLAY"
        else:
            return None  # offscreen, minimal, vnc, eglfs...: no desktop display needed
        if not environ.get(display_variable):
            if platform == "wayland" and requested:
                return None  # Qt then tries the default socket, wayland-0: it may be there
            no_display.append(display_variable)
            continue
        missing = missing_libraries(platform)
        if missing:
            missing_by_platform[platform] = list(dict.fromkeys(missing))
            continue
        if platform == "xcb" and display_answers(environ["DISPLAY"]) is False:
            silent_display = environ["DISPLAY"]
            continue
        return None  # this platform loads (or that cannot be told: let Qt try)
    if missing_by_platform:
        # X11 first: on a Wayland desktop it also works through XWayland; Qt falls back to it.
        platform = "xcb" if "xcb" in missing_by_platform else next(iter(missing_by_platform))
        return missing_libraries_line(missing_by_platform[platform])
    if silent_display is not None:
        return (f"hashview: cannot open the window: no X server answers on DISPLAY="
                f"{silent_display}; {DEMO_HINT}")
    if not no_display:
        return None  # QT_QPA_PLATFORM named no platform: Qt's own message says so
    unset = sorted(set(no_display))
    why = f"neither {' nor '.join(unset)} is set" if len(unset) > 1 else f"{unset[0]} is not set"
    return f"hashview: cannot open the window: there is no display ({why}); {DEMO_HINT}"


def qt_platforms(environ: Mapping[str, str]) -> list[str]:
    """The platform plugins Qt tries, in order: QT_QPA_PLATFORM's list, else Qt's default."""
    requested = environ.get("QT_QPA_PLATFORM", "").strip()
    if requested:  # "name[:options][;name...]"
        return [part.split(":", 1)[0].strip() for part in requested.split(";") if part.strip()]
    # xcb is Qt's default on Linux; in a Wayland session Qt tries wayland first
    if environ.get("XDG_SESSION_TYPE") == "wayland" or environ.get("WAYLAND_DISPLAY"):
        return ["wayland", "xcb"]
    return ["xcb"]


def missing_libraries_line(missing: Sequence[str]) -> str:
    """The message for libraries that a platform plugin needs and cannot find."""
    if len(missing) == 1:
        names, which = missing[0], "which is"
    else:
        names, which = f"{', '.join(missing[:-1])} and {missing[-1]}", "which are"
    packages = list(dict.fromkeys(DEBIAN_PACKAGES[name] for name in missing
                                  if name in DEBIAN_PACKAGES))
    fix = f" (Debian/Ubuntu: sudo apt-get install {' '.join(packages)})" if packages else ""
    return (f"hashview: cannot open the window: Qt needs {names}, {which} not installed{fix}; "
            f"{DEMO_HINT}")


def missing_plugin_libraries(platform: str) -> Optional[list[str]]:
    """The libraries Qt's ``platform`` plugin needs and the loader cannot find (ldd), or None."""
    plugin = platform_plugin(platform)
    if plugin is None:
        return None
    try:  # a few milliseconds: ldd only resolves the libraries, it runs nothing of them
        result = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # no ldd (not glibc): cannot tell
    if result.returncode != 0:
        return None
    resolved = ldd_resolved(result.stdout)
    missing = [name for name, where in resolved.items() if where == "not found"]
    if platform == "xcb" and XCB_CURSOR not in resolved and not _loadable(XCB_CURSOR):
        missing.append(XCB_CURSOR)
    return [name for name in missing if not _bundled(name)]


def ldd_resolved(ldd_output: str) -> dict[str, str]:
    """``{soname: where ldd found it, or "not found"}`` from ldd's ``NAME => WHERE`` lines."""
    resolved: dict[str, str] = {}
    for line in ldd_output.splitlines():
        name, arrow, where = line.strip().partition(" => ")
        if arrow:
            resolved.setdefault(name, where.split(" (0x")[0].strip())
    return resolved


def platform_plugin(platform: str) -> Optional[Path]:
    """Qt's plugin file for ``platform`` (libqxcb.so...), where Qt looks first; None if none."""
    for folder in _platform_plugin_folders():
        candidate = folder / f"libq{platform}.so"
        if candidate.is_file():
            return candidate
    return None


def _platform_plugin_folders() -> list[Path]:
    folders = []
    explicit = os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    if explicit:
        folders.append(Path(explicit))
    folders += [Path(p) / "platforms"
                for p in os.environ.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    try:  # QtCore loads no platform plugin; it knows where Qt keeps them (also when frozen)
        from PySide6.QtCore import QLibraryInfo
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("PySide6")
        if spec is not None and spec.submodule_search_locations:
            folders.append(Path(list(spec.submodule_search_locations)[0]) / "Qt" / "plugins"
                           / "platforms")
    else:
        folders.append(Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
                       / "platforms")
    return folders


def x_display_answers(display: str) -> Optional[bool]:
    """Whether the X server ``display`` takes a connection (asked with libxcb, as Qt will)."""
    import ctypes

    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return None
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)  # never NULL: an error object instead
    try:
        return xcb.xcb_connection_has_error(connection) == 0
    finally:
        xcb.xcb_disconnect(connection)


def _loadable(soname: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def _bundled(soname: str) -> bool:
    """A stand-alone build carries some system libraries beside its program: they are there."""
    bundle = getattr(sys, "_MEIPASS", None)
    return bool(bundle) and (Path(bundle) / soname).exists()
