"""Query expansion: does searching again with the query's code averaged with its first hits'
codes rank better? (alpha-weighted average query expansion, Radenovic et al., TPAMI 2019, in
Hamming space.) The query's relaxed code plus the +-1 bits of its first M hits, each hit
weighted by its code similarity to the query raised to ALPHA (0: equal weights), signed again
and searched against the same stored codes. Nothing is re-encoded; the second search costs one
more Hamming scan.

    python benchmarks/query_expansion.py --runs mth-64-from-idc:kather2016_subset \\
        mth-64-idc:idc_breast:patient mth-64-general:tissue_multi_lab/oral_oscc

Each run is MODEL:FOLDER[:PROTOCOL] under ``../shared/data``. A model trained on that folder
is scored on its own card's split (its held-out part); any other on the folder's protocol
splits (seeds ``--seeds``). The first hits come from the evaluation's own order (Hamming
distance, ties in the split's seeded random order), and every variant is scored with the
evaluation's metrics.
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
METRICS = ("map", "vote_accuracy@10", "balanced_accuracy@10")
VARIANTS = ((2, 0.0), (3, 0.0), (5, 0.0), (2, 3.0), (3, 3.0), (5, 3.0), (8, 3.0))


def expanded_queries(relaxed_queries: np.ndarray, db_signs: np.ndarray, first_hits: np.ndarray,
                     distances: np.ndarray, alpha: float) -> np.ndarray:
    """The queries' relaxed codes plus their first hits' +-1 codes, hit i weighted by
    ``max(0, 1 - 2 d_i / bits) ** alpha``; a small share of the relaxed code breaks sign ties."""
    bits = db_signs.shape[1]
    weights = np.clip(1.0 - 2.0 * distances / bits, 0.0, None) ** alpha
    summed = np.sign(relaxed_queries) + (weights[..., None] * db_signs[first_hits]).sum(axis=1)
    return summed + 1e-3 * relaxed_queries


def measure(model: str, folder: Path, protocol: str, seeds) -> dict:
    """Mean metrics over the splits, plain and for each (M, ALPHA) in ``VARIANTS``."""
    from hashview.encode import Encoder, pack_codes, unpack_codes
    from hashview.evaluation import choose_splits, load_dataset, score_splits
    from hashview.metrics import pairwise_hamming
    from hashview.models import load_model
    from hashview.tiling import load_patch

    loaded = load_model(model)
    data = load_dataset(folder)
    splits, source, _ = choose_splits(loaded.card, data, None, protocol, seeds)
    encoder = Encoder(loaded, device="cpu")
    relaxed = encoder.encode_relaxed([load_patch(e.path, encoder.input_size)
                                      for e in data.entries])
    bits = relaxed.shape[1]
    packed = pack_codes(relaxed)
    signs = unpack_codes(packed, bits).astype(np.float32) * 2 - 1
    args = dict(k_list=(10, 100), radius=2, vote_k=10)
    per_variant: dict[str, list[dict]] = {}
    for split in splits:
        train, test = (np.asarray(part) for part in split.indices(data.paths))
        hamming = pairwise_hamming(packed[test], packed[train]).astype(np.int64)
        # The evaluation's order: distance, then the split's seeded shuffle of the database.
        shuffle = np.argsort(np.random.default_rng(split.seed).permutation(len(train)))
        order = np.array([np.lexsort((shuffle, row)) for row in hamming])
        variants = {"plain": packed}
        for hits, alpha in VARIANTS:
            first = order[:, :hits]
            queries = packed.copy()
            queries[test] = pack_codes(expanded_queries(
                relaxed[test], signs[train], first, np.take_along_axis(hamming, first, 1),
                alpha))
            variants[f"M={hits}, alpha={alpha:g}"] = queries
        for name, queries in variants.items():
            scores = score_splits(packed, data, [split], bits, args, None, query_codes=queries)
            per_variant.setdefault(name, []).append(scores["mean"])
    means = {name: {key: float(np.mean([row[key] for row in rows])) for key in METRICS}
             for name, rows in per_variant.items()}
    return {"splits": f"{source}: seeds {[s.seed for s in splits]}", "scores": means}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="MODEL:FOLDER[:PROTOCOL]")
    parser.add_argument("--data-root", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    from dihedral_views import print_runs  # the same table of runs

    runs = [(run.split(":") + ["hatdh"])[:3] for run in args.runs]
    return print_runs(runs, args.data_root, args.seeds, measure, "query")


if __name__ == "__main__":
    raise SystemExit(main())
