"""Small file helpers shared by the model store, checkpoints and job specs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are fsync'ed, then renamed over ``path``
    (``os.replace`` is atomic on POSIX and Windows); the temporary file never outlives a failure.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
