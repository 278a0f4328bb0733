"""Linux desktop integration: the packaged files validate, install/uninstall-desktop round trip."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hashview import desktop_entry as desktop
from hashview.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINUX = ROOT / "packaging" / "linux"
DESKTOP_FILE = LINUX / f"{desktop.APP_ID}.desktop"
MIME_FILE = LINUX / f"{desktop.APP_ID}.xml"
NS = "{http://www.freedesktop.org/standards/shared-mime-info}"
validator = shutil.which("desktop-file-validate")
needs_validator = pytest.mark.skipif(validator is None, reason="desktop-file-validate missing")


def validate(path: Path) -> None:
    done = subprocess.run([validator, str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert done.returncode == 0 and not errors, done.stdout + done.stderr


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path}: not a PNG"
    return struct.unpack(">II", data[16:24])


def entry(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@needs_validator
def test_packaged_desktop_file_validates():
    validate(DESKTOP_FILE)
    keys = entry(DESKTOP_FILE.read_text())
    assert keys["Exec"] == "hashview %F" and keys["Icon"] == desktop.APP_ID
    assert "application/x-hashview-library" in keys["MimeType"].split(";")


def test_mime_package_declares_the_library_type():
    root = ET.parse(MIME_FILE).getroot()
    types = {t.get("type"): t for t in root.iter(f"{NS}mime-type")}
    library = types["application/x-hashview-library"]
    assert "*.h5" in [g.get("pattern") for g in library.iter(f"{NS}glob")]
    assert library.find(f"{NS}sub-class-of").get("type") == "application/x-hdf"
    assert library.find(f"{NS}magic") is not None
    declared = set(entry(DESKTOP_FILE.read_text())["MimeType"].rstrip(";").split(";"))
    assert set(types) <= declared  # every type we define is one the app opens


def test_exec_quoting_follows_the_spec():
    assert desktop.exec_line(["/usr/bin/hashview"]) == "/usr/bin/hashview %F"
    assert desktop.exec_line(["/home/a b/bin/hashview"]) == '"/home/a b/bin/hashview" %F'
    assert desktop.quote_exec_arg('/x/"q"$') == '"/x/\\\\"q\\\\"\\\\$"'
    assert desktop.quote_exec_arg("/x/100%") == "/x/100%%"


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "share"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_install_and_uninstall_desktop(data_home, capsys):
    # Unrelated files already in the folders install-desktop writes to must survive both.
    bystanders = [data_home / "applications" / "other.desktop",
                  data_home / "mime" / "packages" / "other.xml",
                  data_home / "icons" / "hicolor" / "48x48" / "apps" / "other.png"]
    for path in bystanders:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not ours")

    code, out, err = run(capsys, "install-desktop", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["data_home"] == str(data_home)
    expected = set(desktop.targets(data_home))
    assert {Path(p) for p in result["written"]} == expected
    assert all(p.is_file() for p in expected)

    entry_path = data_home / "applications" / f"{desktop.APP_ID}.desktop"
    keys = entry(entry_path.read_text())
    exe = keys["TryExec"]
    assert os.path.isabs(exe) and os.access(exe, os.X_OK)
    assert keys["Exec"].endswith(" %F") and keys["Icon"] == desktop.APP_ID
    if validator:
        validate(entry_path)
    for size in desktop.ICON_SIZES:
        icon = data_home / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{desktop.APP_ID}.png"
        assert png_size(icon) == (size, size)
    svg = data_home / "icons" / "hicolor" / "scalable" / "apps" / f"{desktop.APP_ID}.svg"
    assert ET.parse(svg).getroot().tag.endswith("svg")
    if shutil.which("update-mime-database"):
        assert (data_home / "mime" / "mime.cache").is_file()

    code, out, err = run(capsys, "install-desktop")  # idempotent
    assert code == 0, err
    assert "wrote" not in out and out.count("unchanged") == len(expected)

    code, out, err = run(capsys, "uninstall-desktop")
    assert code == 0, err
    assert out.count("removed ") == len(expected)
    assert not any(p.exists() for p in expected)
    assert all(p.read_bytes() == b"not ours" for p in bystanders)

    code, out, err = run(capsys, "uninstall-desktop", "--json")
    assert code == 0 and json.loads(out)["removed"] == []


def test_install_desktop_reports_missing_tools(data_home, capsys, monkeypatch):
    monkeypatch.setattr(desktop.shutil, "which", lambda name: None)
    code, out, err = run(capsys, "install-desktop")
    assert code == 0, err
    assert "skipped update-mime-database (not installed)" in out
    assert (data_home / "mime" / "packages" / f"{desktop.APP_ID}.xml").is_file()


@pytest.mark.slow
def test_bundle_launcher_runs_hashview_modules_like_python_m(tmp_path):
    """The bundle's program answers ``-m hashview...`` (how the app starts its job worker)."""
    import sys

    launcher = ROOT / "packaging" / "launcher.py"
    env = {**os.environ, "HASHVIEW_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(launcher), "-m", "hashview", "models", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "dch-64" in {card["name"] for card in json.loads(done.stdout)}
    done = subprocess.run([sys.executable, str(launcher), "-m", "os"], capture_output=True,
                          text=True, env=env, check=False)
    assert done.returncode == 2 and "only HashView's own modules" in done.stderr
