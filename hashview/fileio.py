"""Small file helpers shared by the model store, checkpoints and job specs."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Sequence

Buffer = Any  # an object with the buffer protocol (bytes, a C-contiguous NumPy array)

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading, refusing anything but a regular file.

    Opened non-blocking, so a FIFO named like a model file raises instead of waiting for a writer
    forever; a device never ends and a directory cannot be read. Raises ``OSError`` whose
    ``strerror`` says what the path is.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise OSError(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
        return os.fdopen(fd, "rb")  # O_NONBLOCK does not affect reads of a regular file
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular_file`); ``OSError`` when
    it holds more than ``limit`` bytes, found before anything is read."""
    with open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise OSError(errno.EFBIG, f"file too large ({max(size, len(data)):,} bytes, "
                                       f"limit {limit:,})", os.fspath(path))
        return data


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc``); else
    set and restored at once, through the most restrictive value so that a file another thread
    creates meanwhile is never more open than it should be."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The permission bits ``open()`` would give a new file: ``0o666`` less the umask.

    ``tempfile.mkstemp`` makes files 0600; a file built in one and renamed into place gets
    this mode first, so a group (or everyone) can share it as the user's umask intends."""
    return 0o666 & ~current_umask()


def set_mode(path_or_fd: str | os.PathLike | int, mode: int) -> None:
    """chmod, quietly skipped where the platform or file system cannot (Windows, some mounts)."""
    try:
        if isinstance(path_or_fd, int):
            os.fchmod(path_or_fd, mode)
        else:
            os.chmod(path_or_fd, mode)
    except (OSError, AttributeError, NotImplementedError):
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Sequence[Buffer]) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    ``data``: bytes, or byte buffers (bytes, NumPy arrays) written one after the other, so that
    a large payload is not copied to be joined to its header.

    The bytes go to a temporary file in the same folder, are fsync'ed, then renamed over ``path``
    (``os.replace`` is atomic on POSIX and Windows); the temporary file never outlives a failure.
    The file gets the permissions of the one it replaces, or those a new file gets (the umask).
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        set_mode(fd, mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def user_data_dir() -> Path:
    """Where HashView keeps the user's models, jobs and demo library.

    ``$HASHVIEW_HOME`` if set, else ``$XDG_DATA_HOME/hashview`` (``~/.local/share/hashview``).
    """
    if os.environ.get("HASHVIEW_HOME"):
        return Path(os.environ["HASHVIEW_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "hashview"
