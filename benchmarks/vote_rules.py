"""Other rules for the top-k vote, on one labelled set's split 0 (the evaluation's order: the
database in a seeded random order, so Hamming ties fall at random): the plain majority (what
the app shows); each hit's vote divided by its label's share of the library (for imbalanced
sets); every tile tied at the k-th distance counted with an equal share of the places left;
both; and ties broken by the query's relaxed code (``tie_break.py``'s asymmetric score).

    python benchmarks/vote_rules.py --model mth-64-idc --set idc_breast --protocol patient

Prints the code statistics (distinct codes, mean tiles tied at the k-th distance) and, per
rule, balanced and plain vote accuracy at k.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DATA = ROOT.parent / "shared" / "data"


def weighted_votes(labels_ranked: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """(Q, classes) sums of ``weights`` by the class index of each ranked hit."""
    votes = np.zeros((len(labels_ranked), n_classes))
    for c in range(n_classes):
        votes[:, c] = (weights * (labels_ranked == c)).sum(axis=1)
    return votes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mth-64-idc")
    parser.add_argument("--set", default="idc_breast", help="folder under ../shared/data")
    parser.add_argument("--protocol", default="patient", choices=["patient", "hatdh"])
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    folder = DATA / args.set
    if not folder.is_dir():
        print(f"vote_rules.py: {folder}: not found (the shared data folder beside the "
              "repository)", file=sys.stderr)
        return 2
    from tie_break import ORDERS, orders

    from hashview.encode import Encoder, pack_codes, unpack_codes
    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.metrics import balanced_accuracy, pairwise_hamming, vote_predictions
    from hashview.models import load_model
    from hashview.tiling import load_patch

    data = load_dataset(folder)
    encoder = Encoder(load_model(args.model), device="cpu")
    relaxed = encoder.encode_relaxed([load_patch(e.path, encoder.input_size)
                                      for e in data.entries])
    packed = pack_codes(relaxed)
    signs = unpack_codes(packed, relaxed.shape[1]).astype(np.float32) * 2 - 1
    split = resolve_splits(data, None, args.protocol, [0], 0.7)[0]
    train, test = (np.asarray(part) for part in split.indices(data.paths))
    train = train[np.random.default_rng(split.seed).permutation(len(train))]
    labels = np.asarray(data.labels)
    classes, class_of = np.unique(labels[train], return_inverse=True)
    share = np.bincount(class_of) / len(class_of)
    truth, k = labels[test], args.k

    hamming = pairwise_hamming(packed[test], packed[train]).astype(np.int64)
    ranked = orders(hamming, relaxed[test] @ signs[train].T, ORDERS[:2])  # the two it uses
    order = ranked[ORDERS[0]]
    distances = np.take_along_axis(hamming, order, axis=1)
    at_cut = distances[:, k - 1:k]
    nearer, tied = distances < at_cut, distances == at_cut
    fill = (k - nearer.sum(axis=1, keepdims=True)) / tied.sum(axis=1, keepdims=True)
    tie_weights = nearer + tied * fill
    ranked_classes = class_of[order]
    rules = {
        "plain majority (the app)": vote_predictions(labels[train], order, k),
        "divided by label share": classes[np.argmax(
            weighted_votes(ranked_classes[:, :k], 1 / share[ranked_classes[:, :k]],
                           len(classes)), axis=1)],
        "whole tie run, shared": classes[np.argmax(
            weighted_votes(ranked_classes, tie_weights, len(classes)), axis=1)],
        "whole tie run, divided by share": classes[np.argmax(
            weighted_votes(ranked_classes, tie_weights, len(classes)) / share, axis=1)],
        "ties by relaxed code": vote_predictions(labels[train], ranked[ORDERS[1]], k),
    }
    print(f"{args.model} on {args.set} ({args.protocol} split 0): {len(test)} queries, "
          f"{len(np.unique(packed, axis=0))} distinct codes over {len(packed)} images, "
          f"on average {tied.sum(axis=1).mean():.0f} library tiles at the {k}th distance")
    print(f"| rule | balanced vote@{k} | vote@{k} |")
    print("|---|---|---|")
    for name, predicted in rules.items():
        print(f"| {name} | {balanced_accuracy(truth, predicted):.3f} | "
              f"{(predicted == truth).mean():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
