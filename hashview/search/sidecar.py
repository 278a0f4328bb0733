"""Approximate Hamming indexes for large libraries: the automatic choice, building, the sidecar.

Exact search (``IndexBinaryFlat``) scans every code, so its latency grows with N x bits. Below
:data:`EXACT_LIMIT_BITS` (N x bits) it stays interactive and is always used. Above it the
library gets an ``IndexBinaryIVF`` (inverted lists over binary k-means cells), built once in the
background and kept next to the library in a sidecar file (:func:`sidecar_path`).

Choices (measured in ``docs/benchmarks.md``, query section, ``hashview bench --only query``):

- IVF: ``nlist`` = the power of two nearest sqrt(N), between 16 and 2048 (more cells cost more
  k-means time than they save at 10^7 codes, and at 10^8 queries with 2048 cells already take
  about 1 ms: ``hashview bench --only archive``); k-means on ``40 x nlist`` sampled codes, 10
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
format, not pickle). It is written atomically. On load only a regular file is opened (never
blocking: a named pipe at that path is refused, not waited on); every header field is checked
for type and range in one place, and the declared sizes against the file's, before anything is
allocated or FAISS sees a byte; then the payload checksum. The identity (model SHA-256, bits,
tile count, SHA-256 of the codes) must match the library, so a stale sidecar is never used. A
library that grew by appends (same first codes, at most :data:`MAX_GROWTH` times the indexed
tiles) reuses the index and the new codes are added to it.

The sidecar is a cache and never stops a search: a bad one is a one-line ``LibraryError`` that
the searcher notes and searches exactly; one that cannot be written (read-only share, full
disk) is a one-line ``LibraryError`` "<sidecar>: not saved (<reason>)".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import faiss
import numpy as np

from hashview import code_kinds
from hashview.errors import LibraryError
from hashview.fileio import atomic_write_bytes
from hashview.progress import ProgressCallback, report
from hashview.search.sidecar_payload import check_ivf_payload, check_list_ids

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
    if (not code_kinds.code_kind(code_kind).approximate_indexes
            or n_tiles * bits < EXACT_LIMIT_BITS):
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
    kk = min(k, len(codes))
    # a scan of the codes in place: an exact index would copy them (800 MB at 10^8 tiles)
    exact_d, _ = faiss.knn_hamming(queries, codes, kk)
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

@dataclass(frozen=True)
class SidecarHeader:
    """A sidecar's header once every field has been checked (:func:`_parse_header`)."""

    kind: str
    params: dict
    identity: Identity
    recall: Optional[float]
    build_seconds: float
    payload_bytes: int
    payload_sha256: str
    offset: int  # where the payload starts in the file


def save_sidecar(path: str | os.PathLike, built: BuiltIndex, identity: Identity) -> None:
    """Write the sidecar atomically; ``LibraryError`` "<path>: not saved (<reason>)" when the
    storage refuses (read-only, full, a folder in the way). The old file, if any, is kept."""
    # FAISS's uint8 array, hashed and written as it is: a bytes copy of it, and one joined to
    # the header, would each take as much memory again (1.6 GB at 10^8 tiles)
    payload = faiss.serialize_index_binary(built.index)
    header = {
        "format": "hashview-index", "version": FORMAT_VERSION, "kind": built.kind,
        "params": built.params, "identity": asdict(identity), "recall": built.recall,
        "build_seconds": round(built.seconds, 3), "payload_bytes": payload.nbytes,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    head = json.dumps(header).encode()
    try:
        atomic_write_bytes(path, [MAGIC + struct.pack("<Q", len(head)) + head, payload])
    except OSError as exc:
        raise LibraryError(path, f"not saved ({_os_reason(exc)})") from None


def check_sidecar_writable(path: str | os.PathLike) -> None:
    """Raise the ``LibraryError`` :func:`save_sidecar` would, when the sidecar's folder takes no
    new file (e.g. a read-only share), before minutes are spent building an index to save."""
    path = Path(path)
    if path.is_dir():
        raise LibraryError(path, "not saved (a folder is in the way)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LibraryError(path, f"not saved ({_os_reason(exc)})") from None


def read_sidecar_header(path: str | os.PathLike) -> SidecarHeader:
    """The checked header of a sidecar file; ``LibraryError`` naming the file when it is not one."""
    path = Path(path)
    with _reading(path) as f:
        if f is None:
            raise LibraryError(path, "no such file")
        return _read_header(f, path)


def load_sidecar(path: str | os.PathLike, identity: Identity,
                 codes: Optional[np.ndarray] = None) -> Optional[BuiltIndex]:
    """The index stored for this library, or None when there is none or it is stale.

    ``codes`` (all of the library's codes) lets an index of an earlier, smaller state of the
    library be reused: its codes must be the library's first ones, and the rest are added.
    Raises ``LibraryError`` (one line, naming the file) when the file is corrupt or is not a
    regular file.
    """
    path = Path(path)
    with _reading(path) as f:
        if f is None:
            return None
        header = _read_header(f, path)
        stored = header.identity
        if (stored.model_sha256, stored.bits) != (identity.model_sha256, identity.bits):
            return None
        if stored.n_tiles != identity.n_tiles or stored.codes_sha256 != identity.codes_sha256:
            grown = (codes is not None and identity.n_tiles > stored.n_tiles
                     and identity.n_tiles <= MAX_GROWTH * stored.n_tiles
                     and codes_digest(codes[:stored.n_tiles]) == stored.codes_sha256)
            if not grown:
                return None
        index = _read_payload(f, path, header)
    apply_params(index, header.params)
    built = BuiltIndex(index, header.kind, header.params, header.build_seconds, header.recall,
                       stored.n_tiles)
    if identity.n_tiles > stored.n_tiles:
        index.add(np.ascontiguousarray(codes[stored.n_tiles:identity.n_tiles]))
        built.notes.append(f"{identity.n_tiles - stored.n_tiles} tiles added since the index "
                           "was built were added to it")
    return built


def _os_reason(exc: OSError) -> str:
    """"read-only file system", "no space left on device": the OS's words, as a clause."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
                (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


@contextmanager
def _reading(path: Path) -> Iterator[Optional[BinaryIO]]:
    """The sidecar opened for reading, or None when there is none. Only a regular file is read:
    the open does not block (a named pipe would wait forever for a writer) and what was opened
    is checked, so nothing else can be swapped in between the check and the read."""
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:
        raise LibraryError(path, f"cannot read the index file ({_os_reason(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = next((name for test, name in _NOT_REGULAR if test(mode)), "no regular file")
            raise LibraryError(path, f"is {what}, not an index file")
        with os.fdopen(fd, "rb") as f:
            fd = -1  # closed by the file object from here on
            yield f
    except OSError as exc:
        raise LibraryError(path, f"cannot read the index file ({_os_reason(exc)})") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _read_header(f: BinaryIO, path: Path) -> SidecarHeader:
    """Magic, header length and JSON header, checked against the file's size before anything
    that size declares is read or allocated."""
    file_size = os.fstat(f.fileno()).st_size
    start = f.read(16)
    if len(start) < 16 or start[:8] != MAGIC:
        raise LibraryError(path, "not a HashView index file (bad magic)")
    (length,) = struct.unpack("<Q", start[8:])
    if length > min(_MAX_HEADER, file_size - 16):
        raise LibraryError(path, f"corrupt index file (header of {length} bytes in a file of "
                                 f"{file_size})")
    try:
        raw = json.loads(f.read(length).decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError: not JSON, or an integer too long to convert; RecursionError: deep nesting
        raise LibraryError(path, "corrupt index file (header is not JSON)") from None
    return _parse_header(path, raw, offset=16 + length, file_size=file_size)


_MISSING = object()


def _shown(value) -> str:
    """A header value as an error message may quote it: scalars shortened, containers named
    (a deeply nested one cannot even be printed)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value) if not _is_int(value) or value.bit_length() < 128 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_sha256(value) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _parse_header(path: Path, raw, offset: int, file_size: int) -> SidecarHeader:
    """Every header field, with its type and range: the one place a header is trusted."""

    def field_(mapping: dict, key: str, valid, wanted: str, where: str = ""):
        value = mapping.get(key, _MISSING)
        if value is _MISSING:
            raise LibraryError(path, f"corrupt index file (no {where}{key})")
        if not valid(value):
            raise LibraryError(path, f"corrupt index file ({where}{key} must be {wanted}, "
                                     f"not {_shown(value)})")
        return value

    if not isinstance(raw, dict) or raw.get("format") != "hashview-index":
        raise LibraryError(path, "corrupt index file (not a hashview-index header)")
    version = raw.get("version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise LibraryError(path, f"index file version {_shown(version)} is not supported")
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in APPROXIMATE_KINDS:
        raise LibraryError(path, f"index file holds an unknown kind {_shown(kind)}")
    ident = field_(raw, "identity", lambda v: isinstance(v, dict), "an object")
    bits = field_(ident, "bits", lambda v: _is_int(v) and 8 <= v <= 1 << 16 and v % 8 == 0,
                  "a multiple of 8 from 8 to 65536", "identity.")
    identity = Identity(
        field_(ident, "model_sha256", lambda v: isinstance(v, str) and 0 < len(v) <= 128,
               "a string", "identity."),
        bits,
        field_(ident, "n_tiles", lambda v: _is_int(v) and 1 <= v <= 1 << 40,
               "a positive tile count", "identity."),
        field_(ident, "codes_sha256", _is_sha256, "a SHA-256 in hex", "identity."))
    params = field_(raw, "params", lambda v: isinstance(v, dict), "an object")
    checked = {"kind": kind}
    if kind == "ivf":
        checked["nlist"] = field_(params, "nlist", lambda v: _is_int(v) and 1 <= v <= 1 << 20,
                                  "an integer from 1 to 1048576", "params.")
        checked["nprobe"] = field_(params, "nprobe",
                                   lambda v: _is_int(v) and 1 <= v <= checked["nlist"],
                                   f"an integer from 1 to nlist ({checked['nlist']})", "params.")
    else:
        checked["hash_bits"] = field_(params, "hash_bits", lambda v: _is_int(v) and 1 <= v <= 64,
                                      "an integer from 1 to 64", "params.")
        checked["nhash"] = field_(
            params, "nhash", lambda v: _is_int(v) and 1 <= v * checked["hash_bits"] <= bits,
            "a positive integer with nhash x hash_bits <= bits", "params.")
        checked["nflip"] = field_(params, "nflip",
                                  lambda v: _is_int(v) and 0 <= v <= checked["hash_bits"],
                                  "an integer from 0 to hash_bits", "params.")
    recall = field_(raw, "recall", lambda v: v is None or (_is_number(v) and 0 <= v <= 1),
                    "null or a number from 0 to 1")
    seconds = field_(raw, "build_seconds", lambda v: _is_number(v) and v >= 0,
                     "a number of seconds")
    payload_bytes = field_(raw, "payload_bytes",
                           lambda v: _is_int(v) and 0 < v and offset + v <= file_size,
                           f"a size that fits the file ({file_size - offset} bytes after the "
                           "header)")
    if offset + payload_bytes != file_size:
        raise LibraryError(path, "corrupt index file (truncated or wrong size)")
    return SidecarHeader(kind, checked, identity, None if recall is None else float(recall),
                         float(seconds), payload_bytes,
                         field_(raw, "payload_sha256", _is_sha256, "a SHA-256 in hex"), offset)


def _read_payload(f: BinaryIO, path: Path, header: SidecarHeader) -> faiss.IndexBinary:
    f.seek(header.offset)
    payload = f.read(header.payload_bytes)
    if len(payload) != header.payload_bytes:
        raise LibraryError(path, "corrupt index file (truncated or wrong size)")
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise LibraryError(path, "corrupt index file (checksum mismatch)")
    if header.kind == "ivf":
        check_ivf_payload(payload, header.identity, header.params["nlist"], path)
    try:
        index = faiss.deserialize_index_binary(np.frombuffer(payload, np.uint8))
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LibraryError(path, f"corrupt index file ({reason})") from None
    wanted = faiss.IndexBinaryIVF if header.kind == "ivf" else faiss.IndexBinaryMultiHash
    if not isinstance(index, wanted):
        raise LibraryError(path, f"corrupt index file (holds a {type(index).__name__}, header "
                                 f"says {header.kind})")
    stored = header.identity
    shape = {key: value for key, value in header.params.items() if key in ("nlist", "nhash",
                                                                           "hash_bits")}
    if (index.ntotal, index.d) != (stored.n_tiles, stored.bits) or \
            _shape_params(index, header.kind) != shape:
        raise LibraryError(path, f"corrupt index file (holds {index.ntotal} codes of {index.d} "
                                 f"bits, {_shape_params(index, header.kind)}; header says "
                                 f"{stored.n_tiles} of {stored.bits}, {shape})")
    if header.kind == "ivf":
        check_list_ids(index, path)
    return index


