"""Damaged or hostile library files: refused at open (or as their tiles are read) in one line
naming the file, with little memory, and never read from outside the file.

Every file is made at test time from a small real library, edited with h5py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from conftest import KATHER
from hashview.cli import main as cli_main
from hashview.errors import LibraryError, printable
from hashview.library import Library
from hashview.library.legacy import write_schema1

MODEL = dict(model_name="hatdh-64", model_arch="hatdh", bits=64, model_sha256="a" * 64)
# (name, tiles, label): source 2 has no tiles, so ranges of length 0 are covered
SOURCES = [("a.svs", 4, "tumor"), ("b.svs", 5, "stroma"), ("c.svs", 0, None), ("d.svs", 6, None)]
N_TILES = sum(n for _, n, _ in SOURCES)
REPO = Path(__file__).resolve().parents[1]


def fill(lib: Library) -> None:
    for i, (name, n, label) in enumerate(SOURCES):
        codes = np.random.default_rng(i).integers(0, 256, (n, lib.code_bytes), dtype=np.uint8)
        lib.add_source({"path": f"/data/{name}", "fingerprint": f"fp-{name}", "label": label},
                       codes, np.arange(n) * 224, np.full(n, 448), np.full(n, 224))


@pytest.fixture
def lib_path(tmp_path: Path) -> Path:
    path = tmp_path / "lib.h5"
    with Library.create(path, **MODEL) as lib:
        fill(lib)
    return path


def edit(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "a") as f:
        change(f)


def refused(path: Path, call=None) -> str:
    """The one-line message of the LibraryError that opening ``path`` (or ``call``) raises."""
    with pytest.raises(LibraryError) as e:
        if call is None:
            Library.open(path).close()
        else:
            call()
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def set_value(name: str, index: int, value) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        f[name][index] = value
    return change


def set_attr(key: str, value) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        f.attrs[key] = value
    return change


def recreate(name: str, data=None, **options) -> Callable[[h5py.File], None]:
    """Replace dataset ``name`` by one holding the same values (or ``data``), made with
    ``options`` (a layout HashView never writes)."""
    def change(f: h5py.File) -> None:
        values = f[name][...] if data is None else data
        del f[name]
        f.create_dataset(name, data=values, **options)
    return change


# ------------------------------------------------------------------ names shown to people
def test_printable_escapes_control_characters():
    assert printable("plain name é") == "plain name é"
    assert printable("a\x1b[31mb\nc\u202ed\x9b") == "a\\x1b[31mb\\nc\\u202ed\\x9b"
    assert printable(printable("x\x07")) == printable("x\x07") == "x\\x07"


def test_error_messages_stay_one_printable_line(tmp_path):
    error = LibraryError(tmp_path / "evil\x1b]0;title\x07.h5", "source 'a\x1b[2Jb' is bad")
    assert str(error).isprintable() and "\\x1b" in str(error)
