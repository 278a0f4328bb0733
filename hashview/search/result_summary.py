"""What a result may claim, in words: the vote with its support, ties, hits per source.

One wording for the app, the CLI and scripts, so that none of them says more than the hits
support: a vote resting on fewer than :data:`MIN_VOTE_LABELS` labelled hits is not called a
vote, a tie between labels is said rather than broken silently, and hits at equal distance
show as one rank group ("3=") with the rule that orders them. A cut at k inside such a group is
said by :class:`hashview.search.query.CutTie`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from hashview.errors import printable
from hashview.search.searcher import Hit, Vote, aggregate_by_source

# Fewer labelled hits than this and the labels are listed, not voted on: one labelled hit out of
# ten is an anecdote, not a majority.
MIN_VOTE_LABELS = 3
TIE_RULE = "equal distances are ordered by a fixed shuffle of the library's tiles, not by tissue"


def vote_headline(hits: Sequence[Hit], vote: Optional[Vote]) -> str:
    """One line on the labels of the shown ``hits`` and their ``vote`` (computed over them)."""
    shown = len(hits)
    if vote is None:
        return (f"No labelled hits among the {shown} shown" if shown else "No hits")
    if vote.total < MIN_VOTE_LABELS:
        counts: dict[str, int] = {}
        for hit in hits:
            if hit.label is not None:
                counts[hit.label] = counts.get(hit.label, 0) + 1
        listed = ", ".join(f"{printable(label)} ×{n}" if n > 1 else printable(label)
                           for label, n in counts.items())
        return (f"Too few labels to vote: {vote.total} of {shown} hits labelled ({listed})")
    if vote.tied_with:
        names = " and ".join(printable(n) for n in (vote.label, *vote.tied_with))
        return (f"No majority: {names}, {vote.count} each of {vote.total} labelled hits "
                f"({shown} shown)")
    unlabelled = shown - vote.total
    return (f"{printable(vote.label)}: {vote.count} of {vote.total} labelled hits "
            f"({vote.share:.0%})" + (f"; {unlabelled} of {shown} unlabelled" if unlabelled
                                     else ""))


def rank_marks(hits: Sequence[Hit]) -> list[str]:
    """Display ranks: 1-based, hits at the same distance share the first rank of their group
    with a "=" ("1", "2=", "2=", "4")."""
    marks: list[str] = []
    start = 0  # first position of the current run of equal distances
    for i, hit in enumerate(hits):
        if i and hit.distance != hits[i - 1].distance:
            start = i
        tied = i > start or (i + 1 < len(hits) and hits[i + 1].distance == hit.distance)
        marks.append(f"{start + 1}{'=' if tied else ''}")
    return marks


def tie_note(hits: Sequence[Hit]) -> Optional[str]:
    """A line when shown hits tie in distance (``None`` otherwise)."""
    tied = sum(1 for mark in rank_marks(hits) if mark.endswith("="))
    if not tied:
        return None
    return f"{tied} of {len(hits)} hits tie with another at the same distance; {TIE_RULE}"


def per_source_line(hits: Sequence[Hit], limit: int = 4) -> str:
    """Where the hits come from: "from 3 sources: a.svs 5, b.svs 3, c.png 2"."""
    groups = aggregate_by_source(list(hits))
    if not groups:
        return ""
    listed = ", ".join(f"{printable(g.name)} {g.n_hits}" for g in groups[:limit])
    more = f", {len(groups) - limit} more" if len(groups) > limit else ""
    noun = "source" if len(groups) == 1 else "sources"
    return f"from {len(groups)} {noun}: {listed}{more}"
