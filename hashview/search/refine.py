"""Refine a search by example: one query code from the query and the hits a user marked.

After a search the user marks some hits good (what they were looking for) and some bad. The
refined query is the bitwise consensus of the query's code(s) and the good hits' codes, pushed
away from the bad hits' codes, and the library is searched again with that one code (the
approach of SMILY, Hegde et al. 2019, on packed binary codes).

Per bit, every code votes +1 for a 1 and -1 for a 0. The score of a bit is

    mean vote of (query codes + good codes)  -  push * mean vote of the bad codes

and the refined bit is 1 when the score is positive, 0 when negative. **Ties** (score 0) go to
the good examples' majority where they have one, else to the query's own bit (the consensus of
the query's codes alone; among those, the first code's bit). So one good example, the common
case in the app, moves the query to that example's code where they differ ("more like this"),
instead of changing nothing. Means, not sums: with sums,
ten bad examples would outvote a query and two good ones even on bits they all share; with means
and a ``push`` of at most 1, a bit on which the query and the good codes agree is never flipped
(where the bad codes agree too, ``push=1`` makes it a tie, kept by the query): only bits on
which the good side is split can be tipped away from the bad examples. ``push=0`` is the plain
majority. Above 1, bits shared by every example flip, which wrecks the code (most bits are
shared by a query and its near neighbours). The default, :data:`DEFAULT_PUSH`
= 1, the strongest push that never flips a shared bit, measured best (docs/benchmarks.md, "Refine
by example"): pushing from the bad examples helped more than the majority alone, for both models.

Binary codes only: float descriptors have no bits to vote on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from hashview.errors import HashViewError
from hashview.search.query import QueryResult, rank_codes

if TYPE_CHECKING:
    from hashview.encode import Encoder
    from hashview.search.searcher import Searcher

# Weight of the bad examples against the good ones (see the module docstring): at 1 and below a
# bit all examples share never flips; benchmarks/refine_feedback.py measured 1 best, 1.01 ruinous.
DEFAULT_PUSH = 1.0


class RefineError(HashViewError):
    """Examples that cannot refine a search: an unknown tile id, a float-code library, no
    examples at all."""


def _packed_rows(codes, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"{what} must be packed uint8 codes (N, bytes), got {codes.dtype} "
                         f"{codes.shape}")
    return codes


def bit_votes(codes) -> np.ndarray:
    """Mean vote per bit of packed codes: +1 where all are 1, -1 where all are 0; float
    ``(bits,)``. Bits are unpacked big-endian, as :func:`hashview.encode.pack_codes` packs."""
    codes = _packed_rows(codes, "codes")
    if len(codes) == 0:
        return np.zeros(codes.shape[1] * 8)
    return np.unpackbits(codes, axis=1).astype(np.float64).mean(axis=0) * 2.0 - 1.0


def _pack_signs(scores: np.ndarray, tie_bits: np.ndarray) -> np.ndarray:
    bits = np.where(scores > 0, 1, np.where(scores < 0, 0, tie_bits)).astype(np.uint8)
    return np.packbits(bits)


def consensus_code(codes) -> np.ndarray:
    """Bitwise majority of packed codes ``(N, bytes)`` -> one packed code ``(bytes,)``.

    A bit on which the codes are evenly split takes the first code's bit (pass the query's code
    first: ties go to the query)."""
    codes = _packed_rows(codes, "codes")
    if len(codes) == 0:
        raise ValueError("the consensus of no codes is undefined")
    first = np.unpackbits(codes[0])
    return _pack_signs(bit_votes(codes), first)


def refined_code(query_codes, good_codes=(), bad_codes=(), push: float = DEFAULT_PUSH
                 ) -> np.ndarray:
    """The refined query code (packed, ``(bytes,)``); see the module docstring for the rule.

    ``query_codes``: the query's code(s); a region query gives one code per tile and each tile
    votes like one example. May be empty ("good examples only"): the good codes' consensus
    then breaks ties. ``good_codes`` / ``bad_codes``: the marked hits' codes. ``push`` >= 0
    weighs the bad examples (0: they are ignored; above 1 only for measuring, see above).
    """
    if push < 0:
        raise ValueError(f"push must be >= 0, not {push}")
    width = next((np.asarray(c).shape[-1] for c in (query_codes, good_codes, bad_codes)
                  if np.asarray(c).size), None)
    if width is None:
        raise ValueError("a refined code needs the query's code or a good example")
    query, good, bad = (_packed_rows(c, what) if np.asarray(c).size
                        else np.zeros((0, width), np.uint8)
                        for c, what in ((query_codes, "query codes"), (good_codes, "good codes"),
                                        (bad_codes, "bad codes")))
    if len({query.shape[1], good.shape[1], bad.shape[1]}) > 1:
        raise ValueError("query, good and bad codes must have the same length")
    positive = np.concatenate([query, good])
    if len(positive) == 0:
        raise ValueError("a refined code needs the query's code or a good example")
    anchor = np.unpackbits(consensus_code(query if len(query) else good))
    if len(good) and len(query):  # ties: the good examples' majority, then the query
        good_votes = bit_votes(good)
        anchor = np.where(good_votes > 0, 1, np.where(good_votes < 0, 0, anchor))
    scores = bit_votes(positive)
    if len(bad) and push:
        scores = scores - push * bit_votes(bad)
    return _pack_signs(scores, anchor)


@dataclass
class RefinedResult(QueryResult):
    """A :class:`QueryResult` of a refined search, saying which examples refined it."""

    positive: list[int] = field(default_factory=list)  # tile ids marked good
    negative: list[int] = field(default_factory=list)  # tile ids marked bad
    push: float = DEFAULT_PUSH

    @property
    def refined_line(self) -> str:
        good, bad = len(self.positive), len(self.negative)
        query = {0: "no query", 1: "query"}.get(self.query_tiles,
                                                f"query of {self.query_tiles} tiles")
        line = (f"refined search: {query} + {good} good example{'s' * (good != 1)}, "
                f"{bad} bad example{'s' * (bad != 1)}")
        if bad:
            line += f" (push {self.push:g})" if self.push else " (ignored: push 0)"
        return line

    def to_dict(self) -> dict:
        return {**super().to_dict(), "refined": {"positive": list(self.positive),
                                                 "negative": list(self.negative),
                                                 "push": self.push}}

    def to_text(self) -> str:
        """The refined line, the table, and the hits' tile ids (what marking them takes)."""
        ids = " ".join(str(hit.tile_index) for hit in self.hits)
        return f"{self.refined_line}\n{super().to_text()}" + (
            f"\ntile ids by rank: {ids}" if ids else "")


def check_tile_ids(ids: Sequence[int], n_tiles: int, library: Optional[str]) -> list[int]:
    """``ids`` as ints, or ``RefineError`` (one line) for an id the library does not hold."""
    checked = []
    for tile_id in ids:
        if isinstance(tile_id, str) and tile_id.strip().isdigit():
            tile_id = int(tile_id)  # as typed in a text field
        if isinstance(tile_id, bool) or not isinstance(tile_id, (int, np.integer)):
            raise RefineError(library, f"tile id {tile_id!r} is not a whole number")
        if not 0 <= tile_id < n_tiles:
            held = f"ids 0-{n_tiles - 1}" if n_tiles else "none"
            raise RefineError(library, f"no tile {tile_id} in this library ({n_tiles} tiles: "
                                       f"{held})")
        checked.append(int(tile_id))
    return checked


def refined_search(searcher: "Searcher", encoder: "Encoder", images: Sequence, positive,
                   negative=(), push: Optional[float] = None, k: int = 10,
                   **filters) -> RefinedResult:
    """Encode the query ``images``, refine their codes with the library tiles ``positive``
    and ``negative`` (tile ids) and search once with the refined code: the steps behind
    :meth:`hashview.session.LibrarySession.refine`."""
    if searcher.code_kind != "binary":
        raise RefineError(searcher.path, f"refining by example needs binary codes; this "
                                         f"library holds {searcher.code_kind} descriptors")
    positive = check_tile_ids(positive, searcher.n_tiles, searcher.path)
    negative = check_tile_ids(negative, searcher.n_tiles, searcher.path)
    if not images and not positive:
        raise RefineError(None, "a refined search needs a query or at least one good example")
    push = DEFAULT_PUSH if push is None else float(push)
    if not 0 <= push <= 1:  # above 1 bits every example shares flip (see the module docstring)
        raise RefineError(None, f"push must be from 0 to 1, not {push:g}")
    codes = searcher.codes
    query_codes = encoder.encode(list(images)) if images else ()
    code = refined_code(query_codes, codes[positive], codes[negative], push=push)
    ranked = rank_codes(searcher, code[None, :], k, **filters)
    return RefinedResult(hits=ranked.hits, vote=ranked.vote, query_tiles=len(images),
                         per_tile=ranked.per_tile, found_by=ranked.found_by,
                         cut_tie=ranked.cut_tie, positive=positive, negative=negative,
                         push=push)
