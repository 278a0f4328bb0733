"""Faults during a copy-on-write edit: write failures at each step, a full disk, read-only
storage. The library must stay exactly the old one, with no temporary file left behind.
(SIGKILL at random moments during an edit: tests/test_crash_safety.py.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from _mounts import small_disk  # noqa: F401  (a fixture)
from hashview.errors import LibraryError
from hashview.library import Library, editing
from hashview.library import files as library_files

MODEL = dict(model_name="hatdh-64", model_arch="hatdh", bits=64, model_sha256="a" * 64)


def _make(path: Path, n_sources: int, tiles: int) -> Path:
    rng = np.random.default_rng(0)
    items = [({"path": f"/data/slide-{i:04d}.svs", "fingerprint": f"fp-{i}",
               "label": f"class-{i % 7}", "patient_id": f"P{i % 11}"},
              rng.integers(0, 256, (tiles, 8), dtype=np.uint8), np.arange(tiles) * 224,
              np.zeros(tiles, np.int64), np.full(tiles, 224)) for i in range(n_sources)]
    with Library.create(path, **MODEL) as lib:
        lib.add_sources(items)
    editing.set_case_data(path, {i: {"stain": "HE" if i % 2 else "IHC"}
                                 for i in range(0, n_sources, 3)})
    return path


def _state(path: Path) -> tuple:
    """Everything a library holds, for exact comparison."""
    with Library.open(path) as lib:
        table = lib.tile_table()
        return (lib.generation, lib.schema_version,
                [(s.path, s.fingerprint, s.label, s.patient_id, s.tile_count, s.added)
                 for s in lib.sources()],
                lib.codes().tobytes(), {k: v.tobytes() for k, v in table.items()},
                lib.label_names(), [lib.metadata(s.id) for s in lib.sources()])


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ injected write failures
@pytest.mark.parametrize("fail_at", ["reserve", "flush", "fsync", "dataset write", "rename",
                                     "read back"])
def test_a_write_failure_during_a_rewrite_leaves_the_library_unchanged(tmp_path, monkeypatch,
                                                                       fail_at):
    path = _make(tmp_path / "lib.h5", 20, 50)
    before = _state(path)
    real = {"reserve": library_files.reserve_space, "fsync": library_files.fsync,
            "flush": h5py.File.flush, "setitem": h5py.Dataset.__setitem__,
            "replace": os.replace, "open": Library.open}

    def reserve(fd, start, size):
        if fail_at == "reserve":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real["reserve"](fd, start, size)

    def fsync(fd):
        if fail_at == "fsync":
            raise OSError(errno.EIO, "Input/output error")
        return real["fsync"](fd)

    def flush(self):
        if fail_at == "flush":
            raise RuntimeError("Unable to flush file (file write failed: errno = 28, error "
                               "message = 'No space left on device')")
        return real["flush"](self)

    def setitem(self, key, value):
        if fail_at == "dataset write" and self.name == "/tiles/codes":
            raise OSError(errno.ENOSPC, "Can't synchronously write data")
        return real["setitem"](self, key, value)

    def replace(src, dst):
        if fail_at == "rename":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real["replace"](src, dst)

    def open_(cls, where, mode="r"):
        if fail_at == "read back" and str(where).endswith(".tmp"):
            raise LibraryError(where, "HDF5 file is truncated or corrupt")
        return real["open"](where, mode)

    monkeypatch.setattr(library_files, "reserve_space", reserve)
    monkeypatch.setattr(library_files, "fsync", fsync)
    monkeypatch.setattr(h5py.File, "flush", flush)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Library, "open", classmethod(open_))
    with pytest.raises(LibraryError) as failure:
        editing.remove_sources(path, [3])
    monkeypatch.undo()
    message = str(failure.value)
    assert message.startswith(f"{path}: cannot rewrite (") and message.endswith(
        "); the library is unchanged") and "\n" not in message, message
    assert _state(path) == before
    assert _temporaries(tmp_path) == []
    editing.remove_sources(path, [3])  # once the fault is gone the edit goes through
    assert _state(path)[0] == before[0] + 1


# ------------------------------------------------------------------ real storage faults
@pytest.mark.parametrize("leave_kib", [0, 64, 600, 1500])
def test_a_full_disk_during_a_rewrite_is_one_line_and_keeps_the_old_library(small_disk,
                                                                            leave_kib):
    path = _make(small_disk.path / "lib.h5", 40, 2000)  # about 2 MB
    before = _state(path)
    vfs = os.statvfs(small_disk.path)
    free = vfs.f_bavail * vfs.f_frsize
    with open(small_disk.path / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave_kib * 1024))
    with pytest.raises(LibraryError) as failure:
        editing.remove_sources(path, [0])
    assert str(failure.value) == (f"{path}: cannot rewrite (no space left on device); the "
                                  "library is unchanged")
    assert _state(path) == before and _temporaries(small_disk.path) == []
    (small_disk.path / "filler").unlink()
    editing.remove_sources(path, [0])
    assert _state(path)[2] == before[2][1:]


def test_read_only_storage_is_one_line(small_disk):
    path = _make(small_disk.path / "lib.h5", 5, 10)
    before = _state(path)
    small_disk.read_only()
    with pytest.raises(LibraryError) as failure:
        editing.relabel_sources(path, [0], "x")
    assert str(failure.value) == f"{path}: cannot edit (read-only file system)"
    assert _state(path) == before
