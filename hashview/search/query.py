"""Turn query tiles into hits from a library: the steps behind
:meth:`hashview.session.LibrarySession.search` (which ``hashview search``, the app and scripts
use).

A region larger than one library tile is cut into library-sized tiles; each tile is searched
and the hits are merged: every library tile keeps its best distance over the query tiles, ties
ordered by the tiles' fixed shuffle (:func:`hashview.code_kinds.tie_keys`). The vote counts the
merged hits that are shown, nothing else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
from PIL import Image

from hashview.code_kinds import kind_of_distance, tie_keys
from hashview.encode import Encoder
from hashview.errors import SourceError, printable
from hashview.search.result_summary import per_source_line, rank_marks, tie_note, vote_headline
from hashview.search.searcher import Hit, Searcher, Vote, vote
from hashview.slides import Source
from hashview.tiling import Tile, TilingParams, plan_geometry, read_tile

if TYPE_CHECKING:
    from hashview.library import ModelInfo
    from hashview.models import LoadedModel

# A region more than this many library tiles wide or high is refused: it would take minutes on
# a CPU.
MAX_REGION_TILES = 64


@dataclass
class CutTie:
    """Tiles past the shown hits at the same distance as the last shown one: the cut fell
    inside a run of equal distances, so the tie order (a fixed shuffle of the tiles, not
    tissue) chose which of the run are shown (and voted on). ``count`` of them, exactly when
    ``exact`` (the fetch held the whole run, or an exact index counted it: :func:`rank_codes`),
    else at least that many (an approximate index); ``labels``: their label counts ("" for
    unlabelled)."""

    distance: float  # an int for binary codes (bits)
    count: int
    exact: bool
    labels: dict[str, int]

    @classmethod
    def past(cls, shown: Sequence[Hit], rest: Sequence[Hit], exact: bool) -> "CutTie | None":
        """From the ``shown`` hits and the ``rest`` fetched after them, in order; ``exact``:
        the fetch held every tile at the last shown distance."""
        if not shown or not rest:
            return None
        last = shown[-1].distance
        tied = [hit for hit in rest if hit.distance == last]
        if not tied:
            return None
        return cls(last, len(tied), exact, dict(Counter(hit.label or "" for hit in tied)))

    def could_change(self, shown: Sequence[Hit], winner: str) -> bool:
        """Whether another choice among the equally near tiles could give another label as
        many of the ``shown`` hits as the vote's ``winner`` has: shown hits at the cut's
        distance swapped, winner's first, for tiles of that label from past the cut."""
        counts = Counter(hit.label for hit in shown if hit.label)
        at_cut = Counter(hit.label or "" for hit in shown if hit.distance == self.distance)
        in_group = sum(at_cut.values())
        for label, past in self.labels.items():
            if not label or label == winner:
                continue
            swaps = min(past, in_group - at_cut[label])
            lost = min(swaps, at_cut[winner])
            if counts[label] + swaps >= counts[winner] - lost:
                return True
        return False

    def describe(self, shown: int) -> str:
        """One line: how many more tiles tie at the cut, with what labels."""
        distance = kind_of_distance(self.distance).format_distance(self.distance)
        listed = ", ".join(f"{printable(label) if label else 'unlabelled'} {n}"
                           for label, n in sorted(self.labels.items(),
                                                  key=lambda kv: (-kv[1], kv[0])))
        amount = str(self.count) if self.exact else f"at least {self.count}"
        return (f"{amount} more tiles past the {shown} shown are as near as the last "
                f"({distance}): {listed}; the tie order chose which are shown")


@dataclass
class QueryResult:
    hits: list[Hit]
    vote: Optional[Vote]
    query_tiles: int
    per_tile: list[list[Hit]] = field(default_factory=list)
    found_by: list[int] = field(default_factory=list)  # per hit: the query tile that found it
    # the tiles past the k shown at the last shown hit's distance (see CutTie): the tie order
    # decided which of that group are shown
    cut_tie: Optional[CutTie] = None
    # what :class:`hashview.session.LibrarySession` adds: the tiles as encoded, the files of a
    # query list that could not be read, and the seconds the search took
    query_images: list = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # the library's kept check when it found the model serving its labels badly
    # (hashview.search.check_record.caution): a vote is then said with it
    caution: Optional[str] = None

    @property
    def summary(self) -> str:
        """The vote in words, with its support
        (:func:`hashview.search.result_summary.vote_headline`), and a warning when tiles as
        near as the last shown hit, past the cut, carry other labels: then the tie order, not
        tissue, settled part of the vote. A vote carries the library's :attr:`caution` when
        its kept check found the model serving the library's labels badly."""
        headline = vote_headline(self.hits, self.vote)
        if self.vote is not None and self.caution:
            headline += f"; caution: {self.caution}"
        cut = self.cut_tie
        if self.vote is None or cut is None or not cut.could_change(self.hits, self.vote.label):
            return headline
        others = sum(n for label, n in cut.labels.items() if label and label != self.vote.label)
        amount = f"{'' if cut.exact else 'at least '}{others} more as near"
        return (f"{headline}; not settled: {amount} past the cut "
                f"{'carries another label' if others == 1 else 'carry other labels'}")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        from hashview.search import aggregate_by_source, hits_to_dict

        return {
            "query_tiles": self.query_tiles,
            "vote": None if self.vote is None else asdict(self.vote),
            "summary": self.summary,
            "caution": self.caution,
            "hits": hits_to_dict(self.hits),
            "display_ranks": rank_marks(self.hits),
            "per_source": [asdict(s) for s in aggregate_by_source(self.hits)],
            "tied_past_shown": None if self.cut_tie is None else asdict(self.cut_tie),
        }

    def to_text(self) -> str:
        """A plain table for the terminal; ranks of hits at equal distance carry a "="."""
        lines = [f"{'rank':>4} {'dist':>6}  {'label':<12} {'x':>7} {'y':>7} {'size':>5}  source"]
        for mark, hit in zip(rank_marks(self.hits), self.hits):
            dist = kind_of_distance(hit.distance).format_distance(hit.distance)
            # Labels and names come from the indexed files: escaped, so they stay on their line.
            lines.append(f"{mark:>4} {dist:>6}  {printable(hit.label or '-'):<12} "
                         f"{hit.x:>7} {hit.y:>7} {hit.size:>5}  {printable(hit.source_name)}")
        if not self.hits:
            lines.append("  (no hits: the library is empty or the filters exclude every tile)")
            return "\n".join(lines)
        lines.append(f"vote: {self.summary}")
        if len({hit.source_id for hit in self.hits}) > 1:
            lines.append(per_source_line(self.hits))
        note = tie_note(self.hits)
        if note:
            lines.append(f"ties: {note}")
        if self.cut_tie is not None:
            lines.append(f"cut: {self.cut_tie.describe(len(self.hits))}")
        return "\n".join(lines)


def load_library_model(library_path: str | Path, stored: "ModelInfo",
                       model: "Optional[str | Path | LoadedModel]" = None) -> "LoadedModel":
    """The model that encodes queries for a library whose codes come from ``stored``.

    ``model`` (a name or path the user gave, or a model already loaded) or else the library's
    own model, which is looked up by name among the installed models only: a library may come
    from anyone, and its ``model_name`` must not make HashView load whatever file it points at.
    Either must have the library's weights (sha256) and bits, or ``LibraryError`` says why.
    """
    from hashview.errors import LibraryError, ModelError, printable
    from hashview.library import ModelInfo
    from hashview.models.store import (LoadedModel, is_plain_model_name, load_installed_model,
                                       load_model)

    if isinstance(model, LoadedModel):
        loaded = model
    elif model:
        loaded = load_model(model)
    elif not is_plain_model_name(stored.name):
        raise LibraryError(library_path, f"its model name {printable(repr(stored.name))[:120]} "
                                         "is not a model name (it is looked up among installed "
                                         "models only); give the model to use explicitly")
    else:
        try:
            loaded = load_installed_model(stored.name)
        except ModelError as e:
            if e.path is not None:  # an installed model file that is broken: name that file
                raise
            raise LibraryError(library_path, f"its model {stored.name} is not installed here: "
                                             "install that model's file or training folder "
                                             "(Search ▸ Install model… in the app, hashview "
                                             "models --install PATH) or give it with --model "
                                             "PATH") from None
    other = ModelInfo.coerce(loaded.card)
    if (other.sha256, other.bits) != (stored.sha256, stored.bits):
        raise LibraryError(library_path, f"made with {stored.describe()}; cannot search it "
                                         f"with {other.describe()}")
    return loaded


def build_library_index(library_path: str | Path, kind: str = "auto",
                        progress=None) -> dict:
    """Build and save the approximate index of a library (``kind`` "auto": only when the
    library is large enough to want one). Returns what was done, JSON-ready; ``LibraryError``
    when the index cannot be saved (its whole point here)."""
    from hashview.library import Library
    from hashview.search import sidecar

    with Library.open(library_path, mode="r") as library:
        searcher = Searcher(library, index=kind, use_sidecar=False)
    summary = {"library": str(library_path), "tiles": searcher.n_tiles, "kind": "flat",
               "sidecar": None}
    if searcher.wanted_kind == "flat":
        summary["message"] = "exact search is fast enough at this size; no index was built"
        return summary
    # a sidecar that cannot be saved is refused before the build, not after minutes of it
    sidecar.check_sidecar_writable(searcher.sidecar_path)
    built = searcher.build_index(progress=progress, save=False)
    searcher.save_index()
    summary.update(kind=built.kind, params=built.params, recall=built.recall,
                   seconds=round(built.seconds, 3), sidecar=str(searcher.sidecar_path))
    return summary


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` in level-0 pixels -> a tuple; a clear error otherwise."""
    try:
        x, y, w, h = (int(float(v)) for v in text.split(","))
    except ValueError:
        raise ValueError(f"region must be x,y,w,h in level-0 pixels, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"region width and height must be positive, got {text!r}")
    return x, y, w, h


def parse_image_or_region(spec: str) -> "str | tuple[str, tuple[int, int, int, int]]":
    """``SLIDE@x,y,w,h`` -> ``(SLIDE, (x, y, w, h))``; anything else (an image path) as given.
    A file that exists under the whole name is that file, "@" or not; ``ValueError`` for a
    region that does not parse."""
    path, at, region_text = str(spec).rpartition("@")
    if at and not Path(spec).exists():
        return path, parse_region(region_text)
    return spec


def region_tiles(source: Source, region: tuple[int, int, int, int],
                 params: TilingParams, input_size: Optional[int] = None) -> list[Image.Image]:
    """Read a level-0 region as library-sized tiles at the library's resolution.

    A region no bigger than one tile (in either direction) is read as one tile centred on the
    region, so a right-click anywhere gives the tile under the cursor. With ``input_size`` (the
    encoder's) tiles are read exactly as indexing reads them (:func:`hashview.tiling.read_tile`)
    and come back at that size.
    """
    x, y, w, h = region
    width, height = source.dimensions
    if x < 0 or y < 0 or x >= width or y >= height:
        raise SourceError(source.path, f"region {x},{y},{w},{h} lies outside the slide "
                                       f"({width}x{height})")
    geometry = plan_geometry(source, params, input_size)
    side = geometry.tile_level0
    cols, rows = max(1, round(w / side)), max(1, round(h / side))
    if cols * rows > MAX_REGION_TILES:
        raise SourceError(source.path, f"region {w}x{h} px spans {cols * rows} tiles; "
                                       f"the limit is {MAX_REGION_TILES}")
    # centre the grid of tiles on the region, then keep it inside the slide
    x0 = x + (w - cols * side) // 2
    y0 = y + (h - rows * side) // 2
    x0 = min(max(0, x0), max(0, width - cols * side))
    y0 = min(max(0, y0), max(0, height - rows * side))
    return [read_tile(source, Tile(x0 + c * side, y0 + r * side, side), geometry)
            for r in range(rows) for c in range(cols)]


def _whole_run(searcher: Searcher, codes, shown: Sequence[Hit], cut: CutTie,
               filters: dict) -> CutTie:
    """``cut`` with every tile of its run counted, when the index can tell exactly: all tiles
    within the cut's distance of any query tile that are not shown (those nearer than the cut
    are all shown). Otherwise ``cut`` as it is ("at least")."""
    within = searcher.tiles_within(codes, int(cut.distance), **filters)
    if within is None:
        return cut
    tied = np.setdiff1d(within, np.fromiter((hit.tile_index for hit in shown), np.int64))
    return CutTie(cut.distance, len(tied), True, searcher.label_counts(tied))


def fetch_count(k: int) -> int:
    """How many hits a search for ``k`` fetches per query tile: twice k, to see whether the
    k-th hit's distance goes on past the cut (a tile past the k of one query tile is never in
    the merged top k, so the shown hits are the same as with k). A run that goes on past the
    fetch is then counted whole by one range search, where the index is exact."""
    return 2 * k


def search_images(searcher: Searcher, encoder: Encoder, images: Sequence[Image.Image],
                  k: int = 10, **filters) -> QueryResult:
    """Search the library for each image and merge the hits (see the module docstring)."""
    return rank_codes(searcher, encoder.encode(list(images)), k, **filters)


def rank_codes(searcher: Searcher, codes, k: int = 10, **filters) -> QueryResult:
    """The k best library tiles over the query ``codes`` (one per query tile, merged), with
    the vote over them and the tiles tied at the cut (:class:`CutTie`: every one of them with
    an exact index, at least those fetched with an approximate one)."""
    fetched = searcher.search(codes, k=fetch_count(k), **filters)
    best: dict[int, tuple[Hit, int]] = {}  # tile index -> (best hit, query tile it came from)
    for query_tile, hits in enumerate(fetched):
        for hit in hits:
            kept = best.get(hit.tile_index)
            if kept is None or hit.distance < kept[0].distance:
                best[hit.tile_index] = (hit, query_tile)
    pairs = list(best.values())
    keys = tie_keys([hit.tile_index for hit, _ in pairs]).tolist()
    ranked = [pairs[i] for i in sorted(range(len(pairs)),
                                       key=lambda i: (pairs[i][0].distance, keys[i]))]
    merged = [replace(hit, rank=rank) for rank, (hit, _) in enumerate(ranked[:k])]
    found_by = [query_tile for _, query_tile in ranked[:k]]
    last = merged[-1].distance if merged else None
    # exact when no query tile's fetch was cut inside that distance and the index is exact (an
    # approximate one may miss tiles of the run)
    exact = searcher.index_info["exact"] and all(
        len(hits) < fetch_count(k) or hits[-1].distance > last for hits in fetched)
    cut = CutTie.past(merged, [hit for hit, _ in ranked[k:]], exact)
    if cut is not None and not cut.exact:  # the run goes on past the fetch: count all of it
        cut = _whole_run(searcher, codes, merged, cut, filters)
    # the vote counts the hits that are shown, so that what is said and what is seen agree
    return QueryResult(hits=merged, vote=vote(merged), query_tiles=len(fetched),
                       per_tile=[hits[:k] for hits in fetched], found_by=found_by, cut_tie=cut)
