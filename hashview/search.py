"""Exact Hamming search over a library, with filters, per-source aggregation and a label vote.

Results are deterministic: hits are ordered by (Hamming distance, tile index). FAISS orders equal
distances arbitrarily and may cut a run of ties anywhere, so :func:`exact_topk` fetches one
extra neighbour and, when the k-th and (k+1)-th distances tie, re-fetches every tile within
that distance with a range search and re-ranks it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional, Sequence

import faiss
import numpy as np

from hashview.errors import LibraryError


@dataclass(frozen=True)
class Hit:
    rank: int  # 0-based position in the result list
    tile_index: int
    distance: int  # Hamming distance in bits
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


@dataclass(frozen=True)
class SourceSummary:
    source_id: int
    name: str
    n_hits: int
    best_distance: int
    best_rank: int


def _new_index(codes: np.ndarray, bits: int) -> faiss.IndexBinaryFlat:
    index = faiss.IndexBinaryFlat(bits)
    if len(codes):
        index.add(np.ascontiguousarray(codes, dtype=np.uint8))
    return index


def _sort_rows(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((I, D), axis=-1)  # by distance, then tile index
    return np.take_along_axis(D, order, -1), np.take_along_axis(I, order, -1)


def exact_topk(index: faiss.IndexBinaryFlat, queries: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``index`` ordered by (distance, id), exactly; returns int64 (Q, k') arrays.

    k' = min(k, index.ntotal).
    """
    n = index.ntotal
    k = min(k, n)
    if k == 0 or len(queries) == 0:
        empty = np.zeros((len(queries), 0), np.int64)
        return empty, empty.copy()
    if k == n:
        D, I = index.search(queries, n)
        return _sort_rows(D.astype(np.int64), I.astype(np.int64))
    D, I = index.search(queries, k + 1)
    D, I = _sort_rows(D.astype(np.int64), I.astype(np.int64))
    out_D, out_I = D[:, :k].copy(), I[:, :k].copy()
    # If distance k+1 is larger than distance k, every tile at distance <= d_k was returned and the
    # sort above is exact. Otherwise the tie run may continue past what FAISS returned.
    tied = np.flatnonzero(D[:, k] == D[:, k - 1])
    for radius in np.unique(D[tied, k - 1]):
        rows = tied[D[tied, k - 1] == radius]
        lims, rd, ri = index.range_search(np.ascontiguousarray(queries[rows]), int(radius) + 1)
        for j, r in enumerate(rows):  # range_search keeps distance < radius + 1
            d = rd[lims[j]:lims[j + 1]].astype(np.int64)
            i = ri[lims[j]:lims[j + 1]].astype(np.int64)
            order = np.lexsort((i, d))[:k]
            out_D[r], out_I[r] = d[order], i[order]
    return out_D, out_I


class Searcher:
    """An in-memory exact index of one library (codes, tile table and source names)."""

    def __init__(self, library):
        self.path = library.path
        self.bits = library.bits
        self.code_bytes = library.bits // 8
        self.model_name = library.model_name
        self.model_sha256 = library.model_sha256
        # the library's tiling, so queries are read at the same size and resolution
        self.tile_size = library.tile_size
        self.target_mpp = library.target_mpp
        self._codes = library.codes()
        table = library.tile_table()
        self._source_id = table["source_id"].astype(np.int64)
        self._x, self._y = table["x"].astype(np.int64), table["y"].astype(np.int64)
        self._size = table["size"].astype(np.int64)
        self._label_id = table["label_id"].astype(np.int64)
        records = library.sources()
        self._source_names = [s.name for s in records]
        self._source_paths = [s.path for s in records]
        self._labels = library.label_names()
        self._label_index = {name: i for i, name in enumerate(self._labels)}
        self._index = _new_index(self._codes, self.bits)
        self._subset: Optional[tuple[Any, np.ndarray, faiss.IndexBinaryFlat]] = None

    @property
    def n_tiles(self) -> int:
        return len(self._codes)

    def source_id_for_path(self, path: str) -> Optional[int]:
        """The id of the source stored under ``path`` (absolute), or None."""
        try:
            return self._source_paths.index(path)
        except ValueError:
            return None

    def search(self, query_codes: np.ndarray, k: int = 10,
               exclude_sources: Optional[Iterable[int]] = None,
               sources: Optional[Iterable[int]] = None,
               labels: Optional[Iterable[Optional[str]]] = None) -> list[list[Hit]]:
        """Exact top-k per query code, ties broken by ascending tile index.

        ``query_codes``: uint8 (Q, bits/8) or one code (bits/8,). Filters combine with AND:
        ``sources`` keeps only those source ids, ``exclude_sources`` drops those,
        ``labels`` keeps tiles whose label is in the set (None in the set = unlabelled tiles).
        Returns one list of hits per query (shorter than k when fewer tiles qualify).
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        queries = self._check_queries(query_codes)
        ids, index = self._candidates(exclude_sources, sources, labels)
        D, I = exact_topk(index, queries, int(k))
        if ids is not None:
            I = ids[I]
        return [self._hits(D[r], I[r]) for r in range(len(queries))]

    # ----------------------------------------------------------------- helpers
    def _check_queries(self, query_codes) -> np.ndarray:
        q = np.asarray(query_codes)
        if q.dtype != np.uint8:
            raise ValueError(f"query codes must be packed np.uint8, not {q.dtype}")
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise ValueError(f"query codes must have shape (n, {self.code_bytes}), not {q.shape}")
        if q.shape[1] != self.code_bytes:
            raise LibraryError(self.path, f"query codes are {q.shape[1] * 8}-bit but this "
                                          f"library holds {self.bits}-bit codes (model "
                                          f"'{self.model_name}'); encode the query with the "
                                          "library's model")
        return np.ascontiguousarray(q)

    def _candidates(self, exclude_sources, sources, labels):
        """(tile ids or None for all, index over them). Filtered indexes keep ascending tile
        order, so tie-breaking by position inside them is tie-breaking by tile index."""
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
        index = _new_index(self._codes[ids], self.bits)
        self._subset = (key, ids, index)
        return ids, index

    def _hits(self, distances: np.ndarray, tile_ids: np.ndarray) -> list[Hit]:
        sid, xs, ys = self._source_id[tile_ids], self._x[tile_ids], self._y[tile_ids]
        sizes, lids = self._size[tile_ids], self._label_id[tile_ids]
        return [Hit(rank=r, tile_index=int(t), distance=int(d), source_id=int(s),
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
    label), then to the label that occurs first.
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
    return Vote(best, counts[best], total, counts[best] / total)


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
