"""Search: FAISS equals a brute-force Hamming ranking (ties by the tiles' fixed shuffle);
filters; votes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from hashview.code_kinds import tie_keys
from hashview.errors import LibraryError
from hashview.library import Library, fingerprint_file
from hashview.search import (Hit, Searcher, SourceSummary, Vote, aggregate_by_source, exact_topk,
                             hits_to_dict, vote)

LABELS = ["tumor", "stroma", None, "fat"]
N_SOURCES, PER_SOURCE = 10, 500  # 16-bit codes, 5000 tiles: every distance has long tie runs


def popcount_distances(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(codes, query), axis=1).sum(axis=1).astype(np.int64)


def brute_force(codes: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Reference ranking: (distance, tie key of the tile index) over the allowed tile ids."""
    ids = np.arange(len(codes)) if allowed is None else np.flatnonzero(allowed)
    d = popcount_distances(codes[ids], query)
    order = np.lexsort((tie_keys(ids), d))[:k]
    return d[order].tolist(), ids[order].tolist()


@pytest.fixture(scope="module")
def library_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("search") / "lib.h5"
    rng = np.random.default_rng(42)
    with Library.create(path, "m16", "hatdh", 16, "c" * 64) as lib:
        for s in range(N_SOURCES):
            n = PER_SOURCE
            tile_labels = [LABELS[(s + i) % len(LABELS)] for i in range(n)]
            lib.add_source({"path": f"/slides/s{s}.svs", "fingerprint": f"fp{s}"},
                           rng.integers(0, 256, (n, 2), dtype=np.uint8),
                           np.arange(n) * 10, np.full(n, s), np.full(n, 224),
                           tile_labels=tile_labels)
        lib.add_source({"path": "/slides/empty.svs", "fingerprint": "fp-empty"},
                       np.zeros((0, 2), np.uint8), [], [], [])
    return path


@pytest.fixture(scope="module")
def searcher(library_path) -> Searcher:
    with Library.open(library_path) as lib:
        return Searcher(lib)  # holds everything in memory; the file can be closed


@pytest.fixture(scope="module")
def data(library_path):
    with Library.open(library_path) as lib:
        return lib.codes(), lib.tile_table(), lib.label_names()


@pytest.fixture(scope="module")
def queries(data) -> np.ndarray:
    codes = data[0]
    rng = np.random.default_rng(7)
    return np.concatenate([rng.integers(0, 256, (40, 2), dtype=np.uint8), codes[[0, 17, 4999]]])


def assert_matches(results, codes, queries, k, allowed=None):
    assert len(results) == len(queries)
    for hits, q in zip(results, queries):
        want_d, want_i = brute_force(codes, q, k, allowed)
        assert [h.distance for h in hits] == want_d
        assert [h.tile_index for h in hits] == want_i
        assert [h.rank for h in hits] == list(range(len(hits)))


@pytest.mark.parametrize("k", [1, 5, 10, 37, 200, 4999, 5000, 6000])
def test_search_equals_brute_force_with_ties(searcher, data, queries, k):
    assert_matches(searcher.search(queries, k=k), data[0], queries, k)


def test_boundary_ties_are_actually_exercised(searcher, data, queries):
    # Guard for the test above: the k-th and (k+1)-th distances tie for most queries.
    codes = data[0]
    tied = sum(np.sort(popcount_distances(codes, q))[9] == np.sort(popcount_distances(codes, q))[10]
               for q in queries)
    assert tied > len(queries) // 2


def test_filtered_searches_are_exact(searcher, data, queries):
    codes, table, names = data
    sid, lid = table["source_id"], table["label_id"]
    label_id = {n: i for i, n in enumerate(names)}
    cases = [
        (dict(exclude_sources={0, 3}), ~np.isin(sid, [0, 3])),
        (dict(sources={1, 2}), np.isin(sid, [1, 2])),
        (dict(labels={"tumor"}), lid == label_id["tumor"]),
        (dict(labels={"tumor", None}), np.isin(lid, [label_id["tumor"], -1])),
        (dict(sources={4, 5, 6}, exclude_sources={5}, labels={"fat", "stroma"}),
         np.isin(sid, [4, 6]) & np.isin(lid, [label_id["fat"], label_id["stroma"]])),
        (dict(labels={"no-such-label"}), np.zeros(len(codes), bool)),
        (dict(sources=set()), np.zeros(len(codes), bool)),
        (dict(exclude_sources=set()), None),
    ]
    for kwargs, allowed in cases:
        for k in (1, 10, 300):
            assert_matches(searcher.search(queries, k=k, **kwargs), codes, queries, k, allowed)
        # Cached subset index gives the same answer the second time.
        assert_matches(searcher.search(queries, k=10, **kwargs), codes, queries, 10, allowed)


def test_hit_fields_describe_the_tile(searcher, library_path, queries):
    hits = searcher.search(queries[0], k=20)
    assert len(hits) == 1 and len(hits[0]) == 20
    with Library.open(library_path) as lib:
        for hit in hits[0]:
            tile = lib.tile(hit.tile_index)
            src = lib.source(hit.source_id)
            assert (hit.source_id, hit.x, hit.y, hit.size, hit.label) == (
                tile.source_id, tile.x, tile.y, tile.size, tile.label)
            assert (hit.source_name, hit.source_path) == (src.name, src.path)
    assert json.loads(json.dumps(hits_to_dict(hits)))[0][0]["tile_index"] == hits[0][0].tile_index


def test_exact_topk_on_pure_ties():
    index = faiss.IndexBinaryFlat(16)
    index.add(np.zeros((1000, 2), np.uint8))
    D, I = exact_topk(index, np.zeros((3, 2), np.uint8), 7)
    first = np.argsort(tie_keys(np.arange(1000)))[:7].tolist()
    assert I.tolist() == [first] * 3 and (D == 0).all()
    assert first != list(range(7))  # the shuffle, not the order of adding


def test_tie_keys_are_a_fixed_shuffle():
    ids = np.arange(100_000)
    keys = tie_keys(ids)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(ids)  # no two tiles share one
    assert (tie_keys(ids) == keys).all() and tie_keys(5).shape == ()  # the same every time
    first_half = np.argsort(keys)[:50_000] < 50_000
    assert 0.45 < first_half.mean() < 0.55  # tiles added first are not ranked first


def test_ties_do_not_favour_the_first_indexed_class(tmp_path):
    """A library indexed folder by folder: 200 "a" tiles, then 200 "b" tiles, all one code.
    Ordering ties by index showed ten "a" hits and voted "a" for every query."""
    path = tmp_path / "lib.h5"
    with Library.create(path, "m16", "hatdh", 16, "c" * 64) as lib:
        for s, label in enumerate("ab"):
            lib.add_source({"path": f"/f/{label}", "fingerprint": f"fp{label}"},
                           np.zeros((200, 2), np.uint8), np.arange(200), np.zeros(200),
                           np.full(200, 50), tile_labels=[label] * 200)
    with Library.open(path) as lib:
        searcher = Searcher(lib)
    hits = searcher.search(np.zeros(2, np.uint8), k=40)[0]
    shown = [hit.label for hit in hits]
    assert 10 <= shown.count("a") <= 30 and 10 <= shown.count("b") <= 30
    # a filtered search orders the same tiles the same way (keys of tile indices, not of rows)
    b_unfiltered = [hit.tile_index for hit in hits if hit.label == "b"]
    only_b = searcher.search(np.zeros(2, np.uint8), k=40, labels={"b"})[0]
    assert [hit.tile_index for hit in only_b][:len(b_unfiltered)] == b_unfiltered


def test_bad_queries(searcher, library_path):
    with pytest.raises(LibraryError) as e:
        searcher.search(np.zeros((2, 8), np.uint8))
    msg = str(e.value)
    assert msg.startswith(str(library_path)) and "64-bit" in msg and "16-bit" in msg
    with pytest.raises(ValueError, match="uint8"):
        searcher.search(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="k must be"):
        searcher.search(np.zeros((1, 2), np.uint8), k=0)
    assert searcher.search(np.zeros((0, 2), np.uint8)) == []


def test_the_query_file_is_its_stored_source_by_content_or_path(tmp_path):
    """What "exclude the query's own slide" leaves out: the stored source with the query file's
    content wherever it now lives (moved, copied, linked), and whatever is stored at its path."""
    stored = tmp_path / "stored"
    stored.mkdir()
    slides = []
    for n in range(3):
        slides.append(stored / f"slide{n}.svs")
        slides[-1].write_bytes(bytes([n]) * 5000)
    with Library.create(tmp_path / "lib.h5", "m16", "hatdh", 16, "c" * 64) as lib:
        for path in slides:
            lib.add_source({"path": str(path), "fingerprint": fingerprint_file(path)},
                           np.zeros((2, 2), np.uint8), [0, 1], [0, 0], [224, 224])
    moved = tmp_path / "elsewhere" / "renamed.svs"
    moved.parent.mkdir()
    shutil.move(slides[1], moved)
    copied = tmp_path / "copy of slide2.svs"
    shutil.copy(slides[2], copied)
    linked = tmp_path / "link.svs"
    os.symlink(copied, linked)
    with Library.open(tmp_path / "lib.h5") as lib:
        searcher = Searcher(lib)
    assert searcher.source_ids_of_file(slides[0]) == {0}  # where it was indexed
    assert searcher.source_ids_of_file(moved) == {1}
    assert searcher.source_ids_of_file(copied) == {2}
    assert searcher.source_ids_of_file(linked) == {2}
    assert searcher.source_ids_of_file(slides[1]) == {1}  # gone from there: by its path alone
    other = tmp_path / "other.svs"
    other.write_bytes(b"something else")
    assert searcher.source_ids_of_file(other) == set()


def test_empty_library(tmp_path):
    with Library.create(tmp_path / "empty.h5", "m", "hatdh", 64, "d" * 64) as lib:
        searcher = Searcher(lib)
    assert searcher.n_tiles == 0
    assert searcher.search(np.zeros((2, 8), np.uint8), k=5) == [[], []]
    assert searcher.search(np.zeros(8, np.uint8), k=5, labels={"x"}) == [[]]


def _hit(rank, source_id, distance, label):
    return Hit(rank=rank, tile_index=100 + rank, distance=distance, source_id=source_id,
               source_name=f"s{source_id}", source_path=f"/s{source_id}", x=0, y=0, size=224,
               label=label)


def test_vote():
    hits = [_hit(0, 1, 2, "a"), _hit(1, 2, 3, None), _hit(2, 1, 3, "b"), _hit(3, 3, 4, "b"),
            _hit(4, 2, 5, "a"), _hit(5, 2, 6, "c")]
    # a and b both have 2 hits; a's ranks sum to 4, b's to 5: a wins. The unlabelled hit is ignored.
    assert vote(hits) == Vote("a", 2, 5, 0.4, tied_with=("b",))
    assert vote(hits + [_hit(6, 1, 6, "b")]) == Vote("b", 3, 6, 0.5)
    # Equal counts and rank sums: first occurrence wins.
    tied = [_hit(1, 1, 1, "x"), _hit(0, 1, 1, "y"), _hit(0, 1, 1, "x"), _hit(1, 1, 1, "y")]
    assert vote(tied).label == "x" and vote(tied).tied_with == ("y",)
    assert vote(hits).tied_with == ("b",) and vote(hits[:2]).tied_with == ()
    assert vote([_hit(0, 1, 1, None)]) is None and vote([]) is None
    assert vote([hits[:3], hits[3:]]) == vote(hits)  # per-query lists are flattened


def test_aggregate_by_source():
    hits = [_hit(0, 1, 2, "a"), _hit(1, 2, 3, None), _hit(2, 1, 3, "b"), _hit(3, 3, 1, "b"),
            _hit(4, 2, 5, "a"), _hit(5, 4, 1, "c")]
    assert aggregate_by_source(hits) == [
        SourceSummary(1, "s1", 2, 2, 0),
        SourceSummary(2, "s2", 2, 3, 1),
        SourceSummary(3, "s3", 1, 1, 3),  # same n_hits and distance as s4: better rank first
        SourceSummary(4, "s4", 1, 1, 5),
    ]
    assert aggregate_by_source([]) == []


class CodesAsImages:
    """An encoder stand-in for ``search_images``: each query "image" is already its code."""

    def encode(self, images):
        return np.stack(images)


def _full_ranking(codes, query):
    d = popcount_distances(codes, query)
    order = np.lexsort((tie_keys(np.arange(len(codes))), d))
    return d[order], order


@pytest.mark.parametrize("k", [1, 3, 10, 60])
def test_a_cut_inside_a_run_of_ties_says_how_many_tie_past_it_and_their_labels(
        searcher, data, queries, k):
    from hashview.search.query import search_images

    codes, table, names = data
    kinds = {"inside the fetch": 0, "past the fetch": 0, "none": 0}
    for q in queries:
        result = search_images(searcher, CodesAsImages(), [q], k=k)
        d, order = _full_ranking(codes, q)
        assert [h.tile_index for h in result.hits] == order[:k].tolist()  # shown: unchanged
        last = d[k - 1]
        total = int((d[k:] == last).sum())  # every tile past the cut at the last distance
        cut = result.cut_tie
        if total == 0:
            assert cut is None
            kinds["none"] += 1
            continue
        # the exact index counts the whole run, also where it goes on past the fetch of 2k
        assert (cut.distance, cut.count, cut.exact) == (last, total, True)
        tied_ids = order[k:][d[k:] == last]
        want = {}
        for label_id in table["label_id"][tied_ids]:
            name = names[label_id] if label_id >= 0 else ""
            want[name] = want.get(name, 0) + 1
        assert cut.labels == want
        kinds["past the fetch" if d[2 * k - 1] == last else "inside the fetch"] += 1
        line = result.to_text().splitlines()[-1]
        assert line.startswith(f"cut: {total} more tiles past the {k} shown are as near as the "
                               f"last ({last}): ")
    # runs going on past the fetch of 2k were met (what only the range search counts whole)
    assert kinds["past the fetch"] > 0


def test_a_region_s_merged_hits_are_those_of_its_tiles_top_k(searcher, data, queries):
    from hashview.search.query import search_images

    codes = data[0]
    k = 10
    for pair in (queries[0:2], queries[2:5], queries[40:43]):
        result = search_images(searcher, CodesAsImages(), list(pair), k=k)
        best = {}  # each tile's best distance over the query tiles' own top k
        for q in pair:
            d, order = _full_ranking(codes, q)
            for dist, tile in zip(d[:k], order[:k]):
                best[int(tile)] = min(best.get(int(tile), 99), int(dist))
        want = sorted(best.items(), key=lambda kv: (kv[1], int(tie_keys(kv[0]))))[:k]
        assert [(h.tile_index, h.distance) for h in result.hits] == want
        assert all(len(hits) <= k for hits in result.per_tile)
        merged = np.min([popcount_distances(codes, q) for q in pair], axis=0)
        total = int((merged == want[-1][1]).sum()) - sum(1 for _, d in want if d == want[-1][1])
        if result.cut_tie is not None:
            assert result.cut_tie.count <= total
            assert not result.cut_tie.exact or result.cut_tie.count == total


def test_a_filtered_search_counts_only_the_tied_tiles_it_could_show(searcher, data, queries):
    from hashview.search.query import search_images

    codes, table, names = data
    allowed = table["label_id"] == names.index("tumor")
    for q in queries[:10]:
        result = search_images(searcher, CodesAsImages(), [q], k=10, labels={"tumor"})
        d = np.sort(popcount_distances(codes[allowed], q))
        total = int((d[10:] == d[9]).sum())
        if total:
            assert (result.cut_tie.count, result.cut_tie.labels) == (total, {"tumor": total})
        else:
            assert result.cut_tie is None


def test_a_large_region_over_one_repeated_code_counts_its_run_once(tmp_path):
    """Glass: 3,000 library tiles on one code, a region of 200 query tiles on it too. The run
    is counted whole (range searches of the distinct query codes folded into one mask of the
    library, not 200 copies of 3,000 matches); past WITHIN_MAX_CODES distinct codes it stays
    "at least" what was fetched."""
    from hashview.search import searcher as searcher_module
    from hashview.search.query import search_images

    path = tmp_path / "glass.h5"
    with Library.create(path, "m16", "hatdh", 16, "c" * 64) as lib:
        lib.add_source({"path": "/f/glass", "fingerprint": "fp"}, np.zeros((3000, 2), np.uint8),
                       np.arange(3000), np.zeros(3000), np.full(3000, 50),
                       tile_labels=["glass"] * 3000)
    with Library.open(path) as lib:
        searcher = Searcher(lib)
    region = [np.zeros(2, np.uint8)] * 200
    cut = search_images(searcher, CodesAsImages(), region, k=10).cut_tie
    assert (cut.count, cut.exact, cut.labels) == (2990, True, {"glass": 2990})
    varied = [np.array([i, 0], np.uint8) for i in range(searcher_module.WITHIN_MAX_CODES + 1)]
    cut = search_images(searcher, CodesAsImages(), varied, k=10).cut_tie
    assert not cut.exact and cut.count < 2990  # what the fetch held, said as "at least"


def test_a_cut_count_from_an_approximate_index_is_never_called_exact(searcher, queries,
                                                                     monkeypatch):
    from hashview.search.query import search_images

    exact = [q for q in queries
             if (cut := search_images(searcher, CodesAsImages(), [q], k=10).cut_tie) is not None
             and cut.exact]
    assert exact  # some cuts are exact with the flat index
    monkeypatch.setattr(Searcher, "index_info", property(lambda self: {"exact": False}))
    for q in exact:
        cut = search_images(searcher, CodesAsImages(), [q], k=10).cut_tie
        assert not cut.exact and cut.describe(10).startswith("at least ")
