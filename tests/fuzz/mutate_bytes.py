"""Byte-level mutations of any file: bit flips, interesting bytes and integers, truncation,
zeroed, duplicated and spliced ranges.

Each mutation takes a seeded ``random.Random``, the file's bytes (a ``bytearray``, changed in
place) and optional *hot* ranges, ``[(start, stop), ...]``: offsets there are picked most of the
time, since a byte of metadata decides more than a byte of pixel codes. Each returns a one-line
description that, with the seed, is enough to reproduce it.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Callable, Optional, Sequence

INTERESTING_BYTES = (0x00, 0xFF, 0x7F, 0x80)
# Sizes, counts and offsets live in 2-, 4- and 8-byte little-endian fields in HDF5, safetensors
# and FAISS files alike: the values that break size arithmetic.
INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 2 ** 31 - 1, 2 ** 31,
                    2 ** 32 - 1, 2 ** 40, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1)
HOT_SHARE = 0.7
MAX_RANGE = 4096

Ranges = Sequence[tuple[int, int]]


def pick_offset(rng: random.Random, size: int, hot: Optional[Ranges] = None) -> int:
    """An offset in ``[0, size)``, inside a hot range with probability HOT_SHARE."""
    live = [(a, min(b, size)) for a, b in hot or () if a < min(b, size)]
    if live and rng.random() < HOT_SHARE:
        start, stop = rng.choice(live)
        return rng.randrange(start, stop)
    return rng.randrange(size)


def _length(rng: random.Random, limit: int) -> int:
    """A range length, small ones more often: 1..limit."""
    return max(1, min(limit, int(2 ** rng.uniform(0, 12))))


def flip_bits(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    flips = []
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        at, bit = pick_offset(rng, len(data), hot), rng.randrange(8)
        data[at] ^= 1 << bit
        flips.append(f"{at}.{bit}")
    return "flip bit(s) " + ",".join(flips)


def overwrite_bytes(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    writes = []
    for _ in range(rng.choice((1, 1, 2, 4))):
        at, value = pick_offset(rng, len(data), hot), rng.choice(INTERESTING_BYTES)
        data[at] = value
        writes.append(f"{at}=0x{value:02X}")
    return "set byte(s) " + ",".join(writes)


def overwrite_int(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    width = rng.choice((2, 4, 8))
    value = rng.choice(INTERESTING_INTS) & ((1 << (8 * width)) - 1)
    at = min(pick_offset(rng, len(data), hot), max(0, len(data) - width))
    data[at:at + width] = value.to_bytes(width, "little")[:len(data) - at]
    return f"write uint{8 * width} {value:#x} at {at}"


def truncate(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    at = pick_offset(rng, len(data), hot) if rng.random() < 0.5 else rng.randrange(len(data))
    del data[at:]
    return f"truncate to {at} bytes"


def zero_range(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    at = pick_offset(rng, len(data), hot)
    n = _length(rng, len(data) - at)
    data[at:at + n] = bytes(n)
    return f"zero {n} bytes at {at}"


def duplicate_range(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    """Copy a range over another place (same file size)."""
    src = rng.randrange(len(data))
    dst = pick_offset(rng, len(data), hot)
    n = min(_length(rng, MAX_RANGE), len(data) - src, len(data) - dst)
    data[dst:dst + n] = data[src:src + n]
    return f"copy {n} bytes from {src} over {dst}"


def splice_range(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    """Insert a copy of a range (the file grows and everything after moves)."""
    src = rng.randrange(len(data))
    dst = pick_offset(rng, len(data), hot)
    n = min(_length(rng, MAX_RANGE), len(data) - src)
    data[dst:dst] = data[src:src + n]
    return f"insert {n} bytes from {src} at {dst}"


BYTE_MUTATIONS: tuple[Callable[..., str], ...] = (
    flip_bits, overwrite_bytes, overwrite_int, truncate, zero_range, duplicate_range,
    splice_range)


def mutate_bytes(rng: random.Random, data: bytearray, hot: Optional[Ranges] = None) -> str:
    """One byte-level mutation of ``data`` in place; its description."""
    if not data:
        return "empty file left as it is"
    return rng.choice(BYTE_MUTATIONS)(rng, data, hot)


def mutate_file(rng: random.Random, path: Path, hot: Optional[Ranges] = None) -> str:
    data = bytearray(path.read_bytes())
    description = mutate_bytes(rng, data, hot)
    path.write_bytes(bytes(data))
    return f"{path.name}: {description}"



def lie_about_length(rng: random.Random, path: Path, at: int) -> str:
    """Rewrite the uint64 little-endian length field at ``at`` (a header's length) to a
    value near it, zero, the file's size, or one no file has."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack_from("<Q", data, at)
    new = rng.choice((length + 1, length - 1, length + 8, 0, 1 << 20, (1 << 20) + 1, len(data),
                      len(data) + 1, 100_000_001, 2 ** 63, 2 ** 64 - 1))
    data[at:at + 8] = struct.pack("<Q", new)
    path.write_bytes(bytes(data))
    return f"{path.name}: header length {length} -> {new}"
