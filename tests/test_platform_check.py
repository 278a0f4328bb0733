"""The desktop app says in one line why Qt cannot open its window, instead of Qt's abort.

The environment and the libraries that the platform plugins miss are given to the check, so
these tests do not depend on this machine's display or libraries; the last one runs the real
``hashview`` command without a display.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hashview.gui import platform_check
from hashview.gui.platform_check import (DEBIAN_PACKAGES, ldd_resolved, missing_plugin_libraries,
                                         window_problem, x_display_answers)


def libraries_missing(by_platform: dict):
    """A ``missing_libraries`` stand-in: the given lists; it records which platforms it saw."""
    def missing(platform: str):
        missing.asked.append(platform)
        return by_platform[platform]
    missing.asked = []
    return missing


def never_asked(platform: str):
    raise AssertionError(f"libraries of {platform} looked up")


def answers(display: str) -> bool:
    return True


def check(environ: dict, missing_libraries=never_asked, display_answers=answers) -> str | None:
    return window_problem(environ, missing_libraries, system="linux",
                          display_answers=display_answers)


def test_no_display_says_so_and_points_to_the_demo():
    line = check({})
    assert line.startswith("hashview: ")
    assert "no display (DISPLAY is not set)" in line
    assert "hashview demo" in line
    assert "\n" not in line


def test_wayland_session_without_either_display_names_both_variables():
    line = check({"XDG_SESSION_TYPE": "wayland"})
    assert "neither DISPLAY nor WAYLAND_DISPLAY is set" in line


def test_missing_xcb_libraries_are_named_with_the_packages_that_fix_them():
    missing = libraries_missing({"xcb": ["libxcb-cursor.so.0", "libxcb-icccm.so.4",
                                         "libxcb-cursor.so.0"]})
    line = check({"DISPLAY": ":0"}, missing)
    assert missing.asked == ["xcb"]
    assert "Qt needs libxcb-cursor.so.0 and libxcb-icccm.so.4, which are not installed" in line
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4)" in line
    assert "hashview demo" in line and "\n" not in line


def test_a_library_without_a_known_package_is_still_named():
    line = check({"DISPLAY": ":0"}, libraries_missing({"xcb": ["libunheard-of.so.3"]}))
    assert "Qt needs libunheard-of.so.3, which is not installed;" in line
    assert "apt-get" not in line


@pytest.mark.parametrize("found", [[], None], ids=["all-there", "cannot-tell"])
def test_qt_is_left_to_start_when_nothing_is_missing_or_it_cannot_be_told(found):
    assert check({"DISPLAY": ":0"}, libraries_missing({"xcb": found})) is None


@pytest.mark.parametrize("platform", ["offscreen", "minimal", "vnc:size=800x600", "eglfs",
                                      "offscreen;xcb"])
def test_platforms_without_a_desktop_display_are_not_checked(platform):
    assert check({"QT_QPA_PLATFORM": platform}) is None


def test_explicit_xcb_needs_an_x_display_even_in_a_wayland_session():
    line = check({"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "wayland-0"})
    assert "no display (DISPLAY is not set)" in line


def test_wayland_alone_is_checked_with_its_own_plugin():
    missing = libraries_missing({"wayland": ["libwayland-cursor.so.0"]})
    line = check({"WAYLAND_DISPLAY": "wayland-0"}, missing)
    assert missing.asked == ["wayland"]
    assert "sudo apt-get install libwayland-cursor0)" in line
    assert check({"WAYLAND_DISPLAY": "wayland-0"}, libraries_missing({"wayland": []})) is None


def test_with_both_displays_one_working_plugin_is_enough():
    both = {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    xcb_broken = libraries_missing({"wayland": [], "xcb": ["libxcb-icccm.so.4"]})
    assert check(both, xcb_broken) is None
    wayland_broken = libraries_missing({"wayland": ["libwayland-cursor.so.0"], "xcb": []})
    assert check(both, wayland_broken) is None
    assert wayland_broken.asked == ["wayland", "xcb"]
    # Both broken: X11's fix, which also serves through XWayland.
    line = check(both, libraries_missing({"wayland": ["libwayland-cursor.so.0"],
                                          "xcb": ["libxcb-icccm.so.4"]}))
    assert "libxcb-icccm4" in line and "libwayland" not in line


def test_a_display_no_x_server_answers_on_is_named():
    def silent(display: str) -> bool:
        silent.asked.append(display)
        return False
    silent.asked = []
    line = check({"DISPLAY": ":77"}, libraries_missing({"xcb": []}), silent)
    assert silent.asked == [":77"]
    assert "no X server answers on DISPLAY=:77" in line and "hashview demo" in line
    # Missing libraries come first: Qt cannot even try the display without them.
    line = check({"DISPLAY": ":77"}, libraries_missing({"xcb": ["libxcb-icccm.so.4"]}), silent)
    assert "libxcb-icccm4" in line
    # Also where ldd cannot tell: the probe itself needs libxcb.
    line = check({"DISPLAY": ":77"}, libraries_missing({"xcb": None}), silent)
    assert "no X server answers on DISPLAY=:77" in line
    # Wayland, tried first in a Wayland session, is enough; or its libraries are the fix.
    both = {"DISPLAY": ":77", "WAYLAND_DISPLAY": "wayland-0"}
    assert check(both, libraries_missing({"wayland": [], "xcb": []}), silent) is None
    line = check(both, libraries_missing({"wayland": ["libwayland-cursor.so.0"], "xcb": []}),
                 silent)
    assert "libwayland-cursor0" in line
    assert check({"DISPLAY": ":77"}, libraries_missing({"xcb": []}), lambda d: None) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 displays: Linux")
def test_an_x_display_without_a_server_does_not_answer():
    number = next(n for n in range(4321, 4400) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    answer = x_display_answers(f":{number}")
    if answer is None:
        pytest.skip("no libxcb.so.1 here")
    assert answer is False


def test_explicit_wayland_without_wayland_display_is_left_to_qt():
    # Qt then connects to the default socket, which may well be there.
    assert check({"QT_QPA_PLATFORM": "wayland"}) is None


def test_not_checked_off_linux():
    assert window_problem({}, never_asked, system="win32") is None
    assert window_problem({}, never_asked, system="darwin") is None


def test_a_failing_check_lets_qt_try():
    assert check({"DISPLAY": ":0"}, never_asked) is None


LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /x/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f48)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f48)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-icccm.so.4 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f48)
"""


def test_ldd_lines_are_read_into_where_each_library_was_found():
    assert ldd_resolved(LDD_OUTPUT) == {
        "libQt6XcbQpa.so.6": "/x/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6",
        "libxcb-cursor.so.0": "/lib/x86_64-linux-gnu/libxcb-cursor.so.0",
        "libxcb-icccm.so.4": "not found",
        "libxcb-keysyms.so.1": "not found",
    }


def test_libraries_that_ldd_does_not_find_are_missing_once_each_in_order(monkeypatch, tmp_path):
    fake_ldd(monkeypatch, tmp_path, LDD_OUTPUT)
    assert missing_plugin_libraries("xcb") == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    fake_ldd(monkeypatch, tmp_path, LDD_OUTPUT.replace("=> not found", "=> /lib/found.so"))
    assert missing_plugin_libraries("xcb") == []


def fake_ldd(monkeypatch, tmp_path, output: str, returncode: int = 0):
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    monkeypatch.setattr(platform_check, "platform_plugin", lambda platform: plugin)
    monkeypatch.setattr(platform_check.subprocess, "run", lambda *a, **k: SimpleNamespace(
        stdout=output, returncode=returncode))


def test_xcb_cursor_is_checked_where_qt_opens_it_itself(monkeypatch, tmp_path):
    """Some Qt builds dlopen libxcb-cursor instead of linking it: ldd does not list it."""
    cursor_line = next(line for line in LDD_OUTPUT.splitlines(keepends=True)
                       if line.startswith("\tlibxcb-cursor"))
    fake_ldd(monkeypatch, tmp_path, LDD_OUTPUT.replace(cursor_line, ""))
    monkeypatch.setattr(platform_check, "_loadable", lambda soname: False)
    assert missing_plugin_libraries("xcb") == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1",
                                               "libxcb-cursor.so.0"]
    monkeypatch.setattr(platform_check, "_loadable", lambda soname: True)
    assert missing_plugin_libraries("xcb") == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]


def test_libraries_carried_by_a_stand_alone_build_are_not_missing(monkeypatch, tmp_path):
    fake_ldd(monkeypatch, tmp_path, LDD_OUTPUT)
    (tmp_path / "libxcb-keysyms.so.1").write_bytes(b"")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert missing_plugin_libraries("xcb") == ["libxcb-icccm.so.4"]


def test_ldd_that_fails_means_cannot_tell(monkeypatch, tmp_path):
    fake_ldd(monkeypatch, tmp_path, "", returncode=1)
    assert missing_plugin_libraries("xcb") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland displays: Linux")
def test_hashview_without_a_display_exits_with_one_line_instead_of_aborting(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if name not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["HASHVIEW_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "hashview"], env=env, capture_output=True,
                            text=True, timeout=300)  # the timeout only stops a hang
    assert result.returncode == 1, result.stderr  # Qt's abort is -6 (134 from a shell)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no display" in lines[0] and "hashview demo" in lines[0]
    assert result.stdout == ""


def test_readme_lists_the_packages_that_ci_installs_and_the_check_names():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    install = re.search(r"^ {4}sudo apt-get install (.+)$", readme, re.M)
    assert install, "README.md: no 'sudo apt-get install' line for the window's libraries"
    packages = set(install.group(1).split())
    ci_packages = set(re.findall(r"\S+\.so\.\d+:([\w.+-]+)", (root / ".ci" / "run").read_text()))
    assert packages <= ci_packages
    assert packages <= set(DEBIAN_PACKAGES.values())
