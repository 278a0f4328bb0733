"""A fast content fingerprint for source files (slides are often several GB).

Reading a whole slide to hash it would take longer than the rest of the "already indexed?" check,
so the fingerprint hashes the size plus three 1 MiB samples (start, middle, end). Files up to
3 MiB are hashed whole. The exact recipe is in docs/library-format.md; changing it would make
every stored source look new, so it is versioned by the ``hashview-fp1`` prefix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hashview.errors import SourceError

CHUNK = 1 << 20  # 1 MiB
_PREFIX = b"hashview-fp1\0"


def fingerprint_file(path: str | Path) -> str:
    """Return the 64-hex-digit SHA-256 fingerprint of ``path`` (raises SourceError)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h = hashlib.sha256(_PREFIX)
            h.update(size.to_bytes(8, "little"))
            if size <= 3 * CHUNK:
                h.update(f.read())
            else:
                for offset in (0, (size - CHUNK) // 2, size - CHUNK):
                    f.seek(offset)
                    h.update(f.read(CHUNK))
    except IsADirectoryError:
        raise SourceError(path, "is a folder, not a file") from None
    except OSError as e:
        raise SourceError(path, f"cannot read ({e.strerror or e})") from None
    return h.hexdigest()
