"""Library files on disk: cross-process locks, temporary files and their stale leftovers.

Reading while writing (docs/library-format.md, "Concurrency") rests on two byte-range locks
that HashView takes on the library file itself, far past its end so they never cover data:

- the *writer* byte: held exclusively by the one process that has the library open for
  appending, for as long as it is open;
- the *commit* byte: held exclusively by the writer while HDF5 writes its metadata (the flushes
  of an append, closing), and shared by readers while they read;
- the *gate* byte: a writer waiting for the commit byte holds it, and new readers pass through
  it first, so a stream of overlapping readers cannot starve the writer.

Between flushes the writer only writes raw data past the committed end (or rewrites committed
bytes with the same values), which readers never look at, so a reader sees the file exactly as
the last flush left it: the same state a crash at that moment would leave, which the commit
protocol makes a consistent committed prefix (docs/library-format.md). The locks are Linux
open-file-description locks (``F_OFD_SETLK``): unlike classic POSIX locks they are not dropped
when HDF5 closes its own descriptor of the same file, and unlike ``flock`` they do not collide
with HDF5's own file lock. The OS releases them when a process dies, so a killed writer never
leaves a library locked. HDF5's own locking is switched off where these locks exist (it would
refuse a reader while a writer has the file open); elsewhere HashView keeps HDF5's locking, and
a library being written cannot be opened until the writer closes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

CONCURRENT_READS = fcntl is not None and hasattr(fcntl, "F_OFD_SETLK")
# HDF5's own file lock: off where HashView's locks replace it (see the module docstring).
HDF5_LOCKING = not CONCURRENT_READS

WRITER_BYTE = 1 << 62
COMMIT_BYTE = WRITER_BYTE + 1
GATE_BYTE = WRITER_BYTE + 2
READ_TIMEOUT_S = 30.0    # a commit takes milliseconds; waiting this long means something hangs
COMMIT_TIMEOUT_S = 60.0


_UNSUPPORTED = {errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}


class LockBusy(Exception):
    """Another process holds a conflicting lock."""


class FileLocks:
    """One open file description of ``path`` carrying HashView's OFD locks.

    No-ops where OFD locks do not exist, and on a file system that refuses byte-range locks
    (then readers go unprotected during the writer's flushes: rare, documented)."""

    def __init__(self, path: str | Path, writable: bool):
        self._fd: Optional[int] = None
        if CONCURRENT_READS:
            self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)

    def inode(self) -> Optional[tuple[int, int]]:
        if self._fd is None:
            return None
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def _fcntl(self, kind: int, byte: int) -> bool:
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
        request = struct.pack("@hhqqi4x", kind, os.SEEK_SET, byte, 1, 0)
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, request)
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            if e.errno in _UNSUPPORTED:  # a file system without byte-range locks: go without
                self.close()
                return True
            raise

    def acquire(self, byte: int, exclusive: bool, timeout: float = 0.0) -> None:
        """Take the lock on ``byte``, waiting up to ``timeout`` seconds; raise LockBusy."""
        if self._fd is None:
            return
        kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
        deadline = time.monotonic() + timeout
        pause = 0.001
        while self._fd is not None and not self._fcntl(kind, byte):
            if time.monotonic() >= deadline:
                raise LockBusy()
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def release(self, byte: int) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self._fcntl(fcntl.F_UNLCK, byte)

    @contextlib.contextmanager
    def exclusive_commit(self, timeout: float) -> Iterator[None]:
        """Writer: close the gate to new readers, wait for current ones, hold the commit byte."""
        self.acquire(GATE_BYTE, exclusive=True, timeout=timeout)
        try:
            self.acquire(COMMIT_BYTE, exclusive=True, timeout=timeout)
            try:
                yield
            finally:
                self.release(COMMIT_BYTE)
        finally:
            self.release(GATE_BYTE)

    def shared_read(self, timeout: float) -> None:
        """Reader: pass the gate, then share the commit byte until :meth:`close`."""
        self.acquire(GATE_BYTE, exclusive=False, timeout=timeout)
        try:
            self.acquire(COMMIT_BYTE, exclusive=False, timeout=timeout)
        finally:
            self.release(GATE_BYTE)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops every lock of this description
            self._fd = None


def make_temp_library(path: Path) -> tuple[str, FileLocks]:
    """A new empty ``NAME.XXXXXXXX.tmp`` next to ``path``, writer-locked so that no clean-up
    removes it while this process builds it (close the returned locks after the rename)."""
    for _ in range(5):
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            locks = FileLocks(tmp, writable=True)
        except FileNotFoundError:  # a clean-up in another process took it before our lock
            continue
        try:
            locks.acquire(WRITER_BYTE, exclusive=True)
            st = os.stat(tmp)
            if (st.st_dev, st.st_ino) == locks.inode() or locks.inode() is None:
                return tmp, locks
        except (LockBusy, FileNotFoundError):
            pass
        locks.close()
    raise OSError(f"cannot make a temporary file next to {path}")


def remove_stale_temporaries(path: Path) -> list[str]:
    """Delete ``NAME.XXXXXXXX.tmp`` files left next to ``path`` by a killed creation or upgrade.

    A file is removed only when it matches the name ``tempfile.mkstemp`` gave it and no live
    process holds its writer lock (the builder holds it until the rename; see
    :func:`make_temp_library` for the moment between making the file and locking it). Where the locks do not exist (no OFD locks) nothing is removed: liveness cannot be
    told. Returns the removed paths.
    """
    if not CONCURRENT_READS:
        return []
    pattern = re.compile(re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp")
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []
    for tmp in candidates:
        try:
            if not tmp.is_file() or tmp.is_symlink():
                continue
            locks = FileLocks(tmp, writable=True)
        except OSError:
            continue
        try:
            locks.acquire(WRITER_BYTE, exclusive=True)
            same = os.stat(tmp)
            if (same.st_dev, same.st_ino) == locks.inode():  # still the file we locked
                os.unlink(tmp)
                removed.append(str(tmp))
        except (LockBusy, OSError):
            pass
        finally:
            locks.close()
    return removed
