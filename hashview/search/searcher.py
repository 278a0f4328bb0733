"""Search over a library, with filters, per-source aggregation and a label vote.

Results are deterministic: hits are ordered by distance, then by a fixed shuffle of the tile
indices (:func:`hashview.code_kinds.tie_keys`), however FAISS orders ties (see
:mod:`hashview.code_kinds`, which also holds what differs between the two kinds of code: index,
distance, query checks).

Binary libraries: Hamming distance, exact ``IndexBinaryFlat`` while the library is small enough
for an exact scan to stay interactive, an approximate index above that (see
:mod:`hashview.search.sidecar`: chosen automatically, built in the background, kept in a sidecar
file); until that index is ready, and for filtered searches, the search is exact. With an
approximate index the ordering rule holds among the tiles it visits (its lists or buckets).
Float libraries: L2-normalised descriptors in an exact ``IndexFlatIP``, distance = 1 - cosine
(a float), ties by that shuffle among the k+1 fetched.
"""

from __future__ import annotations

import os
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import faiss
import numpy as np

from hashview.code_kinds import code_kind
from hashview.code_kinds import exact_topk  # noqa: F401  (its old home; benchmarks import it)
from hashview.errors import LibraryError, SourceError
from hashview.library.fingerprint import fingerprint_file
from hashview.progress import ProgressCallback
from hashview.search import sidecar


# Searches of fewer query codes than this run FAISS on one thread: FAISS does not split a single
# query across threads, and on a busy 2-core machine waking the second OpenMP thread was measured
# to cost 60-400 ms per call against 1-2 ms for the search itself (docs/benchmarks.md, query).
SINGLE_THREAD_BELOW = 32


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP thread count for the calling thread, restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# :meth:`Searcher.tiles_within` scans the library once per distinct query code; past this many
# (a large region of varied tissue) a count of tied tiles stays "at least" what was fetched.
WITHIN_MAX_CODES = 64


def _query_threads(n_queries: int):
    """FAISS on one thread for fewer than :data:`SINGLE_THREAD_BELOW` query codes."""
    return faiss_threads(1) if n_queries < SINGLE_THREAD_BELOW else nullcontext()


@dataclass(frozen=True)
class Hit:
    rank: int  # 0-based position in the result list
    tile_index: int
    distance: float  # Hamming distance in bits (an int); 1 - cosine for float libraries
    source_id: int
    source_name: str
    source_path: str
    x: int  # level-0 pixels of the source
    y: int
    size: int
    label: Optional[str]


@dataclass(frozen=True)
class Vote:
    label: str
    count: int  # hits carrying the winning label
    total: int  # hits carrying any known label
    share: float  # count / total
    # other labels with as many hits as ``label`` (it won on rank, see :func:`vote`): a tie to
    # say, not to hide
    tied_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceSummary:
    source_id: int
    name: str
    n_hits: int
    best_distance: float
    best_rank: int


class Searcher:
    """An in-memory index of one library (codes, tile table and source names).

    ``index``: "auto" (exact, or the approximate index :func:`sidecar.choose_kind` picks
    for the library's size), "flat" (always exact) or "ivf" / "multihash". An approximate index
    is taken from the library's sidecar file when a valid one exists; otherwise searches are
    exact until :meth:`build_index` has run (the app runs it in the background).
    """

    def __init__(self, library, index: str = "auto", use_sidecar: bool = True):
        self.path = library.path
        self.bits = library.bits
        self.code_kind = getattr(library, "code_kind", "binary")
        self._kind = code_kind(self.code_kind)
        self.model_name = library.model_name
        self.model_sha256 = library.model_sha256
        # the library's tiling, so queries are read at the same size and resolution
        self.tile_size = library.tile_size
        self.target_mpp = library.target_mpp
        self._codes = self._kind.searchable(library.codes(), self.bits)
        table = library.tile_table()
        # stored widths, not int64: the tile table is most of the memory of a large library
        self._source_id = np.asarray(table["source_id"])
        self._x, self._y = np.asarray(table["x"]), np.asarray(table["y"])
        self._size = np.asarray(table["size"])
        self._label_id = np.asarray(table["label_id"])
        records = library.sources()
        self._source_names = [s.name for s in records]
        self._source_paths = [s.path for s in records]
        self._source_fingerprints = [s.fingerprint for s in records]
        self._labels = library.label_names()
        self._label_index = {name: i for i, name in enumerate(self._labels)}
        self._approximate: Optional[sidecar.BuiltIndex] = None
        self._identity: Optional[sidecar.Identity] = None
        self._subset: Optional[tuple[Any, np.ndarray, Any]] = None
        self.index_notes: list[str] = []  # one-line messages about the index (e.g. a bad sidecar)
        self.wanted_kind = self._wanted_kind(index)
        if use_sidecar and self.wanted_kind in sidecar.APPROXIMATE_KINDS:
            self._load_sidecar()
        # the index unfiltered searches use; the exact one is not kept beside an approximate one
        self._index = (self._approximate.index if self._approximate is not None
                       else self._kind.new_index(self._codes, self.bits))

    @property
    def codes(self) -> np.ndarray:
        """The library's codes as searched (read-only view): packed uint8, or normalised float32
        rows for a float library."""
        view = self._codes.view()
        view.flags.writeable = False
        return view

    @property
    def tile_sources(self) -> np.ndarray:
        """The source id of every tile, in tile order."""
        return self._source_id

    @property
    def tile_labels(self) -> np.ndarray:
        """The label id of every tile, in tile order (-1: unlabelled; names in library order)."""
        return self._label_id

    @property
    def n_tiles(self) -> int:
        return len(self._codes)

    @property
    def index_kind(self) -> str:
        """The index unfiltered searches use now: "flat", "flat-ip", "ivf" or "multihash"."""
        if self._approximate is not None:
            return self._approximate.kind
        return self._kind.exact_index

    @property
    def index_info(self) -> dict:
        """Kind in use, the kind wanted, and the approximate index's parameters and recall."""
        info = {"kind": self.index_kind, "wanted": self.wanted_kind, "exact":
                self._approximate is None, "notes": list(self.index_notes)}
        if self._approximate is not None:
            info.update(params=self._approximate.params, recall=self._approximate.recall)
        return info

    @property
    def sidecar_path(self):
        return sidecar.sidecar_path(self.path)

    def needs_index_build(self) -> bool:
        """True when an approximate index is wanted and none is in use yet."""
        return self.wanted_kind in sidecar.APPROXIMATE_KINDS and self._approximate is None

    def build_index(self, progress: ProgressCallback = None, save: bool = True,
                    kind: Optional[str] = None) -> sidecar.BuiltIndex:
        """Build the approximate index (``kind`` or the wanted one), use it from now on and,
        with ``save``, save it next to the library (atomically). Searches may run meanwhile
        (exact). The sidecar is only a cache: when it cannot be saved (read-only share, full
        disk) the index is still used and a note says why (:attr:`index_notes`)."""
        kind = kind or self.wanted_kind
        if not self._kind.approximate_indexes or kind not in sidecar.APPROXIMATE_KINDS:
            raise LibraryError(self.path, f"no approximate index for a {self.code_kind} "
                                          f"library of kind {kind!r}")
        if self.n_tiles == 0:
            raise LibraryError(self.path, "the library is empty; there is nothing to index")
        built = sidecar.build_binary_index(self._codes, self.bits, kind, progress=progress)
        self.wanted_kind = kind
        self._approximate = built
        self._index = built.index  # one assignment: a search running meanwhile stays exact
        if save:
            try:
                self.save_index()
            except LibraryError as exc:
                note = f"{exc}; the index is kept in memory only (built again next time)"
                built.notes.append(note)
                self.index_notes.append(note)
        return built

    def save_index(self) -> None:
        """Save the approximate index in use to the sidecar; ``LibraryError`` when it cannot."""
        if self._approximate is None:
            raise LibraryError(self.path, "there is no approximate index to save")
        sidecar.save_sidecar(self.sidecar_path, self._approximate, self.identity())

    def identity(self) -> sidecar.Identity:
        if self._identity is None:
            self._identity = sidecar.Identity.of(self.model_sha256, self.bits, self._codes)
        return self._identity

    def _wanted_kind(self, index: str) -> str:
        if index == "auto":
            return sidecar.choose_kind(self.n_tiles, self.bits, self.code_kind)
        if index not in sidecar.KINDS:
            raise ValueError(f"index must be auto or one of {', '.join(sidecar.KINDS)}, "
                             f"not {index!r}")
        if index != "flat" and not self._kind.approximate_indexes:
            raise LibraryError(self.path, f"a {index} index needs binary codes; this library "
                                          "holds float descriptors (searched exactly)")
        return index

    def _load_sidecar(self) -> None:
        try:
            built = sidecar.load_sidecar(self.sidecar_path, self.identity(), self._codes)
        except LibraryError as exc:  # a bad sidecar never stops a search: exact, then rebuild
            self.index_notes.append(f"{exc} (ignored; searching exactly until it is rebuilt)")
            return
        if built is not None and built.kind == self.wanted_kind:
            self.index_notes.extend(built.notes)
            self._approximate = built

    def source_ids_of_file(self, path: str | os.PathLike) -> set[int]:
        """Ids of the stored sources that are the file at ``path``: the same content
        (fingerprint), wherever the file now lives (moved, copied, renamed), or the same path.
        What "exclude the query's own slide" leaves out."""
        names = {os.path.abspath(path), os.path.realpath(path)}
        ids = {sid for sid, stored in enumerate(self._source_paths) if stored in names}
        try:
            fingerprint = fingerprint_file(path)
        except SourceError:  # unreadable now: its path is all there is to go by
            return ids
        return ids | {sid for sid, stored in enumerate(self._source_fingerprints)
                      if stored == fingerprint}

    def search(self, query_codes: np.ndarray, k: int = 10,
               exclude_sources: Optional[Iterable[int]] = None,
               sources: Optional[Iterable[int]] = None,
               labels: Optional[Iterable[Optional[str]]] = None) -> list[list[Hit]]:
        """Exact top-k per query code, ties broken by the tiles' fixed shuffle
        (:func:`hashview.code_kinds.tie_keys`), filtered or not.

        ``query_codes``: uint8 (Q, bits/8) or one code (bits/8,). Filters combine with AND:
        ``sources`` keeps only those source ids, ``exclude_sources`` drops those,
        ``labels`` keeps tiles whose label is in the set (None in the set = unlabelled tiles).
        Returns one list of hits per query (shorter than k when fewer tiles qualify).
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        queries = self._check_queries(query_codes)
        ids, index = self._candidates(exclude_sources, sources, labels)
        with _query_threads(len(queries)):
            D, I = self._kind.top_k(index, queries, int(k), ids)
        found = I >= 0  # an approximate index may return fewer than k
        if ids is not None:
            I = ids[np.where(found, I, 0)]
        return [self._hits(D[r][found[r]], I[r][found[r]]) for r in range(len(queries))]

    def tiles_within(self, query_codes: np.ndarray, distance: int,
                     exclude_sources: Optional[Iterable[int]] = None,
                     sources: Optional[Iterable[int]] = None,
                     labels: Optional[Iterable[Optional[str]]] = None) -> Optional[np.ndarray]:
        """Every library tile (sorted tile indices) within Hamming ``distance`` of any of the
        query codes, under the same filters as :meth:`search`; ``None`` when that cannot be
        told exactly (an approximate index in use, or float descriptors) or would cost too
        much (more than :data:`WITHIN_MAX_CODES` distinct query codes). One range search, a
        scan of the library, per distinct query code, each folded into a mask of the library
        at once: a region of many query tiles over a library of one repeated code (glass)
        never holds more than one code's matches in memory."""
        if not self.index_info["exact"] or self.code_kind != "binary":
            return None
        queries = np.unique(self._check_queries(query_codes), axis=0)
        if len(queries) > WITHIN_MAX_CODES:
            return None
        ids, index = self._candidates(exclude_sources, sources, labels)
        near = np.zeros(index.ntotal, bool)
        with _query_threads(1):
            for query in queries:
                _, _, rows = index.range_search(np.ascontiguousarray(query[None]),
                                                int(distance) + 1)
                near[rows] = True
        rows = np.flatnonzero(near)
        return rows if ids is None else ids[rows]

    def label_counts(self, tile_ids: Sequence[int]) -> dict[str, int]:
        """How many of ``tile_ids`` carry each label ("" for unlabelled)."""
        found = np.bincount(self._label_id[np.asarray(tile_ids, np.int64)] + 1,
                            minlength=len(self._labels) + 1)
        names = [""] + list(self._labels)
        return {names[i]: int(n) for i, n in enumerate(found) if n}

    # ----------------------------------------------------------------- helpers
    def _check_queries(self, query_codes) -> np.ndarray:
        """Packed codes (binary library) or descriptors (float library) as the 2-D array the
        index takes; a wrong dtype or shape is a ValueError, another model's codes a
        LibraryError naming the library."""
        q = self._kind.query_rows(query_codes, self.bits)
        wrong_width = self._kind.width_mismatch(q.shape[1], self.bits)
        if wrong_width:
            raise LibraryError(self.path, f"{wrong_width} (model '{self.model_name}'); encode "
                                          "the query with the library's model")
        return self._kind.searchable(q, self.bits)

    def _candidates(self, exclude_sources, sources, labels):
        """(tile ids or None for all, index over them). The ids go to the ranking, so ties in
        a filtered index are ordered by the tiles' keys as in the whole library."""
        key = tuple(None if s is None else frozenset(s) for s in (exclude_sources, sources, labels))
        if key == (None, None, None) or (key[1:] == (None, None) and not key[0]):
            return None, self._index
        if self._subset is not None and self._subset[0] == key:
            return self._subset[1], self._subset[2]
        exclude, keep_sources, keep_labels = key
        mask = np.ones(len(self._codes), bool)
        if keep_sources is not None:
            mask &= np.isin(self._source_id, np.fromiter(keep_sources, np.int64))
        if exclude:
            mask &= ~np.isin(self._source_id, np.fromiter(exclude, np.int64))
        if keep_labels is not None:
            wanted = [self._label_index[n] for n in keep_labels if n in self._label_index]
            wanted += [-1] if None in keep_labels else []
            mask &= np.isin(self._label_id, np.array(wanted, np.int64))
        ids = np.flatnonzero(mask).astype(np.int64)
        index = self._kind.new_index(self._codes[ids], self.bits)
        self._subset = (key, ids, index)
        return ids, index

    def hits_at(self, tile_ids: Sequence[int], distances: Sequence[float]) -> list[Hit]:
        """Hits for chosen library tiles (ranked in the order given), with their slide,
        position and label."""
        return self._hits(np.asarray(distances), np.asarray(tile_ids, np.int64))

    def _hits(self, distances: np.ndarray, tile_ids: np.ndarray) -> list[Hit]:
        sid, xs, ys = self._source_id[tile_ids], self._x[tile_ids], self._y[tile_ids]
        sizes, lids = self._size[tile_ids], self._label_id[tile_ids]
        return [Hit(rank=r, tile_index=int(t), distance=self._kind.as_distance(d), source_id=int(s),
                    source_name=self._source_names[s], source_path=self._source_paths[s],
                    x=int(x), y=int(y), size=int(z), label=self._labels[l] if l >= 0 else None)
                for r, (t, d, s, x, y, z, l) in enumerate(
                    zip(tile_ids, distances, sid, xs, ys, sizes, lids))]


def _flatten(hits: Sequence[Hit] | Sequence[Sequence[Hit]]) -> list[Hit]:
    """Accept one query's hits or a list of per-query lists (e.g. all tiles of a query slide)."""
    flat: list[Hit] = []
    for item in hits:
        if isinstance(item, Hit):
            flat.append(item)
        else:
            flat.extend(item)
    return flat


def vote(hits: Sequence[Hit] | Sequence[Sequence[Hit]]) -> Optional[Vote]:
    """Majority label among the hits; hits without a label are ignored; None if none has one.

    Ties in count go to the label whose hits have the lowest summed rank (the better-ranked
    label), then to the label that occurs first; the labels it tied with are in ``tied_with``.
    """
    counts: dict[str, int] = defaultdict(int)
    rank_sums: dict[str, int] = defaultdict(int)
    first: dict[str, int] = {}
    for position, hit in enumerate(_flatten(hits)):
        if hit.label is None:
            continue
        counts[hit.label] += 1
        rank_sums[hit.label] += hit.rank
        first.setdefault(hit.label, position)
    if not counts:
        return None
    best = min(counts, key=lambda name: (-counts[name], rank_sums[name], first[name]))
    total = sum(counts.values())
    tied = tuple(sorted((name for name in counts if name != best and counts[name] == counts[best]),
                        key=lambda name: (rank_sums[name], first[name])))
    return Vote(best, counts[best], total, counts[best] / total, tied)


def aggregate_by_source(hits: Sequence[Hit] | Sequence[Sequence[Hit]]) -> list[SourceSummary]:
    """Hits grouped per source: most hits first, then best distance, best rank, source id."""
    groups: dict[int, list[Hit]] = defaultdict(list)
    for hit in _flatten(hits):
        groups[hit.source_id].append(hit)
    summaries = [SourceSummary(source_id=sid, name=group[0].source_name, n_hits=len(group),
                               best_distance=min(h.distance for h in group),
                               best_rank=min(h.rank for h in group))
                 for sid, group in groups.items()]
    summaries.sort(key=lambda s: (-s.n_hits, s.best_distance, s.best_rank, s.source_id))
    return summaries


def hits_to_dict(hits: Hit | Sequence[Hit] | Sequence[Sequence[Hit]]) -> Any:
    """JSON-ready form: a Hit becomes a dict; lists (and lists of lists) keep their nesting."""
    if isinstance(hits, Hit):
        return asdict(hits)
    return [hits_to_dict(item) for item in hits]
