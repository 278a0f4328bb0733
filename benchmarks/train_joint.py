"""One model for both data sets: MTH-64 trained on Kather and breast IDC together, measured on each.

Trains on the union of the Kather split-S train part (HATDH protocol) and the IDC patient
split-S train patients, with the labels kept apart (8 Kather classes + 2 IDC classes = 10
classes, balanced P x K batches), then evaluates the model on each set's own held-out part of
split S (Kather: its test tiles against its train tiles; IDC: the test patients against the
train patients). docs/benchmarks.md compares it with the separate bundled models.

    python benchmarks/train_joint.py --split 0 --epochs 6 --out /tmp/hv-joint

Data are read from ``../shared/data`` (``--data-root`` to change); the model and checkpoints go
to ``--out`` (outside the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=int, default=0, help="split seed of both sets")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    kather_root = args.data_root / "kather2016_subset"
    idc_root = args.data_root / "idc_breast"
    for folder in (kather_root, idc_root):
        if not folder.is_dir():
            print(f"error: data folder not found: {folder}", file=sys.stderr)
            return 2

    import torch
    from hashview.evaluation import evaluate_model, load_dataset, resolve_splits
    from hashview.slides.folders import PatchEntry
    from hashview.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    kather, idc = load_dataset(kather_root), load_dataset(idc_root)
    kather_split = resolve_splits(kather, None, "hatdh", [args.split])[0]
    idc_split = resolve_splits(idc, None, "patient", [args.split])[0]
    kather_train, _ = kather_split.indices(kather.paths)
    idc_train, _ = idc_split.indices(idc.paths)
    entries = ([PatchEntry(kather.entries[i].path, f"kather:{kather.labels[i]}")
                for i in kather_train]
               + [PatchEntry(idc.entries[i].path, f"idc:{idc.labels[i]}") for i in idc_train])
    config = TrainConfig(arch="mth", bits=64, epochs=args.epochs, batch_size=64, input_size=64,
                         seed=args.split, sampler="balanced", device="cpu",
                         name=f"mth-64-joint-split{args.split}", dataset="kather")
    start = time.perf_counter()
    result = train(config, entries, args.out)
    seconds = time.perf_counter() - start
    scores = {}
    for name, root, split in (("kather", kather_root, kather_split), ("idc", idc_root, idc_split)):
        mean = evaluate_model(result.model_path, root, split=split, device="cpu")["mean"]
        scores[name] = {k: round(float(mean[k]), 4)
                        for k in ("map", "vote_accuracy@10", "balanced_accuracy@10")}
    print(json.dumps({"split": args.split, "epochs": args.epochs, "images": len(entries),
                      "train_seconds": round(seconds, 1), **scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
