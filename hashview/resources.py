"""Where HashView's bundled files are: models, icons, demo data, the Linux desktop files.

One rule for every copy of HashView:

- a source checkout (``pip install -e .``, or running from the repository) reads them in place:
  ``resources/models``, ``resources/icons``, ``resources/demo`` and ``packaging/linux``;
- an installed wheel and the stand-alone bundle carry them inside the package, under
  ``hashview/_resources/<name>`` (``setup.py`` copies the folders there when it builds a wheel;
  ``packaging/hashview.spec`` does the same for the bundle).

A checkout is recognised by the ``pyproject.toml`` beside the package folder, so a stray
top-level ``resources/`` folder that some other package left in ``site-packages`` is never taken
for ours. Standard library only: ``setup.py`` reads ``CHECKOUT_DIRS`` from this file at build time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
INSTALLED_ROOT = PACKAGE_DIR / "_resources"
# Resource name -> its folder in a source checkout, relative to the repository root.
CHECKOUT_DIRS = {
    "models": "resources/models",
    "icons": "resources/icons",
    "demo": "resources/demo",
    "linux": "packaging/linux",
}


def checkout_root() -> Optional[Path]:
    """The repository root when this package runs from a source checkout, else ``None``."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def candidates(name: str) -> list[Path]:
    """Every place resource folder ``name`` may be, in the order they are tried."""
    if name not in CHECKOUT_DIRS:
        raise KeyError(f"unknown resource folder {name!r} (known: {', '.join(CHECKOUT_DIRS)})")
    places = []
    root = checkout_root()
    if root is not None:
        places.append(root / CHECKOUT_DIRS[name])
    places.append(INSTALLED_ROOT / name)
    return places


def find_dir(name: str) -> Optional[Path]:
    """The first existing folder for resource ``name``, or ``None`` if this copy lacks it."""
    return next((p for p in candidates(name) if p.is_dir()), None)


def resource_dir(name: str) -> Path:
    """Like ``find_dir``, but never ``None``: when the folder is missing, the place it was
    expected at (so that an error message can name it)."""
    return find_dir(name) or candidates(name)[0]
