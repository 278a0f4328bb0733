"""Bundled resources: found in a checkout and in an installed copy; a wheel carries them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hashview import resources
from hashview.errors import HashViewError

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_reads_its_resource_folders_in_place():
    for name, folder in resources.CHECKOUT_DIRS.items():
        assert resources.find_dir(name) == ROOT / folder
    from hashview import demo
    from hashview import desktop_entry as desktop
    from hashview.models import bundled_models_dirs

    assert bundled_models_dirs() == [ROOT / "resources" / "models"]
    assert desktop.icon_dir() == ROOT / "resources" / "icons"
    assert desktop.linux_dir() == ROOT / "packaging" / "linux"
    assert demo.DEMO_SLIDE.is_file() and demo.DEMO_QUERY.is_file()
    with pytest.raises(KeyError, match="unknown resource folder"):
        resources.find_dir("nonsense")


@pytest.fixture
def installed_copy(tmp_path, monkeypatch):
    """The package as pip installs it: site-packages/hashview/_resources, no checkout around it
    but a stray top-level site-packages/resources/ of some other package."""
    site = tmp_path / "site-packages"
    package = site / "hashview"
    (site / "resources" / "models").mkdir(parents=True)
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    monkeypatch.setattr(resources, "INSTALLED_ROOT", package / "_resources")
    return package / "_resources"


def test_an_installed_copy_reads_hashview_resources(installed_copy):
    assert resources.checkout_root() is None
    assert resources.find_dir("models") is None  # the stray folder is not ours
    assert resources.resource_dir("models") == installed_copy / "models"  # named in errors
    shutil.copytree(ROOT / "resources" / "icons", installed_copy / "icons")
    assert resources.find_dir("icons") == installed_copy / "icons"

    from hashview import desktop_entry as desktop
    from hashview.models import bundled_models_dirs

    assert bundled_models_dirs() == []
    assert desktop.window_icon_path() == installed_copy / "icons" / "hashview-256.png"
    with pytest.raises(HashViewError) as raised:  # no desktop files in this copy
        desktop.desktop_entry(["/opt/hashview"])
    assert str(installed_copy / "linux") in str(raised.value)
    assert "missing from this HashView copy" in str(raised.value)


def test_missing_demo_data_is_a_one_line_error(monkeypatch, tmp_path):
    from hashview import demo

    monkeypatch.setattr(demo, "DEMO_SLIDE", tmp_path / "gone" / "CMU-1-Small-Region.svs")
    with pytest.raises(HashViewError, match="gone/CMU-1-Small-Region.svs: demo data missing"):
        demo.build_demo_library(tmp_path / "demo.h5")


@pytest.mark.slow
def test_the_wheel_carries_every_resource(tmp_path):
    """Build the wheel (setup.py's build hook) from a copy of the sources, read its file list."""
    try:  # setuptools builds wheels itself since 70.1, older ones need the wheel package
        import setuptools.command.bdist_wheel  # noqa: F401
    except ImportError:
        pytest.importorskip("wheel")
    source = tmp_path / "src"
    for name in ("hashview", "resources", "packaging/linux"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                           str(source)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("hashview-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = set()
    for name, folder in resources.CHECKOUT_DIRS.items():
        files = [p for p in (ROOT / folder).rglob("*") if p.is_file()]
        assert files, folder
        expected |= {f"hashview/_resources/{name}/{p.relative_to(ROOT / folder).as_posix()}"
                     for p in files}
    assert expected <= names, sorted(expected - names)[:5]
    assert "hashview/resources.py" in names and "hashview/gui/app.py" in names
    assert not any(n.startswith(("resources/", "packaging/", "tests/")) for n in names)
