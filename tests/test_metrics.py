"""Retrieval metrics against small cases worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashview.encode import hamming_distance
from hashview.metrics import (average_precision, balanced_accuracy, evaluate_codes,
                              hamming_ranking, mean_average_precision, pairwise_hamming,
                              precision_at_k, precision_curve, precision_recall_curve,
                              precision_within_radius, radius_precision, relevance_matrix,
                              tie_averaged_average_precision, tie_stats, vote_accuracy,
                              vote_predictions)


def codes(*values):
    return np.array(values, dtype=np.uint8).reshape(len(values), -1)


def test_ranking_breaks_ties_by_database_index():
    # distances from 0x00: 0x03 -> 2, 0x01 -> 1, 0x02 -> 1, 0x00 -> 0, 0x80 -> 1
    order, distances = hamming_ranking(codes(0x00), codes(0x03, 0x01, 0x02, 0x00, 0x80))
    assert order.tolist() == [[3, 1, 2, 4, 0]]
    assert distances.tolist() == [[0, 1, 1, 1, 2]]


def test_ranking_matches_reference_for_any_chunk_and_code_length():
    rng = np.random.default_rng(0)
    for n_bytes in (1, 3, 8, 16):
        q = rng.integers(0, 256, (23, n_bytes), dtype=np.uint8)
        db = rng.integers(0, 256, (57, n_bytes), dtype=np.uint8)
        reference = hamming_distance(q, db)
        assert np.array_equal(pairwise_hamming(q, db), reference)
        order, distances = hamming_ranking(q, db, chunk_size=5)
        assert np.array_equal(order, np.argsort(reference, axis=1, kind="stable"))
        assert np.array_equal(distances, np.take_along_axis(reference, order, axis=1))


def test_relevance_matrix():
    order = np.array([[2, 0, 1], [1, 2, 0]])
    rel = relevance_matrix(["a", "b"], np.array(["a", "b", "a"]), order)
    assert rel.tolist() == [[True, True, False], [True, False, False]]


def test_average_precision_full_ranking_eq22():
    assert average_precision([1, 0, 1, 0])[0] == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0, 1, 1])[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision([0, 0, 0])[0] == 0.0  # no relevant item: AP 0
    assert mean_average_precision([[1, 0, 1, 0], [0, 1, 1, 0]]) == pytest.approx(
        ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_average_precision_at_k_both_normalisations():
    rel = [1, 0, 0, 1, 1]  # 3 relevant items in all
    assert average_precision(rel)[0] == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    assert average_precision(rel, k=3)[0] == pytest.approx(1.0)  # 1 / (1 retrieved)
    assert average_precision(rel, k=3, normalise="min")[0] == pytest.approx(1 / 3)
    assert average_precision(rel, k=4)[0] == pytest.approx((1 + 2 / 4) / 2)
    assert average_precision(rel, k=4, normalise="min")[0] == pytest.approx((1 + 2 / 4) / 3)
    assert average_precision([0, 0, 1], k=2)[0] == 0.0  # none retrieved in the top k
    for normalise in ("retrieved", "min"):  # k >= N is the full-ranking AP
        assert average_precision(rel, k=99, normalise=normalise)[0] == pytest.approx(
            average_precision(rel)[0])
    with pytest.raises(ValueError):
        average_precision(rel, k=3, normalise="other")


def test_tie_averaged_ap():
    # ranks 2 and 3 are tied and hold one relevant item: orders [1,1,0] (AP 1) and [1,0,1]
    # (AP (1 + 2/3)/2) are equally likely -> 11/12, whatever order the input has.
    for rel in ([1, 1, 0], [1, 0, 1]):
        assert tie_averaged_average_precision([0, 1, 1], rel)[0] == pytest.approx(11 / 12)
    # no ties: equal to the plain AP
    assert tie_averaged_average_precision([0, 1, 2, 3], [1, 0, 1, 0])[0] == pytest.approx(
        (1 + 2 / 3) / 2)
    # all tied: the expectation over all 4! orders, by brute force
    rel, dist = np.array([1, 0, 1, 0]), np.zeros(4)
    import itertools
    brute = np.mean([average_precision(rel[list(p)])[0] for p in itertools.permutations(range(4))])
    assert tie_averaged_average_precision(dist, rel)[0] == pytest.approx(brute)


def test_precision_at_k_and_curve():
    rel = [[1, 0, 1, 0], [0, 0, 1, 1]]
    assert precision_at_k(rel, (1, 2, 4, 10)) == pytest.approx(
        {1: 0.5, 2: 0.25, 4: 0.5, 10: 0.5})  # k > N is capped at N
    assert precision_curve(rel).tolist() == pytest.approx([0.5, 0.25, (2 / 3 + 1 / 3) / 2, 0.5])


def test_precision_recall_curve():
    curve = precision_recall_curve([[1, 0, 1, 0], [0, 0, 1, 1]], [1, 2, 4])
    assert curve["n"] == [1, 2, 4]
    assert curve["precision"] == pytest.approx([0.5, 0.25, 0.5])
    assert curve["recall"] == pytest.approx([0.25, 0.25, 1.0])  # (1/2 + 0)/2, ..., (1 + 1)/2
    assert precision_recall_curve([[1, 0, 1, 0]], 2)["n"] == [1, 4]


def test_radius_precision_counts_empty_queries_as_zero():
    distances = [[0, 1, 3], [3, 4, 5], [2, 2, 2]]
    rel = [[1, 0, 1], [1, 1, 1], [1, 1, 0]]
    result = radius_precision(distances, rel, radius=2)
    assert result["precision"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)
    assert result["hit_fraction"] == pytest.approx(2 / 3)
    assert result["mean_hits"] == pytest.approx(5 / 3)


def test_precision_within_radius_from_codes():
    # query 0x00: 0x01 (d1, a), 0x03 (d2, b), 0x07 (d3, a) -> within 2: a, b -> 1/2
    # query 0xFF: distances 7, 6, 5 -> nothing within 2 -> precision 0
    result = precision_within_radius(codes(0x00, 0xFF), codes(0x01, 0x03, 0x07),
                                     ["a", "a"], ["a", "b", "a"], radius=2)
    assert result == pytest.approx({"precision": 0.25, "hit_fraction": 0.5, "mean_hits": 1.0})


def test_vote_with_ties_goes_to_the_better_ranked_label():
    db_labels = np.array(["a", "b", "b", "a", "c"])
    order = np.array([[0, 1, 2, 3, 4],    # top 4: a b b a -> 2:2, "a" ranked first
                      [1, 0, 3, 2, 4],    # b a a b -> 2:2, "b" ranked first
                      [4, 1, 2, 0, 3]])   # c b b a -> "b" by count
    assert vote_predictions(db_labels, order, k=4).tolist() == ["a", "b", "b"]
    assert vote_predictions(db_labels, order, k=1).tolist() == ["a", "b", "c"]
    assert vote_accuracy(["a", "a", "b"], db_labels, order, k=4) == pytest.approx(2 / 3)


def test_balanced_accuracy_with_unequal_classes():
    assert balanced_accuracy([0, 0, 0, 0, 1], [0, 0, 0, 0, 0]) == pytest.approx(0.5)  # acc 0.8
    assert balanced_accuracy([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 1, 0]) == pytest.approx(
        (2 / 3 + 1 + 0) / 3)


def test_tie_stats():
    distances = [[0, 1, 1, 1, 2]]
    assert tie_stats(distances, k=2) == pytest.approx(
        {"k": 2, "tied_at_k": 3.0, "tied_beyond_k": 2.0, "ambiguous_fraction": 1.0})
    assert tie_stats(distances, k=5) == pytest.approx(
        {"k": 5, "tied_at_k": 1.0, "tied_beyond_k": 0.0, "ambiguous_fraction": 0.0})


def test_evaluate_codes_on_a_tiny_database():
    db = codes(0x00, 0x01, 0xFF, 0xFE)
    db_labels = [0, 0, 1, 1]
    # query 0x03 (label 0): distances 2, 1, 6, 7 -> order 1, 0, 2, 3 -> relevance 1 1 0 0
    # query 0xF0 (label 1): distances 4, 5, 4, 3 -> order 3, 0, 2, 1 (0 before 2 on the tie)
    #                       -> relevance 1 0 1 0
    result = evaluate_codes(db, db_labels, codes(0x03, 0xF0), [0, 1], bits=8, k_list=(1, 2),
                            radius=2, vote_k=2, chunk_size=1)
    json.dumps(result)  # JSON-able
    assert result["n_database"] == 4 and result["n_queries"] == 2 and result["bits"] == 8
    assert result["map"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)
    assert result["map_tie_averaged"] == pytest.approx((1 + 11 / 12) / 2)
    assert result["map@1"] == pytest.approx(1.0)
    assert result["map@2"] == pytest.approx(1.0)
    assert result["precision@1"] == pytest.approx(1.0)
    assert result["precision@2"] == pytest.approx(0.75)
    assert result["radius2_precision"] == pytest.approx(0.5)  # second query: nothing within 2
    assert result["radius2_hit_fraction"] == pytest.approx(0.5)
    assert result["radius2_mean_hits"] == pytest.approx(1.0)
    # vote@2: query 2 sees labels 1, 0 (a tie) -> 1, the better-ranked label -> correct
    assert result["vote_accuracy@2"] == pytest.approx(1.0)
    assert result["balanced_accuracy@2"] == pytest.approx(1.0)
    assert result["tied_at_2"] == pytest.approx(1.5)
    assert result["tied_beyond_2"] == pytest.approx(0.5)
    assert result["tie_ambiguous_fraction@2"] == pytest.approx(0.5)
    assert result["curves"]["n"][-1] == 4 and result["curves"]["recall"][-1] == pytest.approx(1)
    # chunking does not change anything
    assert evaluate_codes(db, db_labels, codes(0x03, 0xF0), [0, 1], bits=8, k_list=(1, 2),
                          vote_k=2) == result


def test_evaluate_codes_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        evaluate_codes(codes(0, 1), [0], codes(0), [0], bits=8)
    with pytest.raises(ValueError):
        evaluate_codes(codes(0, 1), [0, 1], codes(0), [0], bits=16)
