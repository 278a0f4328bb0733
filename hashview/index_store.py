"""Approximate Hamming indexes for large libraries: the automatic choice, building, the sidecar.

Exact search (``IndexBinaryFlat``) scans every code, so its latency grows with N x bits. Below
:data:`EXACT_LIMIT_BITS` (N x bits) it stays interactive and is always used. Above it the
library gets an ``IndexBinaryIVF`` (inverted lists over binary k-means cells), built once in the
background and kept next to the library in a sidecar file (:func:`sidecar_path`).

Choices (measured in ``docs/benchmarks.md``, query section, ``hashview bench --only query``):

- IVF: ``nlist`` = the power of two nearest sqrt(N), between 16 and 2048 (more cells cost more
  k-means time than they save at 10^7 codes); k-means on ``40 x nlist`` sampled codes, 10
  iterations. ``nprobe`` is tuned at build time: the smallest power of two whose tie-aware
  recall@10 against exact search is >= :data:`TARGET_RECALL` on 256 library codes with two
  random bits flipped (seeded).
- MultiHash (``IndexBinaryMultiHash``) is built on request only (``kind="multihash"``): on real
  model codes, which are strongly clustered, its hash buckets are huge and it is slower than the
  exact scan at the recall the product needs (see the benchmark).
- Recall is tie-aware: a returned hit counts when its distance is within the exact k-th distance,
  since among equal distances any tile is an equally right answer.

Sidecar file (``LIB.h5.hvindex``): the 8 bytes ``HVINDEX1``, the header length (uint64 little
endian), a JSON header (kind, parameters, the library identity it was built from, payload size
and SHA-256) and the FAISS index serialised by ``faiss.serialize_index_binary`` (FAISS's own
format, not pickle). It is written atomically. On load the header, sizes and payload checksum
are checked before FAISS sees a byte; the identity (model SHA-256, bits, tile count, SHA-256 of
the codes) must match the library, so a stale sidecar is never used. A library that grew by
appends (same first codes, at most :data:`MAX_GROWTH` times the indexed tiles) reuses the index
and the new codes are added to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from hashview.errors import LibraryError
from hashview.fileio import atomic_write_bytes
from hashview.progress import ProgressCallback, report

KINDS = ("flat", "ivf", "multihash")
APPROXIMATE_KINDS = ("ivf", "multihash")
# Exact search is used while N x bits stays below this. 2^26 is just above 10^6 64-bit codes,
# where the exact scan's single-query p50 was measured at 2-4.6 ms on 2 busy CPU cores (load
# about 20; the target is 5 ms); the IVF index answers in about 0.1 ms from there on.
EXACT_LIMIT_BITS = 2 ** 26
TARGET_RECALL = 0.99
MAX_GROWTH = 2.0
TUNING_QUERIES = 256
MAGIC = b"HVINDEX1"
FORMAT_VERSION = 1
_MAX_HEADER = 1 << 20


def sidecar_path(library_path: str | os.PathLike) -> Path:
    return Path(str(library_path) + ".hvindex")


def choose_kind(n_tiles: int, bits: int, code_kind: str = "binary") -> str:
    """The index a library gets automatically: "flat" (exact) or "ivf"."""
    if code_kind != "binary" or n_tiles * bits < EXACT_LIMIT_BITS:
        return "flat"
    return "ivf"


def codes_digest(codes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes).data).hexdigest()


@dataclass(frozen=True)
class Identity:
    """What an index was built from; a sidecar is only used for the library it describes."""

    model_sha256: str
    bits: int
    n_tiles: int
    codes_sha256: str

    @classmethod
    def of(cls, model_sha256: str, bits: int, codes: np.ndarray) -> "Identity":
        return cls(str(model_sha256), int(bits), len(codes), codes_digest(codes))


@dataclass
class BuiltIndex:
    index: faiss.IndexBinary
    kind: str
    params: dict
    seconds: float = 0.0
    recall: Optional[float] = None  # tie-aware recall@10 measured while tuning
    n_indexed: int = 0  # tiles covered (the sidecar's identity)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- building

def ivf_nlist(n: int) -> int:
    return int(min(2048, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


def tuning_queries(codes: np.ndarray, bits: int, n: int = TUNING_QUERIES,
                   seed: int = 0) -> np.ndarray:
    """Library codes with two random bits flipped: queries near the data, as real ones are."""
    rng = np.random.default_rng(seed)
    picked = codes[rng.integers(0, len(codes), n)].copy()
    for row in picked:
        for bit in rng.choice(bits, 2, replace=False):
            row[bit // 8] ^= np.uint8(0x80 >> (bit % 8))
    return picked


def tie_aware_recall(exact_d: np.ndarray, approx_d: np.ndarray, approx_i: np.ndarray,
                     k: int) -> float:
    """Mean over queries of (returned hits within the exact k-th distance) / k."""
    kth = exact_d[:, k - 1:k]
    good = (approx_d[:, :k] <= kth) & (approx_i[:, :k] >= 0)
    return float(good.sum(axis=1).mean() / k)


def build_binary_index(codes: np.ndarray, bits: int, kind: str = "ivf", seed: int = 0,
                       progress: ProgressCallback = None, k: int = 10,
                       target_recall: float = TARGET_RECALL) -> BuiltIndex:
    """Build and tune an approximate index over ``codes`` (uint8 ``(N, bits/8)``)."""
    if kind not in APPROXIMATE_KINDS:
        raise ValueError(f"approximate index kind must be one of {APPROXIMATE_KINDS}, not {kind!r}")
    codes = np.ascontiguousarray(codes, np.uint8)
    started = time.perf_counter()
    report(progress, "index", 0, 3, f"building the {kind} index of {len(codes):,} codes")
    if kind == "ivf":
        index, settings = _build_ivf(codes, bits, seed), [1, 2, 4, 8, 16, 32, 64, 128]
        knob = "nprobe"
    else:
        index, settings, knob = _build_multihash(codes, bits), [0, 1], "nflip"
    report(progress, "index", 2, 3, "tuning recall")
    queries = tuning_queries(codes, bits, seed=seed)
    exact = faiss.IndexBinaryFlat(bits)
    exact.add(codes)
    kk = min(k, len(codes))
    exact_d, _ = exact.search(queries, kk)
    del exact
    recall = None
    for value in settings:
        setattr(index, knob, value)
        d, i = index.search(queries, kk)
        recall = tie_aware_recall(exact_d, d, i, kk)
        if recall >= target_recall:
            break
    params = {"kind": kind, knob: getattr(index, knob)}
    params.update(_shape_params(index, kind))
    report(progress, "index", 3, 3, f"{kind} index ready (recall@{kk} {recall:.3f})")
    return BuiltIndex(index, kind, params, time.perf_counter() - started, recall, len(codes))


def _build_ivf(codes: np.ndarray, bits: int, seed: int) -> faiss.IndexBinaryIVF:
    nlist = min(ivf_nlist(len(codes)), max(1, len(codes) // 40))
    quantizer = faiss.IndexBinaryFlat(bits)
    index = faiss.IndexBinaryIVF(quantizer, bits, nlist)
    index.cp.niter = 10
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = codes[np.sort(rng.choice(len(codes), min(len(codes), 40 * nlist), replace=False))]
    index.train(sample)
    index.add(codes)
    return index


def _build_multihash(codes: np.ndarray, bits: int) -> faiss.IndexBinaryMultiHash:
    # Multi-index hashing: disjoint 16-bit substrings covering the code, so with nflip = r every
    # code within distance nhash * (r + 1) - 1 is found. Shorter keys make the buckets of
    # clustered codes too large to scan; longer ones need more flips for the same recall.
    hash_bits = min(16, bits)
    index = faiss.IndexBinaryMultiHash(bits, max(1, bits // hash_bits), hash_bits)
    index.add(codes)
    return index


def _shape_params(index, kind: str) -> dict:
    if kind == "ivf":
        return {"nlist": int(index.nlist)}
    return {"nhash": int(index.nhash), "hash_bits": int(index.b)}


def apply_params(index, params: dict) -> None:
    for knob in ("nprobe", "nflip"):
        if knob in params:
            setattr(index, knob, int(params[knob]))


# ---------------------------------------------------------------------------------- sidecar

def save_sidecar(path: str | os.PathLike, built: BuiltIndex, identity: Identity) -> None:
    payload = faiss.serialize_index_binary(built.index).tobytes()
    header = {
        "format": "hashview-index", "version": FORMAT_VERSION, "kind": built.kind,
        "params": built.params, "identity": asdict(identity), "recall": built.recall,
        "build_seconds": round(built.seconds, 3), "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    head = json.dumps(header).encode()
    atomic_write_bytes(path, MAGIC + struct.pack("<Q", len(head)) + head + payload)


def read_sidecar_header(path: str | os.PathLike) -> dict:
    """The header of a sidecar file; ``LibraryError`` naming the file when it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            start = f.read(16)
            if len(start) < 16 or start[:8] != MAGIC:
                raise LibraryError(path, "not a HashView index file (bad magic)")
            (length,) = struct.unpack("<Q", start[8:])
            if length > _MAX_HEADER:
                raise LibraryError(path, f"corrupt index file (header of {length} bytes)")
            header = json.loads(f.read(length).decode())
    except OSError as exc:
        raise LibraryError(path, f"cannot read the index file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LibraryError(path, "corrupt index file (header is not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != "hashview-index":
        raise LibraryError(path, "corrupt index file (not a hashview-index header)")
    if header.get("version") != FORMAT_VERSION:
        raise LibraryError(path, f"index file version {header.get('version')} is not supported")
    if header.get("kind") not in APPROXIMATE_KINDS:
        raise LibraryError(path, f"index file holds an unknown kind {header.get('kind')!r}")
    header["_offset"] = 16 + length
    return header


def load_sidecar(path: str | os.PathLike, identity: Identity,
                 codes: Optional[np.ndarray] = None) -> Optional[BuiltIndex]:
    """The index stored for this library, or None when there is none or it is stale.

    ``codes`` (all of the library's codes) lets an index of an earlier, smaller state of the
    library be reused: its codes must be the library's first ones, and the rest are added.
    Raises ``LibraryError`` (one line, naming the file) when the file is corrupt.
    """
    path = Path(path)
    if not path.exists():
        return None
    header = read_sidecar_header(path)
    try:
        stored = Identity(**header["identity"])
    except (TypeError, KeyError):
        raise LibraryError(path, "corrupt index file (no library identity)") from None
    if (stored.model_sha256, stored.bits) != (identity.model_sha256, identity.bits):
        return None
    if stored.n_tiles != identity.n_tiles or stored.codes_sha256 != identity.codes_sha256:
        grown = (codes is not None and identity.n_tiles > stored.n_tiles > 0
                 and identity.n_tiles <= MAX_GROWTH * stored.n_tiles
                 and codes_digest(codes[:stored.n_tiles]) == stored.codes_sha256)
        if not grown:
            return None
    index = _read_payload(path, header)
    if index.ntotal != stored.n_tiles or index.d != stored.bits:
        raise LibraryError(path, f"corrupt index file ({index.ntotal} codes of {index.d} bits, "
                                 f"header says {stored.n_tiles} of {stored.bits})")
    apply_params(index, header.get("params") or {})
    built = BuiltIndex(index, header["kind"], header.get("params") or {},
                       float(header.get("build_seconds") or 0), header.get("recall"),
                       stored.n_tiles)
    if identity.n_tiles > stored.n_tiles:
        index.add(np.ascontiguousarray(codes[stored.n_tiles:identity.n_tiles]))
        built.notes.append(f"{identity.n_tiles - stored.n_tiles} tiles added since the index "
                           "was built were added to it")
    return built


def _read_payload(path: Path, header: dict) -> faiss.IndexBinary:
    size = header.get("payload_bytes")
    if not isinstance(size, int) or path.stat().st_size != header["_offset"] + size:
        raise LibraryError(path, "corrupt index file (truncated or wrong size)")
    with open(path, "rb") as f:
        f.seek(header["_offset"])
        payload = f.read(size)
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise LibraryError(path, "corrupt index file (checksum mismatch)")
    try:
        index = faiss.deserialize_index_binary(np.frombuffer(payload, np.uint8))
    except RuntimeError as exc:
        raise LibraryError(path, f"corrupt index file ({str(exc).splitlines()[0]})") from None
    wanted = faiss.IndexBinaryIVF if header["kind"] == "ivf" else faiss.IndexBinaryMultiHash
    if not isinstance(index, wanted):
        raise LibraryError(path, f"corrupt index file (holds a {type(index).__name__}, header "
                                 f"says {header['kind']})")
    return index
