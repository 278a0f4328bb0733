"""Binary codes and float descriptors: sizes, index + distances against brute force, look-up."""

from __future__ import annotations

import numpy as np
import pytest

from hashview.code_kinds import (BINARY, CODE_KIND_NAMES, FLOAT, BinaryCodes, FloatCodes,
                                 code_kind, kind_of_distance, kind_of_encoded, tie_keys)


def test_lookup_by_name():
    assert CODE_KIND_NAMES == ("binary", "float")
    assert isinstance(code_kind("binary"), BinaryCodes) and code_kind("binary") is BINARY
    assert isinstance(code_kind("float"), FloatCodes) and code_kind("float") is FLOAT


@pytest.mark.parametrize("name", ["ternary", "Binary", "", None, 1, b"float", ["float"]])
def test_unknown_kind_is_a_clear_error(name):
    with pytest.raises(ValueError) as e:
        code_kind(name)
    assert str(e.value) == f"code_kind must be 'binary' or 'float', not {name!r}"


def test_bytes_per_code():
    # packed bits: one byte per 8 bits, in memory and on disk
    assert (BINARY.row_width(64), BINARY.encoded_bytes(64), BINARY.stored_bytes(64)) == (8, 8, 8)
    assert BINARY.row_shape(48) == (6,) and BINARY.encoded_dtype == BINARY.stored_dtype == np.uint8
    # descriptors: float32 from the encoder, float16 in a library file
    assert (FLOAT.row_width(16), FLOAT.encoded_bytes(16), FLOAT.stored_bytes(16)) == (16, 64, 32)
    assert FLOAT.row_shape(16) == (16,)
    assert (FLOAT.encoded_dtype, FLOAT.stored_dtype) == (np.float32, np.float16)
    assert BINARY.empty_encoded(64).shape == (0, 8) and BINARY.empty_encoded(64).dtype == np.uint8
    assert FLOAT.empty_encoded(16).shape == (0, 16)
    assert FLOAT.empty_encoded(16).dtype == np.float32


def test_words_and_rules():
    assert (BINARY.unit, FLOAT.unit) == ("bits", "dims")
    assert (BINARY.size_text(64), FLOAT.size_text(384)) == ("64 bits", "384-d float")
    assert (BINARY.exact_index, FLOAT.exact_index) == ("flat", "flat-ip")
    assert BINARY.approximate_indexes and not FLOAT.approximate_indexes
    assert FLOAT.keeps_net_output and not BINARY.keeps_net_output
    assert BINARY.length_problem(64) is None and FLOAT.length_problem(12) is None
    assert "multiple of 8" in BINARY.length_problem(12) and BINARY.length_problem(0)
    assert "positive" in FLOAT.length_problem(0)


def test_distances_are_formatted_by_kind():
    assert BINARY.as_distance(np.int64(3)) == 3 and type(BINARY.as_distance(3.0)) is int
    assert BINARY.format_distance(3) == "3"
    assert type(FLOAT.as_distance(np.float64(0.25))) is float
    assert FLOAT.format_distance(0.123456) == "0.1235" and FLOAT.format_distance(0) == "0.0000"
    for kind in (BINARY, FLOAT):  # a hit's distance tells its kind
        assert kind_of_distance(kind.as_distance(np.float64(2))) is kind


def test_from_relaxed():
    relaxed = np.array([[0.5, -0.5, 0.0, 1e-3, -1, 1, 1, -1]], np.float32)
    assert BINARY.from_relaxed(relaxed).tolist() == [[0b10010110]]  # bit = 1 iff value > 0
    with pytest.raises(ValueError, match="multiple of 8"):
        BINARY.from_relaxed(relaxed[:, :6])
    # descriptors come out of the net normalised: kept exactly as they are
    descriptors = np.array([[0.6, 0.8]], np.float32)
    assert FLOAT.from_relaxed(descriptors) is descriptors


def test_kind_of_encoded():
    assert kind_of_encoded(np.zeros((1, 8), np.uint8)) is BINARY
    assert kind_of_encoded(np.zeros((1, 8), np.float32)) is FLOAT


def test_storable():
    assert BINARY.storable(np.zeros((3, 2), np.uint8), 16).shape == (3, 2)
    assert BINARY.storable(np.zeros(0, np.uint8), 16).shape == (0, 2)
    with pytest.raises(ValueError, match=r"uint8 of shape \(n, 2\) for 16-bit codes"):
        BINARY.storable(np.zeros((3, 4), np.uint8), 16)
    stored = FLOAT.storable(np.full((2, 4), 0.5, np.float64), 4)
    assert stored.dtype == np.float16 and stored.shape == (2, 4)
    with pytest.raises(ValueError, match=r"float16 range \(\|value\| <= 65504\)"):
        FLOAT.storable(np.full((2, 4), 1e6), 4)


def test_query_checks():
    assert BINARY.query_rows(np.zeros(2, np.uint8), 16).shape == (1, 2)
    with pytest.raises(ValueError, match="packed np.uint8"):
        BINARY.query_rows(np.zeros((1, 2), np.int64), 16)
    with pytest.raises(ValueError, match="floating point"):
        FLOAT.query_rows(np.zeros((1, 4), np.uint8), 4)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        FLOAT.query_rows(np.zeros((1, 1, 4), np.float32), 4)
    assert BINARY.width_mismatch(2, 16) is None and FLOAT.width_mismatch(4, 4) is None
    assert BINARY.width_mismatch(8, 16) == ("query codes are 64-bit but this library holds "
                                            "16-bit codes")
    assert FLOAT.width_mismatch(3, 4) == ("query descriptors have 3 dimensions but this library "
                                          "holds 4-d descriptors")


def _search(kind, stored, queries, bits, k):
    index = kind.new_index(kind.searchable(stored, bits), bits)
    D, I = kind.top_k(index, kind.searchable(queries, bits), k)
    return [[kind.as_distance(d) for d in row] for row in D], I.tolist()


def _ranked(distances: np.ndarray, k: int):
    """Reference top-k of each row of a (Q, N) distance matrix, by (distance, tie key)."""
    order = [np.lexsort((tie_keys(np.arange(len(row))), row))[:k] for row in distances]
    return [row[o].tolist() for row, o in zip(distances, order)], [o.tolist() for o in order]


def _hamming(queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
    unpack = np.unpackbits
    return (unpack(queries, axis=1)[:, None, :] != unpack(stored, axis=1)[None]).sum(-1)


def test_binary_index_matches_brute_force_hamming():
    rng = np.random.default_rng(0)
    bits, k = 16, 7
    stored = rng.integers(0, 256, (300, bits // 8), dtype=np.uint8)  # many tied distances
    queries = rng.integers(0, 256, (5, bits // 8), dtype=np.uint8)
    distances, ids = _search(BINARY, stored, queries, bits, k)
    assert (distances, ids) == _ranked(_hamming(queries, stored), k)
    assert all(type(d) is int for row in distances for d in row)


def test_binary_ties_are_cut_by_tie_key_whatever_faiss_returns():
    # FAISS may return any of the tiles tied at the k-th distance; this index returns the
    # highest ids first (it holds the codes in reverse order), so only the re-ranking of every
    # tied tile gives the smallest keys
    import faiss

    rng = np.random.default_rng(2)
    bits, k = 16, 7
    stored = rng.integers(0, 256, (300, bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (10, bits // 8), dtype=np.uint8)
    index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
    index.add_with_ids(stored[::-1].copy(), np.arange(len(stored))[::-1].copy())
    D, I = BINARY.top_k(index, queries, k)
    assert (D.tolist(), I.tolist()) == _ranked(_hamming(queries, stored), k)


def test_float_index_matches_brute_force_cosine():
    rng = np.random.default_rng(1)
    dim, k = 8, 6
    stored = rng.normal(size=(200, dim)).astype(np.float32)
    stored[10] = 3 * stored[3]  # same direction, other length: the same distance, a tie
    stored[20] = 0  # a zero row stays zero: cosine 0, distance 1
    # within float32 rounding of the query's direction: these tie too, ordered by tie key
    stored[40:44] = 0
    stored[40:44, 0], stored[40:44, 1] = 1, [9e-4, 7e-4, 5e-4, 3e-4]
    queries = np.concatenate([rng.normal(size=(4, dim)), stored[3:4],
                              np.eye(1, dim)]).astype(np.float32)

    def unit(x):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).astype(np.float64)

    cosine_distance = np.round(1.0 - unit(queries) @ unit(stored).T, 6)
    distances, ids = _search(FLOAT, stored, queries, dim, k)
    expected_d, expected_ids = _ranked(cosine_distance, k)
    by_key = sorted([40, 41, 42, 43], key=lambda i: int(tie_keys(i)))
    assert ids == expected_ids and sorted(ids[-2][:2]) == [3, 10] and ids[-1][:4] == by_key
    np.testing.assert_allclose(distances, expected_d, atol=2e-6)
    assert all(type(d) is float for row in distances for d in row)


def test_empty_index_and_k_beyond_size():
    cases = [(BINARY, 16, np.zeros((0, 2), np.uint8), np.zeros((1, 2), np.uint8)),
             (FLOAT, 4, np.zeros((0, 4), np.float32), np.ones((1, 4), np.float32))]
    for kind, bits, stored, query in cases:
        assert _search(kind, stored, query, bits, 5) == ([[]], [[]])
        one = np.ones((1,) + stored.shape[1:], stored.dtype)
        assert _search(kind, one, query, bits, 5)[1] == [[0]]
