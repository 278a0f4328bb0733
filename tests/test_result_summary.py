"""What a result says: the vote with its support, ties, hits per source (app and CLI wording)."""

from __future__ import annotations

import pytest

from hashview.search.query import QueryResult
from hashview.search.result_summary import (MIN_VOTE_LABELS, per_source_line, rank_marks, tie_note,
                                     vote_headline)
from hashview.search import Hit, vote


def _hits(spec):
    """``spec``: (distance, label, source id) per hit, in rank order."""
    return [Hit(rank=i, tile_index=10 + i, distance=d, source_id=s, source_name=f"slide{s}.svs",
                source_path=f"/data/slide{s}.svs", x=0, y=0, size=224, label=label)
            for i, (d, label, s) in enumerate(spec)]


def _headline(spec):
    hits = _hits(spec)
    return vote_headline(hits, vote(hits))


def test_one_labelled_hit_among_ten_is_not_called_a_vote():
    text = _headline([(3, "05_DEBRIS", 0)] + [(5, None, 1)] * 9)
    assert text == "Too few labels to vote: 1 of 10 hits labelled (05_DEBRIS)"
    assert "100%" not in text
    two = _headline([(1, "a", 0), (2, "a", 0), (3, None, 1)])
    assert two == "Too few labels to vote: 2 of 3 hits labelled (a ×2)"


def test_a_vote_says_its_support_and_the_unlabelled_hits():
    assert MIN_VOTE_LABELS == 3
    text = _headline([(0, "tumour", 0), (1, "tumour", 0), (2, "stroma", 1), (3, "tumour", 2),
                      (4, None, 3)])
    assert text == "tumour: 3 of 4 labelled hits (75%); 1 of 5 unlabelled"
    assert _headline([(0, "x", 0)] * 3) == "x: 3 of 3 labelled hits (100%)"


def test_a_tie_between_labels_is_said_not_broken_silently():
    text = _headline([(0, "a", 0), (1, "b", 0), (2, "b", 0), (3, "a", 0)])
    assert text == "No majority: a and b, 2 each of 4 labelled hits (4 shown)"


def test_no_labels_and_no_hits():
    assert _headline([(0, None, 0)] * 4) == "No labelled hits among the 4 shown"
    assert vote_headline([], None) == "No hits"


def test_hits_at_equal_distance_share_a_rank_group():
    hits = _hits([(0, None, 0), (2, None, 0), (2, None, 0), (2, None, 0), (5, None, 0),
                  (7, None, 0), (7, None, 0)])
    assert rank_marks(hits) == ["1", "2=", "2=", "2=", "5", "6=", "6="]
    assert tie_note(hits).startswith("5 of 7 hits tie")
    assert "a fixed shuffle of the library's tiles" in tie_note(hits)
    assert tie_note(_hits([(0, None, 0), (1, None, 0)])) is None


def test_hits_per_source_most_hits_first():
    hits = _hits([(0, None, 2), (1, None, 1), (2, None, 1), (3, None, 3), (4, None, 1)])
    assert per_source_line(hits) == "from 3 sources: slide1.svs 3, slide2.svs 1, slide3.svs 1"
    assert per_source_line(hits, limit=1) == "from 3 sources: slide1.svs 3, 2 more"
    assert per_source_line([]) == ""


def test_the_terminal_table_marks_ties_and_says_the_vote_with_its_support():
    hits = _hits([(0, "a", 0), (4, None, 1), (4, "a", 1)])
    text = QueryResult(hits=hits, vote=vote(hits), query_tiles=1).to_text()
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2=", "2="]
    assert "vote: Too few labels to vote: 2 of 3 hits labelled (a ×2)" in lines
    assert "from 2 sources: slide1.svs 2, slide0.svs 1" in lines
    assert any(line.startswith("ties: 2 of 3 hits tie") for line in lines)


@pytest.fixture(scope="module")
def session(slide_library):
    import hashview

    return hashview.open_library(slide_library[0], device="cpu")


def test_a_region_votes_over_the_hits_it_shows_and_knows_which_tile_found_each(session):
    from conftest import SLIDE

    side = session.load().tile_size
    result = session.search((SLIDE, (900, 900, 3 * side, 3 * side)), k=5)
    assert result.query_tiles == 9 and len(result.hits) == 5
    assert result.vote == vote(result.hits)
    for hit, tile in zip(result.hits, result.found_by):
        best_there = min((h.distance for h in result.per_tile[tile]
                          if h.tile_index == hit.tile_index), default=None)
        assert best_there == hit.distance


def test_a_vote_says_it_is_not_settled_when_tiles_tied_past_the_cut_could_change_it():
    from hashview.search.query import CutTie

    hits = _hits([(0, "tumour", 0), (1, "tumour", 0), (2, "tumour", 1), (2, "stroma", 2)])
    result = QueryResult(hits=hits, vote=vote(hits), query_tiles=1)
    plain = "tumour: 3 of 4 labelled hits (75%)"
    assert result.summary == plain
    result.cut_tie = CutTie(distance=2, count=3, exact=True, labels={"tumour": 1, "": 2})
    assert result.summary == plain  # the same label or unlabelled: nothing to unsettle
    # the shown tumour at distance 2 could have been a stroma tile: 2 against 2
    result.cut_tie = CutTie(distance=2, count=5, exact=False,
                            labels={"stroma": 2, "fat": 1, "tumour": 1, "": 1})
    assert result.summary == (f"{plain}; not settled: at least 3 more as near past the cut "
                              "carry other labels")
    assert f"vote: {result.summary}" in result.to_text().splitlines()
    result.cut_tie = CutTie(distance=2, count=1, exact=True, labels={"fat": 1})
    assert result.summary == plain  # one fat tile cannot reach three tumour ones
    result.cut_tie = CutTie(distance=2, count=1, exact=True, labels={"stroma": 1})
    assert result.summary.endswith("; not settled: 1 more as near past the cut carries another "
                                   "label")

    # ten tumour hits, four of them at the cut's distance: one stroma tile past it cannot
    # change the majority, so nothing is added
    ten = _hits([(1, "tumour", 0)] * 6 + [(3, "tumour", 0)] * 4)
    settled = QueryResult(hits=ten, vote=vote(ten), query_tiles=1,
                          cut_tie=CutTie(distance=3, count=6, exact=True,
                                         labels={"tumour": 5, "stroma": 1}))
    assert settled.summary == "tumour: 10 of 10 labelled hits (100%)"
    close = _hits([(1, "tumour", 0)] * 3 + [(1, "stroma", 0)] * 2 + [(3, "tumour", 0)] * 2)
    unsettled = QueryResult(hits=close, vote=vote(close), query_tiles=1,
                            cut_tie=CutTie(distance=3, count=4, exact=True,
                                           labels={"stroma": 4}))
    assert "not settled: 4 more as near past the cut" in unsettled.summary  # 3 against 4
