"""Averaging a tile's relaxed code over its eight rotations and mirror images before taking the
sign: does it rank better? Tissue has no up or down, so a code that does not change when the
tile is turned could match more of the same tissue. Four codings of the same tiles, each
scored with the evaluation's own splits and metrics:

- plain: one view, what indexing and search do;
- 8 views, both: database and queries averaged over the 8 dihedral views (8x the encoding);
- 8 views, queries only: the stored codes as they are, the queries averaged (8x per query);
- 4 views, both: identity, the two mirror images and the half turn.

    python benchmarks/dihedral_views.py --runs mth-64-from-idc:kather2016_subset \\
        mth-64-idc:idc_breast mth-64-general:tissue_multi_lab/oral_oscc \\
        mth-64-general:tissue_multi_lab/osteosarcoma

Each run is MODEL:FOLDER under ``../shared/data`` (``--data-root``). A model trained on that
folder is scored on its own card's split (its held-out part); any other on the folder's
protocol splits (``--protocol``, seeds ``--seeds``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
METRICS = ("map", "vote_accuracy@10", "balanced_accuracy@10")


def dihedral_views(image, count: int = 8):
    """The first ``count`` of the eight rotations and mirror images of a PIL image, identity
    first; 4 gives identity, both mirror images and the half turn."""
    from PIL import Image
    t = Image.Transpose
    ops = [None, t.FLIP_LEFT_RIGHT, t.FLIP_TOP_BOTTOM, t.ROTATE_180, t.ROTATE_90, t.ROTATE_270,
           t.TRANSPOSE, t.TRANSVERSE]
    return [image if op is None else image.transpose(op) for op in ops[:count]]


def measure(model: str, folder: Path, protocol: str, seeds) -> dict:
    """Mean metrics over the splits for each coding (see the module notes)."""
    from hashview.encode import Encoder, pack_codes
    from hashview.evaluation import choose_splits, load_dataset, score_splits
    from hashview.models import load_model
    from hashview.tiling import load_patch

    loaded = load_model(model)
    data = load_dataset(folder)
    splits, source, _ = choose_splits(loaded.card, data, None, protocol, seeds)
    encoder = Encoder(loaded, device="cpu")
    views = [dihedral_views(load_patch(e.path, encoder.input_size)) for e in data.entries]
    relaxed = np.stack([encoder.encode_relaxed([tile[v] for tile in views]) for v in range(8)])
    plain, all8, four = (pack_codes(relaxed[0]), pack_codes(relaxed.mean(0)),
                         pack_codes(relaxed[:4].mean(0)))
    codings = {"plain": (plain, plain), "8 views, both": (all8, all8),
               "8 views, queries only": (plain, all8), "4 views, both": (four, four)}
    args = dict(k_list=(10, 100), radius=2, vote_k=10)
    scores = {name: score_splits(db, data, splits, int(loaded.card.bits), args, None,
                                 query_codes=queries)["mean"]
              for name, (db, queries) in codings.items()}
    return {"splits": f"{source}: seeds {[s.seed for s in splits]}", "scores": scores}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="MODEL:FOLDER")
    parser.add_argument("--data-root", type=Path, default=DATA)
    parser.add_argument("--protocol", default="hatdh")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    runs = [(*run.split(":", 1), args.protocol) for run in args.runs]
    return print_runs(runs, args.data_root, args.seeds, measure, "coding")


def print_runs(runs, data_root: Path, seeds, measure, column: str) -> int:
    """``measure(model, folder, protocol, seeds)`` for each (MODEL, FOLDER, PROTOCOL) run, as
    a markdown table with one row per entry of its ``scores`` (named in ``column``); 1 when a
    folder is missing under ``data_root``."""
    missing = [folder for _, folder, _ in runs if not (data_root / folder).is_dir()]
    if missing:
        print(f"error: data missing under {data_root}: {', '.join(missing)} "
              "(see ../shared/data/README.md, or pass --data-root)", file=sys.stderr)
        return 1
    print(f"| model | folder | splits | {column} | mAP | vote@10 | balanced@10 |")
    print("|---|---|---|---|---|---|---|")
    for model, folder, protocol in runs:
        started = time.perf_counter()
        result = measure(model, data_root / folder, protocol, seeds)
        for name, mean in result["scores"].items():
            print(f"| {model} | {folder} | {result['splits']} | {name} | "
                  + " | ".join(f"{mean[key]:.3f}" for key in METRICS) + " |", flush=True)
        print(f"({model} on {folder}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
