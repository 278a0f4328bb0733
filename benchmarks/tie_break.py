"""Breaking Hamming ties by the query's relaxed code instead of by tile index: does it rank
better? Three orders of the same database codes for the same queries: Hamming distance then
tile index (what a search does), Hamming distance then the asymmetric score (the query's
relaxed code against the stored bits, higher first), and the asymmetric score alone.

    python benchmarks/tie_break.py --models mth-64-general dch-64-general hatdh-64-general

Kather 2016 (HATDH protocol, seeds 0-4), oral and osteosarcoma (seeds 0-2), from
``../shared/data``; means over the splits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
SETS = (("kather2016_subset", (0, 1, 2, 3, 4)), ("tissue_multi_lab/oral_oscc", (0, 1, 2)),
        ("tissue_multi_lab/osteosarcoma", (0, 1, 2)))
ORDERS = ("hamming, tile index", "hamming, relaxed score", "relaxed score only")


def orders(hamming: np.ndarray, score: np.ndarray,
           names: tuple[str, ...] = ORDERS) -> dict[str, np.ndarray]:
    """Each query's database order under the rules ``names`` (of :data:`ORDERS`; ties last by
    tile index)."""
    index = np.arange(hamming.shape[1])
    keys = {ORDERS[0]: lambda h, s: (index, h), ORDERS[1]: lambda h, s: (index, -s, h),
            ORDERS[2]: lambda h, s: (index, -s)}
    return {name: np.array([np.lexsort(keys[name](h, s)) for h, s in zip(hamming, score)])
            for name in names}


def measure(model: str, folder: Path, seeds) -> dict[str, np.ndarray]:
    """Mean (mAP, vote@10, balanced vote@10) per order over the splits of ``folder``."""
    from hashview.encode import Encoder, pack_codes, unpack_codes
    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.metrics import (balanced_accuracy, mean_average_precision, pairwise_hamming,
                                  relevance_matrix, vote_predictions)
    from hashview.models import load_model
    from hashview.tiling import load_patch

    data = load_dataset(folder)
    encoder = Encoder(load_model(model), device="cpu")
    relaxed = encoder.encode_relaxed([load_patch(e.path, encoder.input_size)
                                      for e in data.entries])
    packed = pack_codes(relaxed)
    signs = unpack_codes(packed, relaxed.shape[1]).astype(np.float32) * 2 - 1
    labels = np.asarray(data.labels)
    found = {name: [] for name in ORDERS}
    for split in resolve_splits(data, None, "hatdh", seeds, 0.7):
        train, test = (np.asarray(part) for part in split.indices(data.paths))
        hamming = pairwise_hamming(packed[test], packed[train]).astype(np.int64)
        score = relaxed[test] @ signs[train].T
        for name, order in orders(hamming, score).items():
            predicted = vote_predictions(labels[train], order, 10)
            found[name].append((
                mean_average_precision(relevance_matrix(labels[test], labels[train], order)),
                float((predicted == labels[test]).mean()),
                balanced_accuracy(labels[test], predicted)))
    return {name: np.mean(rows, axis=0) for name, rows in found.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mth-64-general"])
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"tie_break.py: {DATA}: not found (the shared data folder beside the repository)",
              file=sys.stderr)
        return 2
    print("| model | set | order | mAP | vote@10 | balanced vote@10 |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for name, seeds in SETS:
            for order, (mean_ap, vote, balanced) in measure(model, DATA / name, seeds).items():
                print(f"| {model} | {Path(name).name} | {order} | {mean_ap:.3f} | {vote:.3f} | "
                      f"{balanced:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
