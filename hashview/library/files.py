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
import ctypes
import errno
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

from hashview.fileio import new_file_mode, set_mode

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


def make_temp_library(path: Path, mode: Optional[int] = None) -> tuple[str, FileLocks]:
    """A new empty ``NAME.XXXXXXXX.tmp`` next to ``path``, writer-locked so that no clean-up
    removes it while this process builds it (close the returned locks after the rename).

    It gets ``mode``, by default the permissions of a new file under the umask (``mkstemp``
    alone would make it 0600, so no group could share the library)."""
    for _ in range(5):
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        set_mode(fd, new_file_mode() if mode is None else mode)
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


def discard_temporary(tmp: Optional[str], locks: Optional[FileLocks]) -> None:
    """Remove the temporary file ``tmp`` where it is still there, then drop its writer lock.

    In this order: once the lock goes, another process's clean-up may remove the file first
    (which is harmless, but an unlink after it would fail and hide the real outcome)."""
    try:
        if tmp is not None:
            with contextlib.suppress(OSError):  # a leftover is removed by a later clean-up
                os.unlink(tmp)
    finally:
        if locks is not None:
            locks.close()


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


def publish(tmp: str, path: Path, overwrite: bool) -> None:
    """Put the finished file ``tmp`` at ``path``: atomically, and without ever replacing a file
    that appeared there meanwhile unless ``overwrite`` (then a library another process has
    open for writing is refused, not swapped away from under it).

    Raises FileExistsError when ``path`` exists (and not ``overwrite``), LockBusy when it is open
    for writing (and ``overwrite``). ``tmp`` is left for the caller to remove where it is still
    there (after a hard link it is removed here: the library is the same file).
    """
    if overwrite:
        with _writer_locked_if_present(path):
            os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists (FileExistsError): two creators cannot both win
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
                           errno.EXDEV, errno.EACCES, errno.ENOTSUP):
            raise
        # A file system without hard links: claim the name first (O_EXCL), then move in. A
        # creator that loses sees the claim; a reader may briefly find an empty file (refused).
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                if os.path.getsize(path) == 0:
                    os.unlink(path)
            raise
        return
    os.unlink(tmp)


@contextlib.contextmanager
def _writer_locked_if_present(path: Path) -> Iterator[None]:
    try:
        locks = FileLocks(path, writable=True)
    except FileNotFoundError:
        yield
        return
    except OSError:  # not ours to lock (e.g. read-only file): the rename decides
        yield
        return
    try:
        locks.acquire(WRITER_BYTE, exclusive=True)  # LockBusy: a writer has it open
        yield
    finally:
        locks.close()


# ------------------------------------------------------------------ writing HDF5 safely
# HDF5 may report a failed write while it closes a dataset or file handle, where h5py can only
# print the error and go on (and a later close of the same handle may crash the process). So
# the library writes with no raw-data chunk cache (each write reaches the file, or raises, at
# once), reserves the file's space before every flush (so the flush cannot run out of it half-way
# and leave damaged metadata), and after any failure abandons the handle without letting HDF5
# write anything more (the file stays as the last successful flush left it).

WRITER_CHUNK_CACHE = 0  # h5py.File(rdcc_nbytes=...) of handles that write a library


def _fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


_FALLOCATE = _fallocate()
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.ENODEV}
FALLOC_FL_KEEP_SIZE = 1


def reserve_space(fd: int, start: int, size: int) -> None:
    """Make the file behind ``fd`` hold real blocks for bytes ``start .. size`` (its length is
    left as it is), so that writes below ``size`` cannot fail for lack of space.

    Raises OSError (ENOSPC, EDQUOT, EFBIG...) when the space is not there. Where the file system
    cannot allocate ahead (no ``fallocate``), the free space is checked instead.
    """
    if size <= start:
        return
    if _FALLOCATE is not None:
        if _FALLOCATE(fd, FALLOC_FL_KEEP_SIZE, start, size - start) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EINTR:
            return reserve_space(fd, start, size)
        if code not in _NO_FALLOCATE:
            raise OSError(code, os.strerror(code))
    try:  # no allocation ahead on this file system: check the free space instead
        st = os.fstat(fd)
        vfs = os.fstatvfs(fd)
    except (OSError, AttributeError):
        return  # cannot tell: the writes will say
    held = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    if size - held > vfs.f_bavail * vfs.f_frsize:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.EROFS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def fsync(fd: int) -> None:
    """fsync that raises when data may be lost (EIO, a delayed ENOSPC...), not where the file
    system merely has nothing to sync."""
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _FSYNC_UNSUPPORTED:
            raise


def _sink() -> int:
    """A writable file descriptor whose contents nobody reads: in memory where Linux allows (the
    full disk may well be the temporary folder's), else a temporary file, else the null device."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.memfd_create("hashview-discarded-writes")
    with contextlib.suppress(OSError):
        with tempfile.TemporaryFile() as spill:
            return os.dup(spill.fileno())
    return os.open(os.devnull, os.O_RDWR)


def abandon(h5) -> None:
    """Close the h5py file ``h5`` without writing anything more to its file.

    HDF5 has no "close without flushing": the descriptor HDF5 writes through is swapped for a
    scratch file first, so whatever it still holds (the metadata of an append that failed) goes
    there, and the file keeps what the last successful flush wrote. Never raises.
    """
    try:
        fd = h5.id.get_vfd_handle()
    except Exception:
        fd = None
    if isinstance(fd, int) and fd >= 0:
        with contextlib.suppress(Exception):
            sink = _sink()
            try:
                os.dup2(sink, fd)
            finally:
                os.close(sink)
    with contextlib.suppress(Exception):
        h5.close()


def write_failure_reason(e: BaseException) -> str:
    """The one-line reason of a failed write: ``"no space left on device"`` from the errno that
    HDF5 buries in a long message, else its first line without HDF5's details."""
    code = getattr(e, "errno", None)
    text = str(e)
    if not isinstance(code, int) or code <= 0:
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    if code:
        with contextlib.suppress(ValueError, OverflowError):
            reason = os.strerror(code)
            if reason and not reason.startswith("Unknown error"):
                return reason[0].lower() + reason[1:]
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if first.count("(") > first.count(")"):  # an HDF5 detail cut by a line break
        first = first[:first.rfind("(")].strip() or first
    return first
