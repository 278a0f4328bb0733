"""Retrieval metrics for packed binary codes and float descriptors (numpy only; no Qt, no torch).

Conventions (shared by every function here, see docs of each for details):

- Codes are packed uint8 rows (``hashview.encode.pack_codes``); distances are Hamming distances.
  Float descriptors (float32 ``(N, dim)``, L2-normalised, from a ``code_kind="float"`` model)
  are ranked by cosine distance ``1 - <q, d>`` instead (:func:`cosine_ranking`);
  :func:`evaluate_codes` picks the ranking from the array's dtype. Radius look-up is a Hamming
  notion and is not reported for float descriptors.
- **Ranking**: each query ranks the whole database by a *stable* sort on (distance,
  database index). Ties are therefore broken deterministically by database order, so results are
  reproducible; :func:`tie_averaged_average_precision` gives the tie-free expectation and
  :func:`tie_stats` measures how much ties matter.
- **Relevance**: a database item is relevant to a query iff its label equals the query's label.
  ``relevance`` arguments are boolean ``(Q, N)`` matrices in *ranked* order (column r = rank r+1),
  as built by :func:`relevance_matrix`.
- **AP** follows HATDH Eq. 22, AP = (1/N_p) sum_l P@l * S_l over the full ranking (``k=None``).
  A query with no relevant item in the database has AP 0.
- **AP@k** sums over the first k ranks only. ``normalise="retrieved"`` divides by the number of
  relevant items *within the top k* (the usual DPSH/HashNet evaluation code; AP@k = 0 when none
  is retrieved); ``normalise="min"`` divides by min(k, N_p), the relevant items one *could* have
  retrieved (never larger than 1, penalises missing relevant items). With ``k=None`` (or k >= N)
  both equal Eq. 22.
- A cutoff k larger than the database is capped at N (everything is retrieved).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from hashview.code_kinds import FLOAT, kind_of_encoded

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024  # working memory per query chunk in hamming_ranking
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# ---------------------------------------------------------------- distances and ranking

def _as_rows(values, dtype, what: str) -> np.ndarray:
    """``values`` as a contiguous 2-D array of ``dtype`` (one row per item)."""
    values = np.asarray(values, dtype=dtype)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise ValueError(f"expected {what}, got shape {values.shape}")
    return np.ascontiguousarray(values)


def _as_codes(codes) -> np.ndarray:
    return _as_rows(codes, np.uint8, "packed codes (N, bytes)")


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT8[x]  # uint8 only (pairwise_hamming views as uint64 only with bitwise_count)


def pairwise_hamming(query_codes, db_codes) -> np.ndarray:
    """``(Q, N)`` int16 Hamming distances between packed codes (dense, exact)."""
    q, d = _as_codes(query_codes), _as_codes(db_codes)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"code lengths differ: {q.shape[1]} vs {d.shape[1]} bytes")
    if q.shape[1] % 8 == 0 and hasattr(np, "bitwise_count"):
        q, d = q.view(np.uint64), d.view(np.uint64)  # 8x fewer XORs; popcount is order-free
    xor = np.bitwise_xor(q[:, None, :], d[None, :, :])
    return _popcount(xor).sum(axis=-1, dtype=np.int16)


def query_chunk_size(n_db: int, n_bytes: int, budget: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many queries to rank at once so that one chunk uses about ``budget`` bytes."""
    per_query = max(1, n_db) * (max(1, n_bytes) + 8 + 2 + 8)  # xor, order, dists, sort scratch
    return max(1, int(budget // per_query))


def hamming_ranking(query_codes, db_codes, chunk_size: Optional[int] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Rank the database for every query: ``(order, distances)``, both ``(Q, N)``.

    ``order[q, r]`` is the database index at rank r+1 (stable sort by distance, then index);
    ``distances[q, r]`` is its Hamming distance (so each row of ``distances`` is non-decreasing).
    Queries are processed ``chunk_size`` at a time (default: about 64 MiB of scratch per chunk).
    """
    q, d = _as_codes(query_codes), _as_codes(db_codes)
    n_q, n_db = q.shape[0], d.shape[0]
    chunk = chunk_size or query_chunk_size(n_db, d.shape[1])
    order = np.empty((n_q, n_db), dtype=np.int64)
    distances = np.empty((n_q, n_db), dtype=np.int16)
    for start in range(0, n_q, chunk):
        block = pairwise_hamming(q[start:start + chunk], d)
        ranked = np.argsort(block, axis=1, kind="stable")
        order[start:start + chunk] = ranked
        distances[start:start + chunk] = np.take_along_axis(block, ranked, axis=1)
    return order, distances


def _as_descriptors(descriptors) -> np.ndarray:
    return _as_rows(descriptors, np.float32, "float descriptors (N, dim)")


def is_float_codes(codes) -> bool:
    """Whether ``codes`` are float descriptors (cosine ranking) rather than packed bits."""
    return kind_of_encoded(codes) is FLOAT


def cosine_ranking(query_descriptors, db_descriptors, chunk_size: Optional[int] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hamming_ranking` for L2-normalised float descriptors: ``(order, distances)`` with
    ``distances = 1 - cosine`` (float32, in [0, 2]), stable-sorted by (distance, index)."""
    q, d = _as_descriptors(query_descriptors), _as_descriptors(db_descriptors)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"descriptor lengths differ: {q.shape[1]} vs {d.shape[1]}")
    n_q, n_db = q.shape[0], d.shape[0]
    chunk = chunk_size or query_chunk_size(n_db, 4)
    order = np.empty((n_q, n_db), dtype=np.int64)
    distances = np.empty((n_q, n_db), dtype=np.float32)
    for start in range(0, n_q, chunk):
        block = 1.0 - q[start:start + chunk] @ d.T
        ranked = np.argsort(block, axis=1, kind="stable")
        order[start:start + chunk] = ranked
        distances[start:start + chunk] = np.take_along_axis(block, ranked, axis=1)
    return order, distances


def rank_database(query_codes, db_codes, chunk_size: Optional[int] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine ranking for float descriptors, Hamming ranking for packed codes."""
    if is_float_codes(db_codes):
        return cosine_ranking(query_codes, db_codes, chunk_size)
    return hamming_ranking(query_codes, db_codes, chunk_size)


def relevance_matrix(query_labels, db_labels, order: np.ndarray) -> np.ndarray:
    """Boolean ``(Q, N)``: whether the item at each rank shares the query's label."""
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    return db_labels[np.asarray(order)] == query_labels[:, None]


# ---------------------------------------------------------------- mean average precision

def _relevance(relevance) -> np.ndarray:
    relevance = np.asarray(relevance, dtype=bool)
    return relevance[None, :] if relevance.ndim == 1 else relevance


def average_precision(relevance, k: Optional[int] = None,
                      normalise: str = "retrieved") -> np.ndarray:
    """Per-query AP (``k=None``, HATDH Eq. 22) or AP@k; see the module notes for ``normalise``."""
    if normalise not in ("retrieved", "min"):
        raise ValueError("normalise must be 'retrieved' or 'min'")
    rel = _relevance(relevance)
    n = rel.shape[1]
    cut = n if k is None else max(1, min(int(k), n))
    top = rel[:, :cut]
    hits = np.cumsum(top, axis=1, dtype=np.int64)
    precision = hits / np.arange(1, cut + 1)
    summed = (precision * top).sum(axis=1)
    if normalise == "retrieved":
        denominator = hits[:, -1] if cut else np.zeros(rel.shape[0])
    else:
        denominator = np.minimum(cut, rel.sum(axis=1))
    return np.divide(summed, denominator, out=np.zeros(rel.shape[0]), where=denominator > 0)


def mean_average_precision(relevance, k: Optional[int] = None,
                           normalise: str = "retrieved") -> float:
    """Mean over queries of :func:`average_precision`: mAP (``k=None``) or mAP@k."""
    ap = average_precision(relevance, k, normalise)
    return float(ap.mean()) if ap.size else 0.0


def _tie_groups(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each rank, the first rank of its tie group and the rank one past its end."""
    distances = np.asarray(distances)
    n_q, n = distances.shape
    ranks = np.broadcast_to(np.arange(n), (n_q, n))
    starts_here = np.ones((n_q, n), dtype=bool)
    starts_here[:, 1:] = distances[:, 1:] != distances[:, :-1]
    start = np.maximum.accumulate(np.where(starts_here, ranks, 0), axis=1)
    ends_here = np.ones((n_q, n), dtype=bool)
    ends_here[:, :-1] = starts_here[:, 1:]
    end = np.minimum.accumulate(np.where(ends_here, ranks, n)[:, ::-1], axis=1)[:, ::-1] + 1
    return start, end


def tie_averaged_average_precision(distances, relevance, k: Optional[int] = None) -> np.ndarray:
    """Per-query AP averaged over every ordering of tied items (McSherry & Najork 2008).

    ``distances`` are the ranked distances from :func:`hamming_ranking`. The expectation of
    sum_l P@l * S_l is exact (by linearity, per rank l in a tie group of t items holding r
    relevant ones after R relevant ones: P(S_l) = r/t and E[N_l | S_l] = R + 1 + j(r-1)/(t-1),
    j = l - group start). It is normalised by min(k, N_p) (= N_p, Eq. 22, when ``k=None``),
    which does not depend on the tie order.
    """
    rel = _relevance(relevance)
    dist = np.asarray(distances)
    dist = dist[None, :] if dist.ndim == 1 else dist
    n_q, n = rel.shape
    cut = n if k is None else max(1, min(int(k), n))
    start, end = _tie_groups(dist)
    cum = np.cumsum(rel, axis=1, dtype=np.int64)
    padded = np.concatenate([np.zeros((n_q, 1), dtype=np.int64), cum], axis=1)
    before = np.take_along_axis(padded, start, axis=1)
    in_group = np.take_along_axis(padded, end, axis=1) - before
    size = end - start
    offset = np.arange(n)[None, :] - start
    spread = np.divide(in_group - 1, size - 1, out=np.zeros((n_q, n)), where=size > 1)
    expected = (in_group / size) * (before + 1 + offset * spread) / np.arange(1, n + 1)
    summed = expected[:, :cut].sum(axis=1)
    denominator = np.minimum(cut, cum[:, -1])
    return np.divide(summed, denominator, out=np.zeros(n_q), where=denominator > 0)


# ---------------------------------------------------------------- precision and recall

def precision_curve(relevance, ks: Optional[Sequence[int]] = None) -> np.ndarray:
    """Mean precision@k over queries for k = 1..N (``ks=None``) or for the given ks (capped)."""
    rel = _relevance(relevance)
    n = rel.shape[1]
    mean_hits = np.cumsum(rel, axis=1, dtype=np.int64).mean(axis=0) if rel.shape[0] \
        else np.zeros(n)
    ks_arr = np.arange(1, n + 1) if ks is None else np.clip(np.asarray(ks, dtype=int), 1, n)
    return mean_hits[ks_arr - 1] / ks_arr


def precision_at_k(relevance, ks: Iterable[int]) -> dict[int, float]:
    """``{k: mean precision@k}`` (HATDH Eq. 23); k larger than N is capped at N."""
    ks = [int(k) for k in ks]
    return {k: float(p) for k, p in zip(ks, precision_curve(relevance, ks))}


def curve_points(n: int, count: int = 40) -> list[int]:
    """``count`` evenly spaced cutoffs from 1 to n (distinct integers, always ending at n)."""
    return sorted({int(round(x)) for x in np.linspace(1, n, max(2, count))})


def precision_recall_curve(relevance, points) -> dict[str, list]:
    """Mean precision and recall at each cutoff in ``points`` (an int means that many cutoffs).

    Recall@n = relevant items in the top n / relevant items in the database; a query with no
    relevant item counts recall 0. DCH plots this at 300, 600, ..., 6000.
    """
    rel = _relevance(relevance)
    n = rel.shape[1]
    ns = curve_points(n, points) if isinstance(points, (int, np.integer)) else \
        [min(max(1, int(p)), n) for p in points]
    hits = np.cumsum(rel, axis=1, dtype=np.int64)[:, np.asarray(ns) - 1]
    total = rel.sum(axis=1, keepdims=True)
    recall = np.divide(hits, total, out=np.zeros(hits.shape), where=total > 0)
    return {"n": ns, "precision": (hits / np.asarray(ns)).mean(axis=0).tolist(),
            "recall": recall.mean(axis=0).tolist()}


def radius_precision(distances, relevance, radius: int = 2) -> dict[str, float]:
    """Precision of Hamming look-up within ``radius``, from ranked distances and relevance.

    Per query: relevant items at distance <= radius / items at distance <= radius; **a query
    with nothing within the radius counts precision 0** (the usual DPSH/HashNet convention).
    Also returns ``hit_fraction`` (queries with at least one item within the radius) and
    ``mean_hits`` (mean number of items within the radius).
    """
    rel = _relevance(relevance)
    dist = np.asarray(distances)
    dist = dist[None, :] if dist.ndim == 1 else dist
    inside = dist <= radius
    found = inside.sum(axis=1)
    good = (inside & rel).sum(axis=1)
    precision = np.divide(good, found, out=np.zeros(len(found)), where=found > 0)
    if not len(found):
        return {"precision": 0.0, "hit_fraction": 0.0, "mean_hits": 0.0}
    return {"precision": float(precision.mean()), "hit_fraction": float((found > 0).mean()),
            "mean_hits": float(found.mean())}


def precision_within_radius(query_codes, db_codes, query_labels, db_labels,
                            radius: int = 2) -> dict[str, float]:
    """:func:`radius_precision` computed straight from packed codes and labels."""
    order, distances = hamming_ranking(query_codes, db_codes)
    return radius_precision(distances, relevance_matrix(query_labels, db_labels, order), radius)


# ---------------------------------------------------------------- classification by vote

def vote_predictions(db_labels, order, k: int = 10) -> np.ndarray:
    """Majority label among each query's top-k hits.

    Ties in count go to the tied label whose best hit is ranked highest (appears first).
    Returns an array of labels with the dtype of ``db_labels``.
    """
    db_labels = np.asarray(db_labels)
    order = np.asarray(order)
    k = max(1, min(int(k), order.shape[1]))
    classes, codes = np.unique(db_labels, return_inverse=True)
    top = codes.reshape(-1)[order[:, :k]]  # (Q, k) class indices
    n_q, n_c = top.shape[0], len(classes)
    counts = np.zeros((n_q, n_c), dtype=np.int64)
    np.add.at(counts, (np.arange(n_q)[:, None], top), 1)
    first = np.full((n_q, n_c), k, dtype=np.int64)
    np.minimum.at(first, (np.arange(n_q)[:, None], top), np.arange(k)[None, :])
    score = counts * (k + 1) + (k - first)  # count first, then earliest hit
    return classes[np.argmax(score, axis=1)]


def vote_accuracy(query_labels, db_labels, order, k: int = 10) -> float:
    """Fraction of queries whose top-k majority label (:func:`vote_predictions`) is right."""
    predicted = vote_predictions(db_labels, order, k)
    truth = np.asarray(query_labels)
    return float((predicted == truth).mean()) if truth.size else 0.0


def balanced_accuracy(true_labels, predicted_labels) -> float:
    """Mean per-class recall over the classes present in ``true_labels``."""
    truth, predicted = np.asarray(true_labels), np.asarray(predicted_labels)
    if not truth.size:
        return 0.0
    return float(np.mean([(predicted[truth == c] == c).mean() for c in np.unique(truth)]))


def tie_stats(distances, k: int = 10) -> dict[str, float]:
    """How ambiguous the top-k cut is under Hamming ties.

    ``tied_at_k``: mean number of database items at the same distance as the k-th item (the
    k-th included); ``tied_beyond_k``: how many of those fall below rank k (they could swap
    in under another tie-break); ``ambiguous_fraction``: queries where that number is > 0.
    """
    dist = np.asarray(distances)
    dist = dist[None, :] if dist.ndim == 1 else dist
    if not dist.size:
        return {"k": int(k), "tied_at_k": 0.0, "tied_beyond_k": 0.0, "ambiguous_fraction": 0.0}
    k = max(1, min(int(k), dist.shape[1]))
    kth = dist[:, k - 1:k]
    tied = (dist == kth).sum(axis=1)
    beyond = (dist[:, k:] == kth).sum(axis=1)
    return {"k": k, "tied_at_k": float(tied.mean()), "tied_beyond_k": float(beyond.mean()),
            "ambiguous_fraction": float((beyond > 0).mean())}


# ---------------------------------------------------------------- everything at once

def _mean_dicts(parts: list[tuple[int, dict]]) -> dict:
    total = sum(weight for weight, _ in parts)
    keys = parts[0][1].keys()
    out = {}
    for key in keys:
        values = [part[key] for _, part in parts]
        if isinstance(values[0], list):
            out[key] = (sum(np.asarray(v, dtype=float) * w for (w, _), v in zip(parts, values))
                        / total).tolist() if key != "n" else values[0]
        elif key == "k":
            out[key] = values[0]
        else:
            out[key] = float(sum(v * w for (w, _), v in zip(parts, values)) / total)
    return out


def evaluate_codes(db_codes, db_labels, query_codes, query_labels, bits: int,
                   k_list: Sequence[int] = (10, 100), radius: int = 2, vote_k: int = 10,
                   normalise: str = "retrieved", curve_count: int = 40,
                   chunk_size: Optional[int] = None) -> dict:
    """All retrieval metrics for one database/query split, as JSON-able numbers.

    Keys: ``map`` (Eq. 22, index tie-break), ``map_tie_averaged``, ``map@k`` (``normalise``
    convention) and ``precision@k`` for k in ``k_list``, ``radius{r}_precision`` /
    ``radius{r}_hit_fraction`` / ``radius{r}_mean_hits``, ``vote_accuracy@{vote_k}`` and
    ``balanced_accuracy@{vote_k}``, ``tied_at_{vote_k}`` / ``tied_beyond_{vote_k}`` /
    ``tie_ambiguous_fraction@{vote_k}``, counts, and ``curves`` (precision and recall at
    ``curve_count`` evenly spaced cutoffs). Queries are ranked in chunks to bound memory.
    Labels may be any comparable values (ints or strings).

    Float descriptors (``bits`` = their dimension) are ranked by cosine distance, with the same
    tie rule and the same keys except the ``radius*`` ones.
    """
    descriptors = is_float_codes(db_codes)
    if descriptors:
        db_codes, query_codes = _as_descriptors(db_codes), _as_descriptors(query_codes)
        if db_codes.shape[1] != bits:
            raise ValueError(f"descriptors have {db_codes.shape[1]} dimensions, not {bits}")
    else:
        db_codes, query_codes = _as_codes(db_codes), _as_codes(query_codes)
        if db_codes.shape[1] * 8 < bits:
            raise ValueError(f"{bits} bits do not fit in {db_codes.shape[1]} bytes per code")
    db_labels, query_labels = np.asarray(db_labels), np.asarray(query_labels)
    if len(db_labels) != len(db_codes) or len(query_labels) != len(query_codes):
        raise ValueError("labels and codes must have the same length")
    n_db, n_q = len(db_codes), len(query_codes)
    if n_db == 0 or n_q == 0:
        raise ValueError("need at least one database item and one query")
    points = curve_points(n_db, curve_count)
    chunk = chunk_size or query_chunk_size(n_db, 4 if descriptors else db_codes.shape[1],
                                           DEFAULT_CHUNK_BYTES // 4)
    parts: list[tuple[int, dict]] = []
    predictions = []
    for start in range(0, n_q, chunk):
        labels = query_labels[start:start + chunk]
        order, distances = rank_database(query_codes[start:start + chunk], db_codes)
        rel = relevance_matrix(labels, db_labels, order)
        part = {"map": float(average_precision(rel).mean()),
                "map_tie_averaged": float(tie_averaged_average_precision(distances, rel).mean())}
        for k in k_list:
            part[f"map@{k}"] = float(average_precision(rel, k, normalise).mean())
        for k, value in precision_at_k(rel, k_list).items():
            part[f"precision@{k}"] = value
        if not descriptors:
            for key, value in radius_precision(distances, rel, radius).items():
                part[f"radius{radius}_{key}"] = value
        ties = tie_stats(distances, vote_k)
        part[f"tied_at_{vote_k}"] = ties["tied_at_k"]
        part[f"tied_beyond_{vote_k}"] = ties["tied_beyond_k"]
        part[f"tie_ambiguous_fraction@{vote_k}"] = ties["ambiguous_fraction"]
        part.update(precision_recall_curve(rel, points))
        predictions.append(vote_predictions(db_labels, order, vote_k))
        parts.append((len(labels), part))
    merged = _mean_dicts(parts)
    predicted = np.concatenate(predictions)
    result = {"bits": int(bits), "n_database": n_db, "n_queries": n_q,
              "n_classes": int(len(np.unique(db_labels))), "map_normalise": normalise}
    result.update({key: value for key, value in merged.items()
                   if key not in ("n", "precision", "recall")})
    result[f"vote_accuracy@{vote_k}"] = float((predicted == query_labels).mean())
    result[f"balanced_accuracy@{vote_k}"] = balanced_accuracy(query_labels, predicted)
    result["curves"] = {"n": merged["n"], "precision": merged["precision"],
                        "recall": merged["recall"]}
    return result
