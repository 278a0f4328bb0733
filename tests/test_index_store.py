"""Approximate indexes, the automatic choice, the sidecar file, and float (cosine) libraries."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import KATHER
from hashview import index_store
from hashview.cli import main
from hashview.errors import LibraryError
from hashview.library import Library
from hashview.search import Searcher

BITS, N_SOURCES, PER_SOURCE = 64, 6, 2000


def clustered_codes(n: int, rng, n_centres: int = 60, flip: float = 0.05) -> np.ndarray:
    """Codes scattered around a few centres, as real model codes are (not uniform random)."""
    centres = rng.integers(0, 256, (n_centres, BITS // 8), dtype=np.uint8)
    flips = np.packbits(rng.random((n, BITS)) < flip, axis=1)
    return centres[rng.integers(0, n_centres, n)] ^ flips


def popcount_distances(codes, query):
    return np.unpackbits(np.bitwise_xor(codes, query), axis=1).sum(axis=1)


def make_library(path, codes, sha="e" * 64):
    with Library.create(path, "m64", "dch", BITS, sha) as lib:
        per = len(codes) // N_SOURCES
        for s in range(N_SOURCES):
            block = codes[s * per:(s + 1) * per]
            lib.add_source({"path": f"/s/{s}.svs", "fingerprint": f"f{s}"}, block,
                           np.arange(len(block)), np.zeros(len(block)), np.full(len(block), 224),
                           tile_labels=["a" if s % 2 else "b"] * len(block))
    return path


@pytest.fixture(scope="module")
def codes():
    return clustered_codes(N_SOURCES * PER_SOURCE, np.random.default_rng(3))


@pytest.fixture(scope="module")
def queries(codes):
    return index_store.tuning_queries(codes, BITS, n=40, seed=11)


@pytest.fixture()
def library(tmp_path, codes):
    return make_library(tmp_path / "lib.h5", codes)


def test_choice_is_exact_below_the_limit_and_ivf_above():
    limit = index_store.EXACT_LIMIT_BITS
    assert index_store.choose_kind(limit // 64 - 1, 64) == "flat"
    assert index_store.choose_kind(limit // 64, 64) == "ivf"
    assert index_store.choose_kind(limit // 128, 128) == "ivf"
    assert index_store.choose_kind(10 ** 8, 2048, "float") == "flat"


@pytest.mark.parametrize("kind", ["ivf", "multihash"])
def test_built_index_reaches_the_recall_target(codes, queries, kind):
    built = index_store.build_binary_index(codes, BITS, kind)
    assert built.recall >= index_store.TARGET_RECALL and built.n_indexed == len(codes)
    # measured again on other queries, from the index itself
    d, i = built.index.search(queries, 10)
    exact = np.sort(np.stack([popcount_distances(codes, q) for q in queries]), axis=1)[:, :10]
    assert index_store.tie_aware_recall(exact, d, i, 10) >= 0.95


def test_auto_searcher_is_exact_until_the_index_is_built(library, codes, queries, monkeypatch):
    monkeypatch.setattr(index_store, "EXACT_LIMIT_BITS", 1000)
    with Library.open(library) as lib:
        searcher = Searcher(lib)
    assert searcher.wanted_kind == "ivf" and searcher.index_kind == "flat"
    assert searcher.needs_index_build()
    exact = searcher.search(queries, k=10)
    built = searcher.build_index()
    assert searcher.index_kind == "ivf" and not searcher.needs_index_build()
    assert searcher.sidecar_path.exists() and built.params["nprobe"] >= 1
    approx = searcher.search(queries, k=10)
    hits_within = [sum(h.distance <= e[-1].distance for h in a) for a, e in zip(approx, exact)]
    assert np.mean(hits_within) / 10 >= 0.95
    for hits, query in zip(approx, queries):  # (distance, tile index) order, true distances
        assert [(h.distance, h.tile_index) for h in hits] == sorted(
            (h.distance, h.tile_index) for h in hits)
        ids = [h.tile_index for h in hits]
        assert [h.distance for h in hits] == popcount_distances(codes[ids], query).tolist()
    # filtered searches stay exact
    filtered = searcher.search(queries, k=10, labels={"a"})
    with Library.open(library) as lib:
        exact_searcher = Searcher(lib, index="flat")
    assert filtered == exact_searcher.search(queries, k=10, labels={"a"})
    # a new searcher takes the index from the sidecar instead of rebuilding it
    with Library.open(library) as lib:
        reopened = Searcher(lib)
    assert reopened.index_kind == "ivf" and reopened.index_info["params"] == built.params
    assert reopened.search(queries, k=10) == approx


def test_stale_sidecar_is_ignored_and_a_grown_library_reuses_it(tmp_path, codes, monkeypatch):
    monkeypatch.setattr(index_store, "EXACT_LIMIT_BITS", 1000)
    path = make_library(tmp_path / "lib.h5", codes[:9000])
    with Library.open(path) as lib:
        Searcher(lib).build_index()
    with Library.open(path, "a") as lib:  # appended tiles: the first codes are unchanged
        lib.add_source({"path": "/s/new.svs", "fingerprint": "new"}, codes[9000:],
                       np.arange(3000), np.zeros(3000), np.full(3000, 224))
    with Library.open(path) as lib:
        grown = Searcher(lib)
    assert grown.index_kind == "ivf" and grown._approximate.index.ntotal == 12000
    assert any("added" in note for note in grown.index_notes)
    # a library of other codes under the same name: the sidecar does not describe it
    other = make_library(tmp_path / "other.h5", clustered_codes(9000, np.random.default_rng(9)))
    index_store.sidecar_path(path).rename(index_store.sidecar_path(other))
    with Library.open(other) as lib:
        fresh = Searcher(lib)
    assert fresh.index_kind == "flat" and fresh.needs_index_build()


@pytest.fixture(scope="module")
def indexed_library(tmp_path_factory, codes):
    """A library and the bytes of its valid IVF sidecar (built once for the damage tests)."""
    path = make_library(tmp_path_factory.mktemp("corrupt") / "lib.h5", codes)
    with Library.open(path) as lib:
        Searcher(lib, index="ivf").build_index()
    return path, index_store.sidecar_path(path).read_bytes()


@pytest.mark.parametrize("damage", ["magic", "truncate", "payload", "header"])
def test_corrupt_sidecar_is_one_line_error_and_search_falls_back(indexed_library, queries,
                                                                monkeypatch, damage):
    monkeypatch.setattr(index_store, "EXACT_LIMIT_BITS", 1000)
    library, valid = indexed_library
    side = index_store.sidecar_path(library)
    data = bytearray(valid)
    if damage == "magic":
        data[:8] = b"PICKLE!!"
    elif damage == "truncate":
        data = data[:-100]
    elif damage == "payload":
        data[-50] ^= 0xFF
    else:
        data[16:20] = b"\xff\xfe{["
    side.write_bytes(bytes(data))
    with Library.open(library) as lib:
        identity = index_store.Identity.of(lib.model_sha256, BITS, lib.codes())
        with pytest.raises(LibraryError) as error:
            index_store.load_sidecar(side, identity)
        searcher = Searcher(lib)
    message = str(error.value)
    assert message.startswith(str(side)) and "\n" not in message
    assert searcher.index_kind == "flat" and searcher.needs_index_build()
    assert "ignored" in searcher.index_notes[0]
    assert len(searcher.search(queries, k=10)[0]) == 10


def test_float_library_is_searched_by_cosine(tmp_path):
    rng = np.random.default_rng(5)
    dim, n = 48, 900
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[10] = vectors[20] * 3  # same direction: distance ties, broken by tile index
    with Library.create(tmp_path / "f.h5", "fm", "resnet", dim, "f" * 64,
                        code_kind="float") as lib:
        lib.add_source({"path": "/s/f.svs", "fingerprint": "ff"}, vectors, np.arange(n),
                       np.zeros(n), np.full(n, 224), tile_labels=["x", "y", "z"] * (n // 3))
    with Library.open(tmp_path / "f.h5") as lib:
        searcher = Searcher(lib)
        stored = lib.codes()
    assert searcher.index_kind == "flat-ip" and searcher.wanted_kind == "flat"
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    query = vectors[20] + rng.normal(scale=0.01, size=dim).astype(np.float32)
    hits = searcher.search(query, k=5)[0]
    cosine = unit @ (query / np.linalg.norm(query))
    assert [h.tile_index for h in hits][:2] == [10, 20]
    assert set(h.tile_index for h in hits) == set(np.argsort(-cosine, kind="stable")[:5])
    assert all(isinstance(h.distance, float) for h in hits)
    assert hits[0].distance == pytest.approx(1 - cosine[10], abs=1e-4)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    labelled = searcher.search(query, k=5, labels={"y"})[0]
    assert all(h.label == "y" for h in labelled)
    with pytest.raises(LibraryError, match="dimensions"):
        searcher.search(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="floating"):
        searcher.search(np.zeros((1, dim), np.uint8))
    with Library.open(tmp_path / "f.h5") as lib, pytest.raises(LibraryError, match="binary"):
        Searcher(lib, index="ivf")


def test_cli_index_build_and_search_with_an_approximate_index(slide_library, tmp_path, capsys):
    small = tmp_path / "small.h5"
    shutil.copy(slide_library[0], small)
    assert main(["index-build", str(small), "--json"]) == 0  # auto: exact is enough
    assert json.loads(capsys.readouterr().out)["sidecar"] is None
    assert not index_store.sidecar_path(small).exists()
    query = str(sorted((KATHER / "04_LYMPHO").iterdir())[0])
    # --index ivf with no sidecar: built on demand, saved, then used
    assert main(["search", str(small), query, "--index", "ivf", "--json", "-k", "5"]) == 0
    out, err = capsys.readouterr()
    assert "building the ivf index" in err and index_store.sidecar_path(small).exists()
    answer = json.loads(out)
    hits = answer["hits"]
    assert len(hits) == 5 and hits[0]["distance"] == 0
    assert answer["index"]["kind"] == "ivf" and answer["index"]["params"]["nprobe"] >= 1
    assert main(["search", str(small), query, "--index", "ivf", "-k", "5"]) == 0
    assert "building" not in capsys.readouterr().err  # read from the sidecar this time
    assert main(["index-build", str(small), "--kind", "multihash"]) == 0
    assert "multihash index of" in capsys.readouterr().out
