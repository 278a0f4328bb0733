"""How ``hashview train`` does on a user's own small folder, with its defaults.

Builds small labelled folders (seeded samples of data kept out of every bundled model's
training: Kather tiles are sampled from the whole subset, so some are in the bundled Kather
models' training part; the table says so) and, for each folder and architecture, runs
``train_from_folder`` with the defaults and ``keep_held_out=True`` (the held-out run only: the
final retrain on all patches has no held-out part to report on). Every bundled model is scored
as it is on the same held-out part. Prints a markdown table and writes it to ``--md``.

    python benchmarks/own_folder.py --runs kather:mth idc:mth kather:mth:scratch
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout


def _copy(pairs, out: Path) -> None:
    for src, rel in pairs:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _class_folder(src: Path, out: Path, per_class: int, seed: int, total=None) -> Path:
    """``per_class`` seeded patches of each class subfolder (or ``total`` over all)."""
    if out.is_dir():
        return out
    rng = random.Random(seed)
    pairs = []
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        pairs += [(f, f"{cls.name}/{f.name}") for f in files]
    if total is not None:
        pairs = rng.sample(pairs, min(total, len(pairs)))
    else:
        by_class = {}
        for src_file, rel in pairs:
            by_class.setdefault(rel.split("/")[0], []).append((src_file, rel))
        pairs = [p for items in by_class.values() for p in rng.sample(items, min(per_class,
                                                                                len(items)))]
    _copy(pairs, out)
    return out


def _held_out_of_bundled(data_root: str, protocol: str) -> set:
    """The patches of ``data_root`` in the held-out part of its split 0, which no bundled
    model trained on (every bundled Kather and IDC model, the general ones included, trained
    on the split-0 training part only)."""
    from hashview.evaluation import load_dataset, resolve_splits

    data = load_dataset(DATA / data_root)
    split = resolve_splits(data, None, protocol, [0])[0]
    return {data.paths[i] for i in split.indices(data.paths)[1]}


def _new_kather_folder(out: Path) -> Path:
    """Every Kather tile of the split-0 held-out part (10 a class): tissue of a known lab
    that no bundled model saw."""
    if out.is_dir():
        return out
    src = DATA / "kather2016_subset"
    _copy([(src / rel, rel) for rel in sorted(_held_out_of_bundled("kather2016_subset",
                                                                    "hatdh"))], out)
    return out


def _idc_folder(out: Path, patients: int, per_patient: int, seed: int,
                unseen_only: bool = False) -> Path:
    """Seeded patients with both classes, ``per_patient`` patches each; labels.csv keeps the
    patient ids, so the patient protocol splits it. ``unseen_only``: patients of the split-0
    held-out part only, whom no bundled model saw."""
    if out.is_dir():
        return out
    src = DATA / "idc_breast"
    rows = list(csv.DictReader(open(src / "labels.csv", newline="")))
    if unseen_only:
        unseen = _held_out_of_bundled("idc_breast", "patient")
        rows = [r for r in rows if r["path"] in unseen]
    by_patient = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    both = sorted(p for p, r in by_patient.items() if len({x["label"] for x in r}) == 2)
    rng = random.Random(seed)
    chosen = rng.sample(both, patients)
    picked = [r for p in chosen for r in rng.sample(by_patient[p], min(per_patient,
                                                                       len(by_patient[p])))]
    _copy([(src / r["path"], r["path"]) for r in picked], out)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "label"])
        writer.writerows([r["path"], r["patient_id"], r["label"]] for r in picked)
    return out


def build_folders(root: Path) -> dict:
    return {  # kather and idc: some of their patches trained bundled models; *-new: none did
        "kather": (_class_folder(DATA / "kather2016_subset", root / "kather-own", 16, 0),
                   "hatdh"),
        "idc": (_idc_folder(root / "idc-own", 4, 45, 0), "patient"),
        "kather-new": (_new_kather_folder(root / "kather-new"), "hatdh"),
        "idc-new": (_idc_folder(root / "idc-new", 4, 45, 0, unseen_only=True), "patient"),
        "oral": (_class_folder(DATA / "tissue_multi_lab/oral_oscc", root / "oral-own", 0, 0,
                               total=150), "hatdh"),
        "osteo": (_class_folder(DATA / "tissue_multi_lab/osteosarcoma", root / "osteo-own",
                                1000, 0), "hatdh"),
    }


def run(folder: Path, protocol: str, arch: str, scratch: bool, out: Path, epochs=None,
        options=None) -> dict:
    from hashview.evaluation import load_dataset
    from hashview.models import list_models, load_model
    from hashview.splits import Split
    from hashview.training import train_from_folder
    from hashview.training.report import is_collapsed, model_report

    start = time.perf_counter()
    result = train_from_folder(folder, arch, 64, out, protocol=protocol, device="cpu",
                               from_scratch=scratch, keep_held_out=True, epochs=epochs,
                               **(options or {}))
    seconds = time.perf_counter() - start
    data = load_dataset(folder)
    split = Split.load(out / "split.json")
    bundled = {}
    for card in list_models():
        if card.source == "bundled":
            scores = model_report(load_model(card.name), data, split, "cpu")
            bundled[card.name] = scores
    config = result.card.training["config"]
    return {"report": result.report, "seconds": seconds, "bundled": bundled,
            "epochs": config["epochs"], "input": config["input_size"],
            "method": config.get("method", "network"),
            "n_images": len(data.entries), "kept": result.report.get("kept_epoch"),
            "collapsed_bundled": sorted(
                n for n, s in bundled.items() if is_collapsed(s["codes"]))}


def table_rows(name: str, arch: str, scratch: bool, outcome: dict) -> list[str]:
    rep, nan = outcome["report"], float("nan")
    held, codes = rep["held_out"], rep["codes"]
    start = rep.get("start_model", {})
    best = max(outcome["bundled"].items(), key=lambda kv: kv[1]["vote_accuracy@10"])
    how = "scratch" if scratch else f"from {start.get('name')}"
    if outcome.get("kept") is not None:
        how += f", kept epoch {outcome['kept']}"
    how += (", hash layer refitted" if outcome.get("method") == "head"
            else f", {outcome['epochs']} ep")
    return [f"| {name} ({outcome['n_images']}) | {arch} {how}, "
            f"{outcome['input']} px | {held['vote_accuracy@10']:.3f} / {held['map']:.3f} | "
            f"{start.get('vote_accuracy@10', nan):.3f} / {start.get('map', nan):.3f} | "
            f"{best[0]} {best[1]['vote_accuracy@10']:.3f} / {best[1]['map']:.3f} | "
            f"{codes['distinct']}/{codes['n_images']}, {codes['dead_bits']} dead | "
            f"{rep['quality']} | {held['n_queries']} | {outcome['seconds']:.0f} s |"]


HEADER = ["| folder (patches) | run | trained vote@10 / mAP | start (or default) as is | "
          "best bundled as is | distinct codes, dead bits | verdict | queries | wall |",
          "|---|---|---|---|---|---|---|---|---|"]


def _option(text: str) -> tuple:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["kather:mth"],
                        help="FOLDER:ARCH[:scratch] (folders: kather idc oral osteo kather-new "
                             "idc-new)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/own-folders"))
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the recipe's epochs (recorded in the table)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a training option for every run (JSON value), as hashview "
                             "train --option")
    parser.add_argument("--md", type=Path, default=Path("/tmp/own-folder.md"))
    args = parser.parse_args(argv)
    folders = build_folders(args.root)
    options = dict(_option(text) for text in args.option)
    lines = ["# hashview train on own folders (held-out run, defaults)", "",
             f"command: `{' '.join([sys.executable, *sys.argv])}`", ""] + HEADER
    details = []
    for spec in args.runs:
        name, arch, *rest = spec.split(":")
        scratch = "scratch" in rest
        folder, protocol = folders[name]
        out = args.root / "runs" / spec.replace(":", "-")
        outcome = run(folder, protocol, arch, scratch, out, args.epochs, options)
        lines += table_rows(name, arch, scratch, outcome)
        details.append(f"- {spec}: every bundled model as is (vote@10 / mAP, distinct codes): "
                       + ", ".join(f"{n} {s['vote_accuracy@10']:.3f} / {s['map']:.3f} "
                                   f"({s['codes']['distinct']})"
                                   for n, s in sorted(outcome["bundled"].items())))
        text = "\n".join(lines + ["", *details, ""])
        args.md.write_text(text)
        print(lines[-1], flush=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
