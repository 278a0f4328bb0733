"""Opening and creating library files at the HDF5 level, without the Library object: an
empty library written safely, a fresh read handle under the shared commit lock, and the
snapshot read from it (any schema)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import h5py

from hashview.errors import LibraryError
from hashview.library import files, legacy, schema
from hashview.library.files import FileLocks, LockBusy
from hashview.library.records import ModelInfo
from hashview.library.schema import Snapshot, reason_from_oserror, write_skeleton


def write_new(path: Path, info: ModelInfo, created: Optional[str] = None) -> None:
    """An empty library at ``path`` (a new temporary file), written and flushed with every error
    checked (on a full disk: the reason, and nothing half-closed left to HDF5)."""
    h5 = h5py.File(path, "w", locking=files.HDF5_LOCKING, rdcc_nbytes=files.WRITER_CHUNK_CACHE)
    try:
        write_skeleton(h5, info)
        if created:
            h5.attrs["created"] = created
        fd = h5.id.get_vfd_handle()
        files.reserve_space(fd, 0, h5.id.get_filesize())
        h5.flush()
        files.fsync(fd)
    except BaseException:
        files.abandon(h5)
        raise
    try:
        h5.close()
    except BaseException:
        files.abandon(h5)
        raise


@contextlib.contextmanager
def read_access(path: Path) -> Iterator[tuple[h5py.File, Optional[tuple]]]:
    """A fresh read-only handle on ``path`` under the shared commit lock, with the file's
    (device, inode); the lock is held until the block ends."""
    locks = None
    h5 = None
    try:
        try:
            locks = FileLocks(path, writable=False)
            locks.shared_read(files.READ_TIMEOUT_S)
            h5 = h5py.File(path, "r", locking=files.HDF5_LOCKING)
        except LockBusy:
            raise LibraryError(path, "file is in use by another process (locked)") from None
        except FileNotFoundError:
            raise LibraryError(path, "no such file") from None
        except (OSError, ValueError, RuntimeError) as e:
            raise LibraryError(path, reason_from_oserror(e, False)) from None
        inode = locks.inode()
        if inode is not None:
            st = os.fstat(h5.id.get_vfd_handle())
            if (st.st_dev, st.st_ino) != inode:  # replaced between our two opens
                raise LibraryError(path, "library file was replaced while being read; open it "
                                         "again")
        yield h5, inode
    finally:
        if h5 is not None:
            h5.close()
        if locks is not None:
            locks.close()


def load_snapshot(f: h5py.File, path: Path) -> Snapshot:
    """The library's snapshot from an open handle, schema 1 or later; any read failure is one
    LibraryError line."""
    try:
        if schema.file_version(f, path) == 1:
            return legacy.load_v1(f, path)
        return schema.load(f, path)
    except LibraryError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise LibraryError(path, reason_from_oserror(e, False)) from None
