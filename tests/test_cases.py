"""Whole-slide (case) search: mosaic, median-of-min slide distance, cases, CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import KATHER, SLIDE
from hashview.code_kinds import tie_keys
from hashview.encode import hamming_distance
from hashview.search import cases as case_search
from hashview.search.cases import (HISTOGRAM_BINS, RankedSource, colour_histograms, group_cases,
                                   rank_sources, select_mosaic, slide_minima)


def test_colour_histograms_count_each_channel():
    red = np.zeros((2, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    red[1, :2] = (0, 0, 0)  # half black
    hist = colour_histograms(red)
    assert hist.shape == (2, 3 * HISTOGRAM_BINS)
    np.testing.assert_allclose(hist.reshape(2, 3, -1).sum(axis=2), 1.0)
    assert hist[0, HISTOGRAM_BINS - 1] == 1.0 and hist[0, HISTOGRAM_BINS] == 1.0  # R top, G 0
    assert hist[1, HISTOGRAM_BINS - 1] == 0.5 and hist[1, 0] == 0.5


def test_the_mosaic_takes_every_colour_and_spreads_over_the_slide():
    rng = np.random.default_rng(0)
    n = 200
    colour = np.repeat([0, 1], n // 2)  # two tissue colours
    hist = np.eye(2, dtype=np.float32)[colour] + rng.normal(0, 0.01, (n, 2)).astype(np.float32)
    positions = rng.uniform(0, 10_000, (n, 2)).astype(np.float32)
    mosaic = select_mosaic(hist, positions, colour_clusters=2, share=0.05)
    assert set(colour[mosaic]) == {0, 1}
    assert 8 <= len(mosaic) <= 12  # 5 % of each 100-tile cluster, 5 each
    assert len(set(mosaic)) == len(mosaic) and mosaic == sorted(mosaic)


def _fake_searcher(codes, tile_sources):
    return SimpleNamespace(codes=codes, tile_sources=np.asarray(tile_sources),
                           code_kind="binary", path="fake.h5")


def test_slide_distance_is_the_median_over_the_mosaic_of_the_minimum_distance():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (60, 8), dtype=np.uint8)
    sources = rng.integers(0, 6, 60)
    searcher = _fake_searcher(codes, sources)
    query = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    ranked = rank_sources(searcher, query)
    full = hamming_distance(query, codes)  # (5, 60)
    expected = {int(s): float(np.median(full[:, sources == s].min(axis=1)))
                for s in np.unique(sources)}
    assert {sid: d for sid, d, _ in ranked} == expected
    assert [d for _, d, _ in ranked] == sorted(expected.values())
    for sid, _, pairs in ranked:  # each named library tile is of that source, at the minimum
        for i, tile in pairs:
            assert sources[tile] == sid
            assert full[i, tile] == full[i, sources == sid].min()
    assert all(sid != 3 for sid, _, _ in rank_sources(searcher, query, exclude_sources={3}))


def test_equal_slide_distances_are_ordered_by_the_sources_fixed_shuffle():
    # never by the order the slides were indexed in (source id): that favoured the first ones
    codes = np.zeros((40, 8), np.uint8)
    ranked = rank_sources(_fake_searcher(codes, np.arange(40)[::-1]), np.zeros((3, 8), np.uint8))
    by_key = sorted(range(40), key=lambda sid: int(tie_keys(sid)))
    assert [sid for sid, _, _ in ranked] == by_key and by_key[:10] != list(range(10))


def _straightforward_ranking(codes, tile_sources, mosaic, excluded=(), k=None):
    """The ranking as first written: one pass over all library codes per mosaic code."""
    tile_sources = np.asarray(tile_sources)
    order = np.argsort(tile_sources, kind="stable")
    codes, sorted_sources = codes[order], tile_sources[order]
    starts = np.flatnonzero(np.r_[True, sorted_sources[1:] != sorted_sources[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    source_ids = sorted_sources[starts]
    minima = np.stack([np.minimum.reduceat(hamming_distance(code, codes), starts)
                       for code in mosaic])
    median = np.median(minima, axis=0)
    ranked = []
    for j in np.lexsort((tie_keys(source_ids), median)):
        if int(source_ids[j]) in excluded:
            continue
        if k is not None and len(ranked) == k:
            break
        segment = hamming_distance(mosaic, codes[starts[j]:ends[j]])
        pairs = sorted((int(minima[i, j]), i, int(np.argmin(segment[i])) + int(starts[j]))
                       for i in range(len(mosaic)))[:5]
        ranked.append((int(source_ids[j]), float(median[j]),
                       [(i, int(order[t])) for _, i, t in pairs]))
    return ranked


@pytest.mark.parametrize("width", [8, 4, 16])
def test_the_blocked_kernel_ranks_exactly_as_one_pass_per_mosaic_code(width, monkeypatch):
    rng = np.random.default_rng(width)
    for trial in range(12):
        # uneven slides (1 to 400 tiles), source ids with gaps (sources with no tiles), tiles
        # stored in order or shuffled; odd trials use 2 bits of every byte: many ties
        slides = int(rng.integers(1, 25))
        ids = np.sort(rng.choice(3 * slides, slides, replace=False))
        sources = np.repeat(ids, rng.integers(1, 400, slides)).astype(np.int32)
        if trial % 3 == 2:
            sources = rng.permutation(sources)
        codes = rng.integers(0, 256, (len(sources), width), dtype=np.uint8)
        mosaic = rng.integers(0, 256, (int(rng.integers(1, 40)), width), dtype=np.uint8)
        if trial % 2:
            codes &= 0b10000001
            mosaic &= 0b10000001
        # blocks from 1 code to the whole library: slides split over blocks and chunks
        monkeypatch.setattr(case_search, "BLOCK_DISTANCES", int(rng.integers(1, 20_000)))
        excluded = set(rng.choice(ids, min(2, slides), replace=False).tolist())
        searcher = _fake_searcher(codes, sources)
        for k in (None, 3):
            assert (rank_sources(searcher, mosaic, excluded, k=k)
                    == _straightforward_ranking(codes, sources, mosaic, excluded, k))


def test_slide_minima_is_the_minimum_over_each_slide():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    starts = np.array([0, 1, 20, 49])
    mosaic = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    full = hamming_distance(mosaic, codes)
    expected = np.stack([full[:, a:b].min(axis=1) for a, b in zip(starts, [1, 20, 49, 50])], 1)
    assert slide_minima(codes, starts, mosaic).tolist() == expected.tolist()
    assert slide_minima(codes, starts, mosaic[:0]).shape == (0, 4)


def test_a_case_is_the_patient_when_known_else_the_slide():
    def source(sid, distance, patient):
        return RankedSource(sid, sid, f"s{sid}", f"/s{sid}", None, patient, distance)

    cases = group_cases([source(0, 1.0, "P1"), source(1, 2.0, None), source(2, 3.0, "P1")])
    assert cases == [("patient P1", 1.0, [0, 2]), ("slide s1", 2.0, [1])]


@pytest.fixture(scope="module")
def session(slide_library):
    import hashview

    return hashview.open_library(slide_library[0], device="cpu")


def test_a_slide_finds_itself_first_and_not_when_excluded(session):
    from hashview.search.cases import search_cases

    found = search_cases(session, SLIDE, k=3)
    assert found.sources[0].name == SLIDE.name and found.sources[0].distance == 0
    assert 1 <= len(found.mosaic) < found.query_tiles
    assert found.cases[0] == (f"slide {SLIDE.name}", 0.0, [found.sources[0].source_id])
    others = search_cases(session, SLIDE, k=3, exclude_source=True)
    assert SLIDE.name not in {s.name for s in others.sources} and len(others.sources) == 3


def test_the_cli_ranks_slides_as_json_and_refuses_a_region(slide_library, capsys):
    from hashview.cli import main

    assert main(["search", str(slide_library[0]), str(SLIDE), "--whole-slide", "-k", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["rank"] for s in result["sources"]] == [0, 1]
    assert result["sources"][0]["name"] == SLIDE.name and result["mosaic"]
    assert main(["search", str(slide_library[0]), str(SLIDE), "--whole-slide",
                 "--region", "0,0,10,10"]) == 2
    assert "--whole-slide" in capsys.readouterr().err


def test_a_library_slide_is_queried_with_its_stored_codes_and_ranks_as_if_re_encoded(session):
    from hashview.search.cases import search_cases

    seen = []
    stored = search_cases(session, SLIDE, k=20, progress=seen.append)
    encoded = search_cases(session, SLIDE, k=20, use_stored_codes=False)
    assert stored.query_from_library and not encoded.query_from_library
    assert not any(p.stage == "encoding" for p in seen)  # no forward pass on the stored path
    assert stored.mosaic == encoded.mosaic and stored.query_tiles == encoded.query_tiles
    assert ([(s.source_id, s.distance) for s in stored.sources]
            == [(s.source_id, s.distance) for s in encoded.sources])
    assert len(stored.sources) > 3  # more than the slide itself: the order of the rest counts
    without = search_cases(session, SLIDE, k=20, exclude_source=True)
    assert without.query_from_library
    assert [s.source_id for s in without.sources] == [s.source_id for s in stored.sources[1:]]


@pytest.fixture(scope="module")
def patch_library(tmp_path_factory):
    """The Kather patches alone: the CMU slide is new to it."""
    from hashview.indexing import index_paths

    path = tmp_path_factory.mktemp("patches") / "library.h5"
    assert not index_paths([KATHER], path).failed
    return path


def test_the_cli_says_whether_the_query_slide_came_from_the_library(slide_library, patch_library,
                                                                     capsys):
    from hashview.cli import main

    for library, from_library in ((slide_library[0], True), (patch_library, False)):
        assert main(["search", str(library), str(SLIDE), "--whole-slide", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["query_from_library"] is from_library
        assert main(["search", str(library), str(SLIDE), "--whole-slide"]) == 0
        text = capsys.readouterr().out
        assert ("stored codes" in text) is from_library
        assert ("encoded now" in text) is not from_library
