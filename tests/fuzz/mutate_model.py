"""Structure-aware mutations of a model: its JSON card and its safetensors weights.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: dtype,
shape, data offsets; plus ``__metadata__``) and the raw tensor bytes. The header mutations lie
about dtypes, shapes and offsets, or rename, drop or add tensors; payload mutations put NaN or
infinity into a tensor. Changed weights no longer match the card's SHA-256, which would stop
every case at the first check, so the card is usually re-signed with the new digest
(:func:`resign`), letting the bytes reach the parser and the net.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
from pathlib import Path

from tests.fuzz.mutate_json import Raw, describe, dumps, mutate_json

DTYPES = ("F32", "F64", "BF16", "I16", "I8", "U8", "I64", "BOOL", "F8_E4M3", "F8_E5M2", "U64",
          "C64", "X", "", 5)
SPECIAL_HALVES = {"NaN": b"\x00\x7e", "inf": b"\x00\x7c", "-inf": b"\x00\xfc",
                  "largest half": b"\xff\x7b"}
RESIGN_SHARE = 0.85
_SHA_FIELD = re.compile(r'("sha256"\s*:\s*")([^"]*)(")')


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<Q", data, 0)
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_safetensors(header: object, body: bytes) -> bytes:
    head = dumps(header).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(head)) + head + body


def mutate_card(rng: random.Random, card: Path) -> str:
    text = card.read_text(encoding="utf-8")
    if rng.random() < 0.08:  # JSON keeps the last of duplicated keys
        key, value = rng.choice((("bits", "8"), ("arch", '"dch"'), ("input_size", "1e999"),
                                 ("sha256", '""')))
        card.write_text(text.rstrip().rstrip("}") + f', "{key}": {value}}}\n', encoding="utf-8")
        return f"card: duplicate key {key} = {value} at the end"
    document, what = mutate_json(rng, json.loads(text), deeper=0.3)
    card.write_bytes(dumps(document).encode("utf-8", "surrogatepass"))
    return f"card: {what}"


def _tensor_names(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]


def mutate_header(rng: random.Random, weights: Path) -> str:
    header, body = split_safetensors(weights.read_bytes())
    names = _tensor_names(header)
    name = rng.choice(names)
    entry = header[name]
    action = rng.choice(("dtype", "shape", "shape", "offsets", "offsets", "json", "rename",
                         "drop", "extra", "metadata"))
    if action == "dtype":
        entry["dtype"] = rng.choice(DTYPES)
        what = f"{name} dtype = {entry['dtype']!r}"
    elif action == "shape":
        shape = list(entry["shape"])
        count = 1
        for s in shape:
            count *= s
        entry["shape"] = rng.choice(([], [0], shape + [1], shape[::-1], [count], [2 ** 40], [-1],
                                     [2 ** 32, 2 ** 32], ["8"], [1.5], [count + 1], None))
        what = f"{name} shape {shape} -> {entry['shape']}"
    elif action == "offsets":
        start, stop = entry["data_offsets"]
        other = header[rng.choice(names)]["data_offsets"]
        entry["data_offsets"] = rng.choice((
            [stop, start], [start, start], [start, stop + 2], [start + 2, stop + 2],
            [0, len(body) + 1000], [start, 2 ** 64 - 1], [-1, stop], [start, 2 ** 63],
            list(other), ["0", stop], [start], [start, stop, stop]))
        what = f"{name} data_offsets [{start}, {stop}] -> {entry['data_offsets']}"
    elif action == "json":
        header, what = mutate_json(rng, header, deeper=0.6)
        what = f"header JSON: {what}"
    elif action == "rename":
        new = rng.choice((name + ".x", "", "../" + name, name.upper(), "__metadata__"))
        header[new] = header.pop(name)
        what = f"rename tensor {name} -> {new!r}"
    elif action == "drop":
        del header[name]
        what = f"drop tensor {name}"
    elif action == "extra":
        extra = {"dtype": "F32", "shape": rng.choice(([2 ** 20, 2 ** 20], [1], [0])),
                 "data_offsets": [0, rng.choice((0, 4, len(body)))]}
        header["extra.weight"] = extra
        what = f"add tensor extra.weight {extra}"
    else:
        value = rng.choice(({"format": 1}, {"format": "x" * 100_000}, [], {"a": {"b": 1}},
                            None, Raw("[" * 100_000 + "]" * 100_000, "deep list")))
        header["__metadata__"] = value
        what = f"__metadata__ = {describe(value)}"
    weights.write_bytes(join_safetensors(header, body))
    return f"weights header: {what}"


def special_values(rng: random.Random, weights: Path) -> str:
    data = bytearray(weights.read_bytes())
    (length,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + length])
    halves = [k for k in _tensor_names(header) if header[k]["dtype"] == "F16"]
    if not halves:
        return "weights: no float16 tensor to fill"
    name = rng.choice(halves)
    label = rng.choice(sorted(SPECIAL_HALVES))
    start, stop = (8 + length + o for o in header[name]["data_offsets"])
    data[start:stop] = SPECIAL_HALVES[label] * ((stop - start) // 2)
    weights.write_bytes(bytes(data))
    return f"weights: every value of {name} = {label}"


def card_sha256(card: Path) -> str:
    return json.loads(card.read_text(encoding="utf-8"))["sha256"]


def resign(card: Path, weights: Path, original_sha256: str) -> str | None:
    """Put the weights' digest into the card, where it still holds the original one."""
    text = card.read_text(encoding="utf-8", errors="surrogateescape")
    match = next((m for m in _SHA_FIELD.finditer(text) if m.group(2) == original_sha256), None)
    if match is None:  # the card's own field was mutated or is gone: leave it so
        return None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest == original_sha256:
        return None
    card.write_text(text[:match.start(2)] + digest + text[match.end(2):], encoding="utf-8",
                    errors="surrogateescape")
    return "card re-signed with the new weights' SHA-256"

