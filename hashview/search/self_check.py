"""How well a library's model tells the library's own labels apart: a check on the user's own
tissue, before they trust a vote.

A model's published numbers come from other labs' sets; on a pathologist's own slides they
may not hold (another stain, scanner or organ). A library with labelled tiles can say for
itself: each sampled labelled tile is searched as the app searches it, with every tile of its
own patient held out (its own source where no patient is recorded), so the answer has to come
from other patients, and the top-k vote is judged the way the results panel words it
(:mod:`hashview.search.result_summary`): the query's label, another label, or no answer (too
few labelled hits, or no majority). The code statistics say whether the model collapsed on
this tissue (a few codes holding most tiles).

A label with fewer than k tiles outside its largest patient cannot be judged this way (even a
perfect model could not fill a top-k vote with it): it is listed, not scored. Tiles the model
trained on (its card's record) are not queried. The numbers rest on the queries and patients
counted beside them; tiles of one patient are alike, so few patients mean a wide margin
whatever the number of queries. The last check is kept beside the library for its searches
(:mod:`hashview.search.check_record`); :mod:`hashview.search.model_comparison` runs it for
other models on the same tiles.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, Optional, Sequence

import numpy as np

from hashview.errors import printable
from hashview.progress import ProgressCallback, report
from hashview.search.result_summary import MIN_VOTE_LABELS
from hashview.search.searcher import Searcher, vote

DEFAULT_QUERIES = 1000
DEFAULT_K = 10
# The check run when indexing ends: fewer queries, so that it stays a few seconds beside a
# long indexing run (its margin of error is wider, and it says how many queries it rests on).
AFTER_INDEXING_QUERIES = 300
# Code statistics over at most this many tiles (a seeded sample past it).
STATS_MAX_TILES = 1_000_000
# Collapsed: the most common code holds more than this share of the tiles, or more than half
# the bits never change. (Healthy bundled models on whole libraries were measured well below
# it: docs/benchmarks.md, "Checking a library on its own labels".)
TOP_CODE_SHARE_MAX = 0.5
DEAD_BITS_FRACTION_MAX = 0.5
# Weak: the balanced vote covers less than this share of the way from chance to perfect
# (2 labels: below 0.67; 8 labels: below 0.42).
WEAK_GAIN = 1.0 / 3.0
# The balanced vote's interval: the patients (files) the queries came from resampled with
# replacement this many times, the central 95 % of the results. Tiles of one patient are
# alike, so this is wider than the sampling error of the queries when they come from few
# patients; it decides NEAR CHANCE (its lower end at or below chance).
RESAMPLES = 1000
RIGHT, WRONG, NO_ANSWER = "right", "wrong", "no answer"
COLLAPSED, NOT_JUDGED, NEAR_CHANCE, WEAK, FINE = ("collapsed", "not judged", "near chance",
                                                  "weak", "fine")
STATUSES = (COLLAPSED, NOT_JUDGED, NEAR_CHANCE, WEAK, FINE)
ADVICE = ("Compare the other models on these tiles (hashview check LIB.h5 --models all), or "
          "train one on your labelled patches (hashview train, or Search ▸ Train model)")


@dataclass(frozen=True)
class LabelCheck:
    label: str
    tiles: int  # labelled tiles in the library
    groups: int  # patients (or sources) holding them
    # its tiles outside the patient holding most of them: fewer than k and even a perfect
    # model cannot fill a top-k vote with the label, so it is not judged
    outside: int = 0
    queries: int = 0  # 0: not judged
    right: int = 0
    wrong: int = 0
    no_answer: int = 0
    voted_instead: str = ""  # the label its wrong votes named most often

    @property
    def recall(self) -> Optional[float]:
        return self.right / self.queries if self.queries else None


@dataclass(frozen=True)
class CodeCheck:
    tiles: int  # tiles the statistics were taken over
    distinct: int
    top_code_share: float  # share of those tiles holding the most common code
    dead_bits: int
    bits: int

    @property
    def collapsed(self) -> bool:
        return (self.top_code_share > TOP_CODE_SHARE_MAX
                or self.dead_bits > DEAD_BITS_FRACTION_MAX * self.bits)


@dataclass(frozen=True)
class LibraryCheck:
    library: str
    model: str
    n_tiles: int
    k: int
    held_out_by: str  # "patient" or "source"
    codes: CodeCheck
    labels: tuple[LabelCheck, ...]
    query_groups: int  # patients (sources) the queries came from
    # labelled tiles left out of the queries because the model trained on them (its card's
    # record); None: the model's card is not installed here, so they cannot be told apart
    trained_on: Optional[int] = 0
    # the library checked (its creation time and generation) and its model: a kept record of
    # the check holds for these only (hashview.search.check_record)
    generation: int = -1
    model_sha256: str = ""
    library_created: str = ""
    # the balanced vote's 95 % interval over resampled patients (None: not computed)
    interval: Optional[tuple[float, float]] = None

    @property
    def judged(self) -> tuple[LabelCheck, ...]:
        return tuple(label for label in self.labels if label.queries)

    @property
    def queries(self) -> int:
        return sum(label.queries for label in self.labels)

    @property
    def vote_accuracy(self) -> Optional[float]:
        """Share of the queries whose vote named their own label."""
        return sum(label.right for label in self.labels) / self.queries if self.queries else None

    @property
    def balanced_accuracy(self) -> Optional[float]:
        """Mean over the judged labels of the share of their queries voted right."""
        judged = self.judged
        return sum(label.recall for label in judged) / len(judged) if len(judged) > 1 else None

    @property
    def answered(self) -> Optional[float]:
        no_answer = sum(label.no_answer for label in self.labels)
        return 1.0 - no_answer / self.queries if self.queries else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["codes"]["collapsed"] = self.codes.collapsed
        out.update(status=self.status, queries=self.queries, vote_accuracy=self.vote_accuracy,
                   balanced_accuracy=self.balanced_accuracy, answered=self.answered)
        return out

    def lines(self) -> list[str]:
        """The report in words, its verdict first."""
        advice = ([ADVICE] if self.status in (COLLAPSED, NEAR_CHANCE, WEAK) else [])
        return [self.verdict(), *self._code_lines(), *self._label_lines(), *advice]

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`: what the verdict says, for code that acts on it."""
        if self.codes.collapsed:
            return COLLAPSED
        judged = self.judged
        if len(judged) < 2:
            return NOT_JUDGED
        chance = 1.0 / len(judged)
        if self.interval is not None:
            near = self.interval[0] <= chance
        else:  # the queries' own sampling error
            near = self.balanced_accuracy <= chance + 2.0 * math.sqrt(
                chance * (1.0 - chance) / self.queries)
        if near:
            return NEAR_CHANCE
        if self.balanced_accuracy < chance + WEAK_GAIN * (1.0 - chance):
            return WEAK
        return FINE

    @property
    def fine(self) -> bool:
        return self.status == FINE

    def verdict(self) -> str:
        status, c = self.status, self.codes
        if status == COLLAPSED:
            return (f"COLLAPSED: {self.model} gives this library's tiles {c.distinct} distinct "
                    f"codes, the most common held by {c.top_code_share:.0%} of them and "
                    f"{c.dead_bits} of {c.bits} bits never change: its hits are arbitrary "
                    "here")
        if status == NOT_JUDGED:
            return ("Not judged: it needs labelled tiles of at least two labels, each with at "
                    f"least {self.k} outside its largest {self.held_out_by}")
        n_labels = len(self.judged)
        groups = self._group_noun(self.query_groups)
        spread = ("" if self.interval is None else
                  f"; {self.interval[0]:.2f}-{self.interval[1]:.2f} with the {groups} "
                  "resampled")
        said = (f"balanced vote@{self.k} {self.balanced_accuracy:.2f} against chance "
                f"{1.0 / n_labels:.2f} over {n_labels} labels ({self.queries} queries from "
                f"{self.query_groups} {groups}, each held out{spread})")
        if status == NEAR_CHANCE:
            return f"NEAR CHANCE: {said}: do not trust its votes on this tissue"
        if status == WEAK:
            return f"WEAK: {said}: its votes are right little more often than chance here"
        return f"{self.model} on this library: {said}"

    def _group_noun(self, n: int) -> str:
        return self.held_out_by + ("s" if n != 1 else "")

    def _code_lines(self) -> list[str]:
        c = self.codes
        return [f"codes: {c.distinct} distinct over {c.tiles} tiles; the most common held by "
                f"{c.top_code_share:.1%}; {c.dead_bits} of {c.bits} bits never change"]

    def _label_lines(self) -> list[str]:
        lines = []
        if self.trained_on is None:
            lines.append(f"NOTE: {self.model}'s card is not installed here, so tiles it trained "
                         "on cannot be left out: they would score higher than new tissue")
        elif self.trained_on:
            lines.append(f"{self.trained_on} labelled tiles {self.model} trained on (its card's "
                         "record) are not queried")
        if self.queries:
            lines.append(f"vote@{self.k}: {self.vote_accuracy:.2f} of the queries right, "
                         f"{self.answered:.2f} answered (a vote needs {MIN_VOTE_LABELS} "
                         "labelled hits and a majority)")
        for label in self.labels:
            where = (f"{label.tiles} tiles from {label.groups} "
                     f"{self._group_noun(label.groups)}")
            if not label.queries:
                lines.append(f"  {printable(label.label)}: {where}; not judged "
                             f"({self._why_not_judged(label)})")
                continue
            lines.append(f"  {printable(label.label)}: {where}; {label.right} of "
                         f"{label.queries} voted right ({label.recall:.2f}), {label.wrong} "
                         f"wrong" + self._instead(label)
                         + f", {label.no_answer} no answer")
        return lines


    def _why_not_judged(self, label: LabelCheck) -> str:
        if label.groups < 2:
            return f"one {self.held_out_by} holds them all"
        if label.outside < self.k:
            return (f"{label.outside} outside its largest {self.held_out_by}: a top-{self.k} "
                    f"vote needs {self.k}; try a smaller -k")
        return f"{self.model} trained on all of them"

    @staticmethod
    def _instead(label: LabelCheck) -> str:
        if not label.voted_instead:
            return ""
        return f" ({'mostly ' if label.wrong > 1 else ''}{printable(label.voted_instead)})"


def code_check(codes: np.ndarray, bits: int, seed: int = 0) -> CodeCheck:
    """Distinct codes, the most common code's share and dead bits of packed codes (float
    descriptors by their signs), over a seeded sample past :data:`STATS_MAX_TILES` tiles."""
    from hashview.metrics import is_float_codes
    if is_float_codes(codes):
        from hashview.encode import pack_codes
        codes = pack_codes(codes)
    if len(codes) > STATS_MAX_TILES:
        rows = np.random.default_rng(seed).choice(len(codes), STATS_MAX_TILES, replace=False)
        codes = codes[np.sort(rows)]
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if not len(codes):
        return CodeCheck(0, 0, 0.0, 0, int(bits))
    _, counts = np.unique(codes, axis=0, return_counts=True)
    means = np.unpackbits(codes, axis=1)[:, :bits].mean(axis=0)
    return CodeCheck(len(codes), int(len(counts)), float(counts.max() / len(codes)),
                     int(((means == 0.0) | (means == 1.0)).sum()), int(bits))


def source_groups(sources) -> tuple[str, dict[int, tuple]]:
    """How tiles are held out ("patient" when any source records one) and each source's
    group key (its patient, else the source itself)."""
    by_patient = any(s.patient_id for s in sources)
    keys = {s.id: ("patient", s.patient_id) if by_patient and s.patient_id else ("source", s.id)
            for s in sources}
    return ("patient" if by_patient else "source"), keys


def label_spread(label_ids: np.ndarray, tile_group: Sequence) -> dict[int, tuple]:
    """Per label id: (groups holding it, its tiles outside the largest group, its tiles)."""
    labelled = np.flatnonzero(np.asarray(label_ids) >= 0)
    order = labelled[np.argsort(label_ids[labelled], kind="stable")]  # one pass, any label count
    ids, starts = np.unique(label_ids[order], return_index=True)
    spread = {}
    for lid, tiles in zip(ids, np.split(order, starts[1:])):
        counts = Counter(tile_group[t] for t in tiles)
        spread[int(lid)] = (len(counts), len(tiles) - max(counts.values()), tiles)
    return spread


def stratified_sample(per_label: dict[int, np.ndarray], total: int,
                      seed: int) -> dict[int, np.ndarray]:
    """Up to ``total`` tiles, the same number per label where they have them (seeded, sorted);
    with more labels than ``total``, one tile each of ``total`` labels drawn at random."""
    rng = np.random.default_rng(seed)
    if len(per_label) > int(total):
        drawn = rng.choice(sorted(per_label), int(total), replace=False)
        per_label = {int(lid): per_label[int(lid)] for lid in drawn}
    share = math.ceil(int(total) / max(1, len(per_label)))
    return {lid: np.sort(rng.choice(tiles, min(share, len(tiles)), replace=False))
            for lid, tiles in per_label.items()}


def _model_card(name: str, sha256: Optional[str]):
    """The installed card of the library's model (the same weights when both record a
    checksum), or None."""
    from hashview.models import list_models
    for card in list_models():
        if card.name == name and (not sha256 or not card.sha256 or card.sha256 == sha256):
            return card
    return None


def trained_sources(sources, card) -> Optional[set[int]]:
    """Ids of the sources whose file the model (or an ancestor) trained on: their path ends in
    a "DATA_ROOT/relative path" its card records, or in the relative path alone where that
    names a subfolder too (a copied or renamed data folder: "01_TUMOR/x.tif" is the same
    training tile whatever the folder above it; a bare "1.png" is not). None without a card."""
    if card is None:
        return None
    from hashview.models.lineage import trained_files
    files = set()
    for path in trained_files(card):
        relative = path.partition("/")[2]
        files.add(relative if "/" in relative else path)
    depths = {path.count("/") + 1 for path in files}
    seen = set()
    for source in sources:
        parts = Path(source.path).as_posix().split("/")
        if any("/".join(parts[-depth:]) in files for depth in depths):
            seen.add(source.id)
    return seen


def check_after_indexing(path, max_queries: int = AFTER_INDEXING_QUERIES
                         ) -> Optional[LibraryCheck]:
    """The check when indexing into ``path`` ends, or None when there is nothing to judge
    (fewer than two labels, or too few patients per label)."""
    from hashview.library import Library

    with Library.open(path, mode="r") as library:  # most libraries end here: no labels
        if len(library.label_names()) < 2:
            return None
        table, sources = library.tile_table(), library.sources()
    _, group_of = source_groups(sources)
    spread = label_spread(np.asarray(table["label_id"]),
                          [group_of[int(s)] for s in table["source_id"]])
    if sum(outside >= DEFAULT_K for _, outside, _ in spread.values()) < 2:
        return None
    result = check_library(path, max_queries=max_queries)
    return None if result.status == NOT_JUDGED else result


def _judge(hits, label: str) -> tuple[str, str]:
    """(right / wrong / no answer, the label voted)."""
    found = vote(hits)
    if found is None or found.total < MIN_VOTE_LABELS or found.tied_with:
        return NO_ANSWER, ""
    return (RIGHT if found.label == label else WRONG), found.label


def _search_held_out(searcher: Searcher, chosen: dict[int, np.ndarray], tile_group: Sequence,
                     group_of: dict[int, tuple], label_names: list, k: int,
                     progress: Optional[ProgressCallback]) -> tuple[dict, dict, dict]:
    """Search the ``chosen`` tiles (per label id), each group's together with that group's
    sources excluded; returns per label id the outcome counts and the labels voted instead,
    and per group the [right, queries] of each label id."""
    by_group: dict[tuple, list[int]] = defaultdict(list)
    for tiles in chosen.values():
        for tile in tiles:
            by_group[tile_group[tile]].append(int(tile))
    group_sources: dict[tuple, list[int]] = defaultdict(list)
    for source_id, key in group_of.items():
        group_sources[key].append(source_id)
    outcomes: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    instead: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_group: dict[tuple, dict[int, list[int]]] = {}  # group: label id: [right, queries]
    label_ids = searcher.tile_labels
    done, total = 0, sum(len(tiles) for tiles in by_group.values())
    for key in sorted(by_group, key=str):
        tiles = by_group[key]
        hits = searcher.search(searcher.codes[tiles], k, exclude_sources=group_sources[key])
        counts = per_group.setdefault(key, defaultdict(lambda: [0, 0]))
        for tile, row in zip(tiles, hits):
            lid = int(label_ids[tile])
            outcome, voted = _judge(row, label_names[lid])
            outcomes[lid][outcome] += 1
            counts[lid][0] += outcome == RIGHT
            counts[lid][1] += 1
            if outcome == WRONG:
                instead[lid][voted] += 1
        done += len(tiles)
        report(progress, "checking votes", done, total)
    return outcomes, instead, per_group


def resampled_interval(per_group: dict, seed: int = 0,
                       resamples: int = RESAMPLES) -> Optional[tuple[float, float]]:
    """The central 95 % of the balanced vote over the query groups resampled with replacement
    (a resample's balanced vote: over the labels it has queries of); None without two
    labels."""
    labels = sorted({lid for counts in per_group.values() for lid in counts})
    if len(labels) < 2:
        return None
    right = np.array([[counts[lid][0] if lid in counts else 0 for lid in labels]
                      for counts in per_group.values()], float)
    asked = np.array([[counts[lid][1] if lid in counts else 0 for lid in labels]
                      for counts in per_group.values()], float)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(right), np.full(len(right), 1.0 / len(right)), resamples)
    right_b, asked_b = draws @ right, draws @ asked  # (resamples, labels)
    enough = (asked_b > 0).sum(axis=1) >= 2
    if not enough.any():
        return None
    recall = np.divide(right_b, asked_b, out=np.full_like(right_b, np.nan), where=asked_b > 0)
    balanced = np.nanmean(recall[enough], axis=1)
    low, high = np.percentile(balanced, [2.5, 97.5])
    return float(low), float(high)


def check_library(path, k: int = DEFAULT_K, max_queries: int = DEFAULT_QUERIES, seed: int = 0,
                  progress: Optional[ProgressCallback] = None,
                  not_queried: Collection[str] = ()) -> LibraryCheck:
    """Search a seeded sample of the library's labelled tiles (up to ``max_queries``, the same
    number per label where they have them) with their patient held out, and judge the votes.
    ``not_queried``: fingerprints of sources whose tiles stay in the library but are not
    queried (a comparison leaves out what any compared model trained on)."""
    from hashview.library import Library

    if int(k) < 1 or int(max_queries) < 1:
        raise ValueError("k and the number of queries must be at least 1")
    with Library.open(path, mode="r") as library:
        searcher = Searcher(library, index="flat", use_sidecar=False)
        sources = library.sources()
        label_names = library.label_names()
        model = str(library.model_name)
        model_sha = library.model_sha256
        generation, created = int(library.generation), str(library.created or "")
    report(progress, "checking codes", 0, None)
    codes = code_check(searcher.codes, searcher.bits, seed)
    held_out_by, group_of = source_groups(sources)
    tile_group = [group_of[int(s)] for s in searcher.tile_sources]
    label_ids = searcher.tile_labels
    trained = trained_sources(sources, _model_card(model, model_sha))
    unseen = (np.ones(len(label_ids), bool) if not trained
              else ~np.isin(searcher.tile_sources, np.fromiter(trained, np.int64)))
    skipped = [s.id for s in sources if s.fingerprint in set(not_queried)]
    queryable = unseen & ~np.isin(searcher.tile_sources, np.asarray(skipped, np.int64))
    spread = label_spread(label_ids, tile_group)
    chosen = stratified_sample({lid: tiles[queryable[tiles]] for lid, (_, outside, tiles)
                                in spread.items() if outside >= k and queryable[tiles].any()},
                               max_queries, seed)
    outcomes, instead, per_group = _search_held_out(searcher, chosen, tile_group, group_of,
                                                    label_names, k, progress)
    labels = []
    for lid in sorted(spread, key=lambda i: label_names[i]):
        o, wrong = outcomes.get(lid, {}), instead.get(lid, {})
        most = min(wrong, key=lambda name: (-wrong[name], name)) if wrong else ""
        labels.append(LabelCheck(label_names[lid], len(spread[lid][2]),
                                 *spread[lid][:2], len(chosen.get(lid, ())),
                                 o.get(RIGHT, 0), o.get(WRONG, 0), o.get(NO_ANSWER, 0), most))
    trained_on = None if trained is None else int(np.sum(~unseen & (label_ids >= 0)))
    return LibraryCheck(str(Path(path)), model, searcher.n_tiles, int(k), held_out_by, codes,
                        tuple(labels), len(per_group), trained_on, generation, model_sha or "",
                        created, resampled_interval(per_group, seed))
