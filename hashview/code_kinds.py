"""The two kinds of code a model gives, and everything that differs between them.

Model cards and library files name the kind in ``code_kind``; :func:`code_kind` turns that
name into one of the objects below, so the code that stores, searches and shows codes asks the
object instead of testing the name.

``"binary"`` (:data:`BINARY`, every model but LGFFEM)
    The net's relaxed outputs in (-1, 1) packed to sign bits (bit = 1 iff value > 0, 8 to a
    byte, big-endian; ``bits`` is the code length), stored as they are and compared by Hamming
    distance, an int. Exact search is a FAISS ``IndexBinaryFlat``; a large library may use an
    approximate index instead (:mod:`hashview.search.sidecar`).
``"float"`` (:data:`FLOAT`, LGFFEM)
    L2-normalised descriptors of ``bits`` dimensions: float32 from the net, float16 in a
    library file (see :mod:`hashview.library.schema`), compared by 1 - cosine, a float. Search
    is always exact: a FAISS ``IndexFlatIP`` over rows scaled to unit length.

Both kinds order hits by (distance, :func:`tie_keys` of the tile index): FAISS orders equal
distances arbitrarily and may cut a run of ties anywhere, so :func:`exact_topk` fetches one extra
neighbour and, when the k-th and (k+1)-th distances tie, re-fetches every tile within that
distance with a range search and re-ranks it; :func:`cosine_topk` re-ranks the k+1 it fetched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import faiss

# Similarities are rounded to this many decimals before ranking: float32 rounding makes
# near-equal similarities compare unequal, and tiles of equal content should tie.
COSINE_DECIMALS = 6
# Digits of 1 - cosine shown in text tables (a Hamming distance is shown whole).
FLOAT_DISTANCE_DECIMALS = 4


# ------------------------------------------------------------------ ranking helpers
def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Float32 rows scaled to unit L2 norm (zero rows stay zero), for cosine search."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def tie_keys(tile_ids) -> np.ndarray:
    """The order of tiles at equal distance: a fixed shuffle of the tile indices (uint64 keys,
    smaller first). Ordering ties by index itself let the order of indexing decide what is
    shown: in a library indexed from class folders the first folder's tiles came first in every
    run of equal distances, and the vote leant towards that class (docs/benchmarks.md, "Which
    order of the tiles"). The splitmix64 finaliser, a bijection of 64-bit integers, so that no
    two tiles share a key."""
    z = np.atleast_1d(np.asarray(tile_ids, dtype=np.int64)).astype(np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))).reshape(np.shape(tile_ids))


def _tile_ids(I: np.ndarray, ids: Optional[np.ndarray]) -> np.ndarray:
    """Library tile indices of index rows ``I`` (``ids``: those of a filtered index's rows);
    FAISS's -1 (nothing found) stays -1."""
    return I if ids is None else np.where(I >= 0, ids[np.maximum(I, 0)], -1)


def _sort_rows(D: np.ndarray, I: np.ndarray,
               ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((tie_keys(_tile_ids(I, ids)), D), axis=-1)  # distance, then tie key
    return np.take_along_axis(D, order, -1), np.take_along_axis(I, order, -1)


def cosine_topk(index: "faiss.IndexFlatIP", queries: np.ndarray, k: int,
                ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by (1 - cosine, tie key) of normalised ``queries``; float64 distances, int64 row
    ids of ``index`` (``ids``: see :func:`exact_topk`)."""
    k = min(k, index.ntotal)
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), np.int64)
    S, I = index.search(queries, min(k + 1, index.ntotal))
    D, I = _sort_rows(np.round(1.0 - S.astype(np.float64), COSINE_DECIMALS), I.astype(np.int64),
                      ids)
    return D[:, :k], I[:, :k]


def exact_topk(index: "faiss.IndexBinary", queries: np.ndarray, k: int,
               ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``index`` ordered by (distance, :func:`tie_keys`), exactly; returns int64
    (Q, k') arrays of distances and row ids of ``index``. k' = min(k, index.ntotal).

    ``ids``: the library tile index of each row when ``index`` holds a subset of the library
    (a filtered search), so that ties are ordered by the tiles' keys, as unfiltered.
    """
    n = index.ntotal
    k = min(k, n)
    if k == 0 or len(queries) == 0:
        empty = np.zeros((len(queries), 0), np.int64)
        return empty, empty.copy()
    if k == n:
        D, I = index.search(queries, n)
        return _sort_rows(D.astype(np.int64), I.astype(np.int64), ids)
    D, I = index.search(queries, k + 1)
    D, I = _sort_rows(D.astype(np.int64), I.astype(np.int64), ids)
    out_D, out_I = D[:, :k].copy(), I[:, :k].copy()
    # If distance k+1 is larger than distance k, every tile at distance <= d_k was returned and the
    # sort above is exact. Otherwise the tie run may continue past what FAISS returned. (An
    # approximate index returns id -1 where it found fewer than k + 1 tiles: no tie to extend.)
    tied = np.flatnonzero((D[:, k] == D[:, k - 1]) & (I[:, k] >= 0))
    for radius in np.unique(D[tied, k - 1]):
        rows = tied[D[tied, k - 1] == radius]
        lims, rd, ri = index.range_search(np.ascontiguousarray(queries[rows]), int(radius) + 1)
        for j, r in enumerate(rows):  # range_search keeps distance < radius + 1
            d = rd[lims[j]:lims[j + 1]].astype(np.int64)
            i = ri[lims[j]:lims[j + 1]].astype(np.int64)
            order = np.lexsort((tie_keys(_tile_ids(i, ids)), d))[:k]
            out_D[r], out_I[r] = d[order], i[order]
    return out_D, out_I


# ------------------------------------------------------------------ the kinds
class CodeKind:
    """What one kind of code is: its storage, its search and how its distances read.

    ``bits`` in every method is the model's ``bits``: the code length of binary codes, the
    dimension of float descriptors.
    """

    name: str                  # as written in model cards and library files
    unit: str                  # what ``bits`` counts, in words: "bits" or "dims"
    encoded_dtype: np.dtype    # a code as the encoder returns it
    stored_dtype: np.dtype     # a code in a library file
    exact_index: str           # the name the search gives its exact index
    approximate_indexes: bool  # whether IVF / multi-hash indexes apply
    keeps_net_output: bool     # whether codes are the net's output as it is (nothing to pack)
    query_noun: str            # what a query row is called in error messages

    def row_width(self, bits: int) -> int:
        """Values in one code row (bytes, or dimensions)."""
        raise NotImplementedError

    def row_shape(self, bits: int) -> tuple[int]:
        return (self.row_width(bits),)

    def encoded_bytes(self, bits: int) -> int:
        return self.row_width(bits) * self.encoded_dtype.itemsize

    def stored_bytes(self, bits: int) -> int:
        return self.row_width(bits) * self.stored_dtype.itemsize

    def empty_encoded(self, bits: int) -> np.ndarray:
        """No codes, shaped and typed as the encoder's output."""
        return np.zeros((0, self.row_width(bits)), dtype=self.encoded_dtype)

    def as_encoded(self, stored: np.ndarray) -> np.ndarray:
        """Codes read from a library file, typed as the encoder returns them."""
        return np.ascontiguousarray(stored, self.encoded_dtype)

    def size_text(self, bits: int) -> str:
        raise NotImplementedError

    def length_problem(self, bits: int) -> Optional[str]:
        """Why no code of this kind has ``bits``, or None."""
        raise NotImplementedError

    def from_relaxed(self, relaxed: np.ndarray) -> np.ndarray:
        """The codes of the net's ``(N, bits)`` output."""
        raise NotImplementedError

    def storable(self, codes, bits: int) -> np.ndarray:
        """``codes`` as the library stores them; ValueError (naming what is wrong) otherwise."""
        raise NotImplementedError

    def query_rows(self, queries, bits: int) -> np.ndarray:
        """``queries`` (one code, or one per row) as a 2-D array; ValueError for a dtype or
        shape this kind cannot search. The row width is checked by :meth:`width_mismatch`."""
        q = np.asarray(queries)
        self._check_query_dtype(q)
        q = q[None, :] if q.ndim == 1 else q
        if q.ndim != 2:
            raise ValueError(f"{self.query_noun} must have shape (n, {self.row_width(bits)}), "
                             f"not {q.shape}")
        return q

    def width_mismatch(self, width: int, bits: int) -> Optional[str]:
        """What is wrong when query rows of ``width`` values meet codes of ``bits``, or None."""
        raise NotImplementedError

    def _check_query_dtype(self, q: np.ndarray) -> None:
        raise NotImplementedError

    def searchable(self, codes: np.ndarray, bits: int) -> np.ndarray:
        """``codes`` (stored or queries, 2-D) as the index compares them."""
        raise NotImplementedError

    def new_index(self, codes: np.ndarray, bits: int):
        """The exact FAISS index over :meth:`searchable` ``codes``."""
        raise NotImplementedError

    def top_k(self, index, queries: np.ndarray, k: int,
              ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, row ids)`` of each query's k nearest, by (distance, tie key of the
        tile); ``ids``: the tile index of each row of a filtered ``index``."""
        raise NotImplementedError

    def as_distance(self, value):
        """One distance from :meth:`top_k` as a hit carries it."""
        raise NotImplementedError

    def format_distance(self, distance) -> str:
        """A hit's distance for a text table."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} codes>"


class BinaryCodes(CodeKind):
    """Packed sign bits, compared by Hamming distance (an int)."""

    name, unit, query_noun = "binary", "bits", "query codes"
    encoded_dtype = stored_dtype = np.dtype(np.uint8)
    exact_index, approximate_indexes, keeps_net_output = "flat", True, False

    def row_width(self, bits: int) -> int:
        return bits // 8

    def size_text(self, bits: int) -> str:
        return f"{bits} bits"

    def length_problem(self, bits: int) -> Optional[str]:
        if bits <= 0 or bits % 8:
            return f"code length must be a positive multiple of 8 bits, not {bits}"
        return None

    def from_relaxed(self, relaxed: np.ndarray) -> np.ndarray:
        relaxed = np.asarray(relaxed)
        if relaxed.ndim != 2 or relaxed.shape[1] % 8:
            raise ValueError(f"expected (N, bits) with bits a multiple of 8, got {relaxed.shape}")
        return np.packbits(relaxed > 0, axis=1, bitorder="big")

    def storable(self, codes, bits: int) -> np.ndarray:
        codes = np.asarray(codes)
        width = self.row_width(bits)
        if codes.size == 0:
            codes = codes.reshape(0, width)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"codes must be uint8 of shape (n, {width}) for {bits}-bit codes, "
                             f"got {codes.dtype} {codes.shape}")
        return np.ascontiguousarray(codes)

    def _check_query_dtype(self, q: np.ndarray) -> None:
        if q.dtype != np.uint8:
            raise ValueError(f"{self.query_noun} must be packed np.uint8, not {q.dtype}")

    def width_mismatch(self, width: int, bits: int) -> Optional[str]:
        if width == self.row_width(bits):
            return None
        return (f"{self.query_noun} are {width * 8}-bit but this library holds "
                f"{bits}-bit codes")

    def searchable(self, codes: np.ndarray, bits: int) -> np.ndarray:
        return np.ascontiguousarray(codes)

    def new_index(self, codes: np.ndarray, bits: int) -> "faiss.IndexBinaryFlat":
        import faiss  # here, so that reading a library file does not load FAISS

        index = faiss.IndexBinaryFlat(bits)
        if len(codes):
            index.add(np.ascontiguousarray(codes, dtype=np.uint8))
        return index

    def top_k(self, index, queries: np.ndarray, k: int,
              ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        return exact_topk(index, queries, k, ids)

    def as_distance(self, value) -> int:
        return int(value)

    def format_distance(self, distance) -> str:
        return str(distance)


class FloatCodes(CodeKind):
    """L2-normalised float descriptors, compared by 1 - cosine (a float)."""

    name, unit, query_noun = "float", "dims", "query descriptors"
    encoded_dtype = np.dtype(np.float32)
    # half the bytes of float32; the cosine top-k they give is the same (library/schema.py)
    stored_dtype = np.dtype(np.float16)
    exact_index, approximate_indexes, keeps_net_output = "flat-ip", False, True

    def row_width(self, bits: int) -> int:
        return bits

    def size_text(self, bits: int) -> str:
        return f"{bits}-d float"

    def length_problem(self, bits: int) -> Optional[str]:
        return f"descriptor dimension must be positive, not {bits}" if bits <= 0 else None

    def from_relaxed(self, relaxed: np.ndarray) -> np.ndarray:
        # the net has L2-normalised them already: normalising again would change the numbers
        return np.asarray(relaxed).astype(self.encoded_dtype, copy=False)

    def storable(self, codes, bits: int) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.size == 0:
            codes = codes.reshape(0, bits)
        if (codes.ndim != 2 or codes.shape[1] != bits
                or not (np.issubdtype(codes.dtype, np.floating)
                        or np.issubdtype(codes.dtype, np.integer))):
            raise ValueError(f"descriptors must be numbers of shape (n, {bits}), "
                             f"got {codes.dtype} {codes.shape}")
        with np.errstate(over="ignore"):
            stored = codes.astype(self.stored_dtype)
        if not np.all(np.isfinite(stored)):
            raise ValueError(f"descriptors must be finite and within {self.stored_dtype} range "
                             f"(|value| <= {np.finfo(self.stored_dtype).max:g})")
        return np.ascontiguousarray(stored)

    def _check_query_dtype(self, q: np.ndarray) -> None:
        if q.dtype.kind != "f":
            raise ValueError(f"{self.query_noun} must be floating point, not {q.dtype}")

    def width_mismatch(self, width: int, bits: int) -> Optional[str]:
        if width == self.row_width(bits):
            return None
        return (f"{self.query_noun} have {width} dimensions but this library holds "
                f"{bits}-d descriptors")

    def searchable(self, codes: np.ndarray, bits: int) -> np.ndarray:
        return normalize_rows(codes.reshape(len(codes), bits))

    def new_index(self, codes: np.ndarray, bits: int) -> "faiss.IndexFlatIP":
        import faiss  # here, so that reading a library file does not load FAISS

        index = faiss.IndexFlatIP(bits)
        if len(codes):
            index.add(np.ascontiguousarray(codes, dtype=np.float32))
        return index

    def top_k(self, index, queries: np.ndarray, k: int,
              ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        return cosine_topk(index, queries, k, ids)

    def as_distance(self, value) -> float:
        return float(value)

    def format_distance(self, distance) -> str:
        return f"{float(distance):.{FLOAT_DISTANCE_DECIMALS}f}"


BINARY = BinaryCodes()
FLOAT = FloatCodes()
_BY_NAME = {kind.name: kind for kind in (BINARY, FLOAT)}
CODE_KIND_NAMES = tuple(_BY_NAME)  # ("binary", "float")


def code_kind(name) -> CodeKind:
    """The kind called ``name``; ValueError naming the known ones for any other value."""
    kind = _BY_NAME.get(name) if isinstance(name, str) else None
    if kind is None:
        known = " or ".join(repr(n) for n in CODE_KIND_NAMES)
        raise ValueError(f"code_kind must be {known}, not {name!r}")
    return kind


def kind_of_encoded(codes) -> CodeKind:
    """The kind of encoder output ``codes``, told by their dtype: floats are descriptors."""
    return FLOAT if np.asarray(codes).dtype.kind == "f" else BINARY


def kind_of_distance(distance) -> CodeKind:
    """The kind whose search gives ``distance``: a float is 1 - cosine, anything else (an int)
    a Hamming distance (see :meth:`CodeKind.as_distance`)."""
    return FLOAT if isinstance(distance, float) else BINARY
