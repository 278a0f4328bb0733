"""A small tmpfs for read-only and full-disk tests (needs root; skipped where mounting is refused).

As root, file permissions do not stop writes, so read-only storage is a read-only mount and a
full disk is a tmpfs filled to its last byte.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs mounted at ``path``; ``read_only()`` and ``fill()`` turn it into the fault."""

    def __init__(self, path: Path):
        self.path = path

    def read_only(self) -> None:
        _mount("-o", "remount,ro", str(self.path))

    def fill(self) -> None:
        """Write a filler file until the disk refuses (no space left)."""
        with open(self.path / "filler", "wb", buffering=0) as f:
            block = b"\0" * 4096
            try:
                while f.write(block):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture()
def small_disk(tmp_path):
    """A 16 MiB tmpfs under ``tmp_path``, unmounted afterwards."""
    point = tmp_path / "disk"
    point.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield SmallDisk(point)
    finally:
        done = subprocess.run(["umount", str(point)], capture_output=True)
        if done.returncode != 0:  # still busy (an open file): detach it now, freed when closed
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        assert not os.path.ismount(point)
