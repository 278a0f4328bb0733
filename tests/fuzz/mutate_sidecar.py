"""Structure-aware mutations of an index sidecar (``LIB.h5.hvindex``).

The file is the magic ``HVINDEX1``, a uint64 header length, a JSON header and a FAISS payload
whose size and SHA-256 the header records. Header fields are edited (the length is rewritten to
fit), and the payload is corrupted, cut or replaced by another index with its size and checksum
fixed up, so that the corrupt bytes reach FAISS itself.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path
from typing import Sequence

from tests.fuzz.mutate_bytes import mutate_bytes
from tests.fuzz.mutate_json import dumps, mutate_json
from tests.fuzz.seeds import PAYLOAD_HEAD

MAGIC_LENGTH = 8


def split_sidecar(data: bytes) -> tuple[bytes, dict, bytes]:
    """(magic, header, payload)."""
    (length,) = struct.unpack_from("<Q", data, MAGIC_LENGTH)
    start = MAGIC_LENGTH + 8
    return data[:MAGIC_LENGTH], json.loads(data[start:start + length]), data[start + length:]


def join_sidecar(magic: bytes, header: object, payload: bytes, fix_payload: bool) -> bytes:
    if fix_payload and isinstance(header, dict):
        header["payload_bytes"] = len(payload)
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    head = dumps(header).encode("utf-8", "surrogatepass")
    return magic + struct.pack("<Q", len(head)) + head + payload


def edit_header(rng: random.Random, sidecar: Path) -> str:
    magic, header, payload = split_sidecar(sidecar.read_bytes())
    header, what = mutate_json(rng, header, deeper=0.4)
    sidecar.write_bytes(join_sidecar(magic, header, payload, fix_payload=False))
    return f"sidecar header: {what}"


def corrupt_payload(rng: random.Random, sidecar: Path) -> str:
    magic, header, payload = split_sidecar(sidecar.read_bytes())
    data = bytearray(payload)
    what = mutate_bytes(rng, data, [(0, PAYLOAD_HEAD)])
    sidecar.write_bytes(join_sidecar(magic, header, bytes(data), fix_payload=True))
    return f"sidecar payload (size and checksum fixed): {what}"


def replace_payload(rng: random.Random, sidecar: Path, alternatives: Sequence[Path]) -> str:
    magic, header, _ = split_sidecar(sidecar.read_bytes())
    other = rng.choice(list(alternatives))
    sidecar.write_bytes(join_sidecar(magic, header, other.read_bytes(), fix_payload=True))
    return f"sidecar payload replaced by {other.name} (size and checksum fixed)"

