"""Refine a search by example: the bit votes, ``LibrarySession.refine`` and the CLI options."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import hashview
from conftest import KATHER, SLIDE
from hashview.cli import main
from hashview.search.refine import RefineError, consensus_code, refined_code, refined_search

TUMOUR = sorted((KATHER / "01_TUMOR").iterdir())
STROMA = sorted((KATHER / "02_STROMA").iterdir())


def code(bits: str) -> np.ndarray:
    """One packed code from a string of 0s and 1s (8 or 16 of them)."""
    return np.packbits(np.array([int(b) for b in bits], np.uint8))


def bits_of(packed: np.ndarray) -> str:
    return "".join(str(b) for b in np.unpackbits(packed))


# ------------------------------------------------------------------ the bit votes
def test_consensus_is_the_bitwise_majority():
    codes = np.stack([code("11110000"), code("11001100"), code("10101010")])
    assert bits_of(consensus_code(codes)) == "11101000"


def test_consensus_ties_go_to_the_first_code():
    query, other = code("11110000"), code("00111100")
    assert bits_of(consensus_code(np.stack([query, other]))) == "11110000"
    assert bits_of(consensus_code(np.stack([other, query]))) == "00111100"


def test_consensus_works_byte_by_byte_across_a_longer_code():
    codes = np.stack([code("1000000000000001"), code("1000000000000001"),
                      code("0000000100000000")])
    assert bits_of(consensus_code(codes)) == "1000000000000001"


def test_the_query_and_good_codes_vote_and_ties_go_to_the_good_examples():
    query = code("10100000")
    good = np.stack([code("11000000"), code("01100000")])
    assert bits_of(refined_code(query, good)) == "11100000"  # 2 of 3 on each of the first bits
    assert bits_of(refined_code(query, good[:1])) == "11000000"  # 1 against 1: the good one's
    split_good = np.stack([code("11000000"), code("00100000")])
    # bit 1: the query and one good say 0, one good says 1 -> 0; bit 2 likewise -> 1; bit 0:
    # 2 against 1 -> 1. Where the good examples split evenly, the query's bit decides.
    assert bits_of(refined_code(query, split_good)) == "10100000"


def test_a_region_query_gives_each_tile_a_vote():
    tiles = np.stack([code("11000000")] * 3 + [code("00000000")])
    good = code("00110000")[None, :]
    assert bits_of(refined_code(tiles, good)) == "11000000"  # 3 tiles outvote 1 tile + 1 good


def test_good_examples_alone_break_ties_by_their_own_consensus():
    good = np.stack([code("11110000"), code("00001111")])
    assert bits_of(refined_code((), good)) == "11110000"


def test_bad_examples_are_ignored_at_push_zero():
    query, good = code("10100000"), code("11000000")[None, :]
    bad = code("01000000")[None, :]
    assert bits_of(refined_code(query, good, bad, push=0)) == bits_of(refined_code(query, good))


def test_push_tips_only_split_bits_away_from_the_bad_examples():
    # query and good agree on bit 0 (1) and bits 3-7 (0) and split on bits 1 and 2
    query, good = code("10100000"), code("11000000")[None, :]
    assert bits_of(refined_code(query, good, push=0)) == "11000000"  # split: the good one's
    like_the_good = code("01000000")[None, :]  # bad: pushed back to the query's side
    assert bits_of(refined_code(query, good, like_the_good, push=0.5)) == "10100000"
    assert bits_of(refined_code(query, good, like_the_good, push=1)) == "10100000"
    # the shared bits stay, whatever the bad examples say (a tie at push 1 keeps the query's)
    for bad in ("11111111", "00000000"):
        refined = bits_of(refined_code(query, good, code(bad)[None, :], push=1))
        assert refined[0] + refined[3:] == "100000"
        assert refined[1:3] == ("00" if bad[1] == "1" else "11")


def test_a_push_above_one_flips_bits_every_example_shares():
    query = good = bad = code("10000000")
    assert bits_of(refined_code(query, good[None, :], bad[None, :], push=1)) == "10000000"
    assert bits_of(refined_code(query, good[None, :], bad[None, :], push=1.5)) == "01111111"


def test_bad_inputs_to_the_bit_votes_are_refused():
    with pytest.raises(ValueError):
        refined_code((), ())
    with pytest.raises(ValueError):
        refined_code(code("10000000"), np.zeros((1, 2), np.uint8))
    with pytest.raises(ValueError):
        refined_code(code("10000000"), push=-1)


# ------------------------------------------------------------------ LibrarySession.refine
@pytest.fixture(scope="module")
def session(slide_library):
    return hashview.open_library(slide_library[0], device="cpu")


def tile_id(session, path) -> int:
    """The library tile of a Kather patch (the patch finds itself at distance 0)."""
    hit = session.search(path, k=1).hits[0]
    assert hit.distance == 0 and hit.source_name == path.name
    return hit.tile_index


def test_refine_returns_hits_shaped_like_a_search(session):
    plain = session.search(TUMOUR[0], k=8)
    good = [h.tile_index for h in plain.hits if h.label == "01_TUMOR"]
    bad = [h.tile_index for h in plain.hits if h.label != "01_TUMOR"]
    result = session.refine(TUMOUR[0], good, bad, k=8)
    assert isinstance(result, type(plain)) and len(result.hits) == 8
    assert [h.rank for h in result.hits] == list(range(8))
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)
    assert result.vote is not None and result.query_tiles == 1
    assert (result.positive, result.negative) == (good, bad)
    assert result.to_dict()["refined"]["positive"] == good
    assert result.to_text().startswith(f"refined search: query + {len(good)} good examples, "
                                       f"{len(bad)} bad example")


def test_good_examples_bring_their_neighbours_up(session):
    example, other = tile_id(session, STROMA[1]), tile_id(session, STROMA[2])
    near = [h.tile_index for h in session.refine(None, [example], k=6).hits][1:]
    everything = session.n_tiles

    def worst_rank(result) -> int:
        rank = {h.tile_index: h.rank for h in result.hits}
        return max(rank[tile] for tile in near)

    before = worst_rank(session.search(TUMOUR[0], k=everything))
    assert before > 10  # the stroma example's neighbours are far from the tumour query
    assert worst_rank(session.refine(TUMOUR[0], [example, other], k=everything)) < 8
    query_itself = tile_id(session, TUMOUR[0])
    assert worst_rank(session.refine(TUMOUR[0], [example], [query_itself], k=everything)) < 8


def test_one_good_example_moves_the_query_to_it(session):
    # query + 1 good: every bit they disagree on is a tie, and ties go to the good example
    example = tile_id(session, STROMA[1])
    refined = session.refine(TUMOUR[0], [example], k=5)
    assert [h.tile_index for h in refined.hits] == \
        [h.tile_index for h in session.search(STROMA[1], k=5).hits]
    assert [h.tile_index for h in refined.hits] != \
        [h.tile_index for h in session.search(TUMOUR[0], k=5).hits]


def test_good_examples_alone_search_like_the_example_itself(session):
    example = tile_id(session, STROMA[1])
    alone = session.refine(None, [example], k=5)
    assert [h.tile_index for h in alone.hits] == \
        [h.tile_index for h in session.search(STROMA[1], k=5).hits]
    assert alone.query_tiles == 0 and alone.to_text().startswith("refined search: no query")


def test_a_refined_search_says_when_its_cut_falls_in_a_tie_as_a_search_does(session):
    example = tile_id(session, STROMA[1])
    cuts = []
    for k in range(1, 16):
        refined = session.refine(None, [example], k=k)
        plain = session.search(STROMA[1], k=k)
        assert refined.cut_tie == plain.cut_tie
        cuts.append(refined.cut_tie)
    assert any(cut is not None for cut in cuts)  # the library has ties at some cuts
    assert any(cut is None for cut in cuts)


def test_a_region_query_is_refined_tile_by_tile(session):
    side = session.load().tile_size
    result = session.refine((SLIDE, (1000, 800, 2 * side, side)), [0], k=3)
    assert result.query_tiles == 2 and len(result.hits) == 3
    assert "query of 2 tiles + 1 good example, 0 bad examples" in result.to_text()


@pytest.mark.parametrize("positive, negative, fragment", [
    ([10_000], [], "no tile 10000 in this library"),
    ([0], [-1], "no tile -1 in this library"),
    (["seven"], [], "is not a whole number"),
])
def test_an_unknown_tile_id_is_one_line(session, positive, negative, fragment):
    with pytest.raises(RefineError) as raised:
        session.refine(TUMOUR[0], positive, negative)
    message = str(raised.value)
    assert fragment in message and "\n" not in message
    assert isinstance(raised.value, hashview.HashViewError)


def test_no_query_and_no_good_example_or_a_push_above_one_is_refused(session):
    with pytest.raises(RefineError, match="needs a query or at least one good example"):
        session.refine(None, [], [0])
    with pytest.raises(RefineError, match="push must be from 0 to 1"):
        session.refine(TUMOUR[0], [0], push=1.5)


def test_a_float_code_library_cannot_be_refined():
    searcher = SimpleNamespace(code_kind="float", path="lgffem.h5", n_tiles=3,
                               codes=np.zeros((3, 16), np.float32))
    with pytest.raises(RefineError) as raised:
        refined_search(searcher, None, [], [0])
    assert str(raised.value) == ("lgffem.h5: refining by example needs binary codes; this "
                                 "library holds float descriptors")


# ------------------------------------------------------------------ the CLI
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_refines_with_the_tile_ids_a_search_printed(slide_library, capsys):
    path = slide_library[0]
    code, out, err = run(capsys, "search", path, TUMOUR[0], "--json", "-k", "6")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    good = [h["tile_index"] for h in hits if h["label"] == "01_TUMOR"]
    bad = [h["tile_index"] for h in hits if h["label"] != "01_TUMOR"]
    code, out, err = run(capsys, "search", path, TUMOUR[0], "--json", "-k", "6",
                         "--positive", ",".join(map(str, good)),
                         "--negative", str(bad[0]), "--negative", ",".join(map(str, bad[1:])))
    assert code == 0, err
    result = json.loads(out)
    assert result["refined"] == {"positive": good, "negative": bad, "push": 1.0}
    assert len(result["hits"]) == 6

    code, out, err = run(capsys, "search", path, TUMOUR[0], "-k", "4", "--positive",
                         str(good[0]))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "refined search: query + 1 good example, 0 bad examples"
    assert lines[-1].startswith("tile ids by rank: ") and len(lines[-1].split()) == 4 + 4


@pytest.mark.parametrize("ids, exit_code, fragment", [
    ("99999", 1, "no tile 99999 in this library"),
    ("3,x", 2, "tile ids are whole numbers separated by commas"),
])
def test_cli_bad_tile_ids_are_one_line(slide_library, capsys, ids, exit_code, fragment):
    code, out, err = run(capsys, "search", slide_library[0], TUMOUR[0], "--positive", ids)
    lines = err.strip().splitlines()
    assert code == exit_code and out == ""
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err


def test_cli_whole_slide_takes_no_examples(slide_library, capsys):
    code, _, err = run(capsys, "search", slide_library[0], SLIDE, "--whole-slide",
                       "--positive", "1")
    assert code == 2 and "--positive" in err
