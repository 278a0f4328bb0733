"""Grad-CAM explanations: speed per overlay and the two sanity checks, as a Markdown table.

    python benchmarks/explain_bench.py [--data ../shared/data/kather2016_subset]
                                       [--models dch-64 hatdh-64] [--pairs-per-class 6]

* ms per overlay: ``explain_pair`` (both directions: 2 forward+backward passes) plus one
  ``overlay``, on a 224 px tile and on a tile at the model's input size, median of 10 runs after
  2 warm-ups, torch limited to 2 threads (the dev machine's 2 CPU cores).
* randomisation: mean Pearson correlation between the map of the trained model and that of the
  same architecture freshly initialised (seed 0), over same-class pairs (lower is better).
* deletion: mean drop of ``s(A -> B)`` when the 20% most highlighted pixels of A are set to A's
  mean colour, vs 20% uniformly random pixels (mean of 5 draws); "wins" = share of pairs where
  the highlighted deletion hurts more.
Pairs: for each class, ``--pairs-per-class`` seeded random same-class pairs (seed 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hashview.explain import (METHODS, deletion_check, explain_pair, overlay,  # noqa: E402
                              pearson, randomised_copy)
from hashview.models import DEFAULT_MODEL, load_model  # noqa: E402
from hashview.slides import scan_patch_folder  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kather2016_subset"


def same_class_pairs(folder: Path, per_class: int, seed: int = 0) -> list[tuple[Path, Path]]:
    by_label: dict[str, list[Path]] = {}
    for entry in scan_patch_folder(folder):
        by_label.setdefault(entry.label, []).append(Path(entry.path))
    rng = np.random.default_rng(seed)
    pairs = []
    for label in sorted(by_label):
        files = sorted(by_label[label])
        if len(files) < 2:
            continue
        for _ in range(per_class):
            i, j = rng.choice(len(files), size=2, replace=False)
            pairs.append((files[i], files[j]))
    return pairs


def time_overlay(model, a: Image.Image, b: Image.Image, method: str, runs: int = 10) -> float:
    for _ in range(2):
        overlay(a, explain_pair(model, a, b, method=method).map_a)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        overlay(a, explain_pair(model, a, b, method=method).map_a)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pairs-per-class", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"explain_bench: {args.data}: data folder not found (the Kather 2016 subset, "
              f"class subfolders of tiles; pass --data)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    pairs = same_class_pairs(args.data, args.pairs_per_class)
    if not pairs:
        print(f"explain_bench: {args.data}: no class with two tiles", file=sys.stderr)
        return 1
    images = {p: Image.open(p).convert("RGB") for pair in pairs for p in pair}
    rows = []
    for name in args.models:
        model = load_model(name)
        random_model = randomised_copy(model, seed=0)
        size = int(model.card.input_size)
        a0, b0 = images[pairs[0][0]], images[pairs[0][1]]
        for method in args.methods:
            ms_224 = time_overlay(model, a0.resize((224, 224)), b0.resize((224, 224)), method)
            ms_in = time_overlay(model, a0.resize((size, size)), b0.resize((size, size)), method)
            corr, top, rnd = [], [], []
            for pa, pb in pairs:
                a, b = images[pa], images[pb]
                heat = explain_pair(model, a, b, method=method).map_a
                corr.append(pearson(heat, explain_pair(random_model, a, b, method=method).map_a))
                result = deletion_check(model, a, b, heat, fraction=0.2)
                top.append(result["top_drop"])
                rnd.append(result["random_drop"])
            top_a, rnd_a = np.array(top), np.array(rnd)
            rows.append((name, method, size, ms_224, ms_in, float(np.mean(corr)),
                         float(np.mean(top_a)), float(np.mean(rnd_a)),
                         float(np.mean(top_a > rnd_a)), len(pairs)))
            print(f"# {name} {method} done", file=sys.stderr)
    print(f"Data: {args.data} ({len(pairs)} same-class pairs), torch threads {args.threads}\n")
    print("| model | method | input px | ms/overlay 224 px | ms/overlay input px | "
          "randomisation r (mean) | deletion drop top-20% | deletion drop random-20% | "
          "top > random (pairs) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, method, size, ms_224, ms_in, corr, top, rnd, wins, n in rows:
        print(f"| `{name}` | {method} | {size} | {ms_224:.0f} | {ms_in:.0f} | {corr:.2f} | "
              f"{top:.3f} | {rnd:.3f} | {wins:.0%} of {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
