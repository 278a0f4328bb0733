"""Short training runs on the Kather subset: which HATDH loss settings and which DCH optimiser
work in a few CPU minutes? (Not a test; results depend on the machine's speed only through the
reported seconds: the runs are defined by epochs, so the numbers are reproducible.)

Protocol: ``../shared/data/kather2016_subset`` relative to the repository root (264 tiles,
8 classes), HATDH 70/30 per-class split with seed 0 (184 database / 80 query tiles), 64 bits,
mAP over the full Hamming ranking (database = train, queries = test) and top-10 vote accuracy
from :func:`hashview.evaluation.evaluate_model` on the model's own split.

    python benchmarks/train_quick.py                 # all runs (~10 min on 2 CPU cores)
    python benchmarks/train_quick.py --runs hatdh-a,dch-adam --scale 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_models import as_written  # noqa: E402  (a benchmark beside this one)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kather2016_subset"

# name -> (description, train_from_folder options). Epochs sized for ~1.5-2 min each on 2 cores.
RUNS = {
    "hatdh-a": ("HATDH paper: un-normalised d, random triplets, Kather margins",
                dict(arch="hatdh", input_size=150, epochs=30)),
    "hatdh-b": ("HATDH normalised by bits, semi-hard triplets",
                dict(arch="hatdh", input_size=150, epochs=30, normalise_by_bits=True,
                     triplet_mode="semi-hard")),
    "hatdh-b-hard": ("HATDH normalised by bits, batch-hard triplets",
                     dict(arch="hatdh", input_size=150, epochs=30, normalise_by_bits=True,
                          triplet_mode="batch-hard")),
    "hatdh-c": ("HATDH normalised, semi-hard + auxiliary CE (weight 1)",
                dict(arch="hatdh", input_size=150, epochs=30, normalise_by_bits=True,
                     triplet_mode="semi-hard", aux_ce_weight=1.0)),
    "dch-adam": ("DCH, Adam 1e-3, 30% of epochs pretraining, batch 32",
                 dict(arch="dch", input_size=128, epochs=10, pretrain_epochs=3, batch_size=32,
                      optimizer="adam")),
    "dch-adadelta": ("DCH, Adadelta lr 1.0 (paper), 30% of epochs pretraining, batch 32",
                     dict(arch="dch", input_size=128, epochs=10, pretrain_epochs=3,
                          batch_size=32, optimizer="adadelta")),
}
DEFAULT_RUNS = "hatdh-a,hatdh-b,hatdh-c,dch-adam,dch-adadelta"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hashview-train-quick"))
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma list of {sorted(RUNS)}")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run's epochs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: data folder not found: {args.data}\n(expected the Kather subset at "
              f"../shared/data/kather2016_subset relative to the repository root, or --data)",
              file=sys.stderr)
        return 2
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"error: unknown run(s) {unknown}; choose from {sorted(RUNS)}", file=sys.stderr)
        return 2

    import torch
    from hashview.evaluation import evaluate_model
    from hashview.models import load_model
    from hashview.training import train_from_folder

    results = []
    for name in names:
        description, options = RUNS[name]
        options = dict(options)
        options["epochs"] = max(2, round(options["epochs"] * args.scale))
        if "pretrain_epochs" in options:
            options["pretrain_epochs"] = max(1, round(options["pretrain_epochs"] * args.scale))
        options.setdefault("batch_size", 64)
        arch = options.pop("arch")
        start = time.perf_counter()
        result = train_from_folder(args.data, arch, args.bits, args.out / name, seed=args.seed,
                                   protocol="hatdh", device=args.device, name=name,
                                   **as_written(options))
        train_seconds = time.perf_counter() - start
        scores = evaluate_model(load_model(result.model_path), args.data, device=args.device)
        mean = scores["mean"]
        row = {"run": name, "description": description, "options": options,
               "map": round(mean["map"], 4), "map_tie_averaged": round(mean["map_tie_averaged"], 4),
               "vote_accuracy@10": round(mean["vote_accuracy@10"], 4),
               "final_loss": round(result.history[-1], 4), "train_seconds": round(train_seconds, 1),
               "torch_threads": torch.get_num_threads(), "split_source": scores["split_source"]}
        results.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| run | mAP | mAP (tie-avg) | vote@10 | final loss | train s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['map']:.3f} | {r['map_tie_averaged']:.3f} | "
              f"{r['vote_accuracy@10']:.3f} | {r['final_loss']:.3f} | {r['train_seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
