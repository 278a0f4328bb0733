"""Fine-tuning recipes for a user's own small folder, side by side on the held-out parts.

For each folder (``benchmarks/own_folder.py``'s seeded folders), split seed and architecture,
runs ``train_from_folder`` (held-out run only) once per recipe and scores the trained model,
its start as it is and every bundled model as it is on the same held-out part. Recipes choose
nothing on the held-out part (the best-epoch recipes validate on part of the training part),
so each row is an honest estimate; "best bundled" is the best on the held-out part itself, an
optimistic bar. Prints one markdown row per (recipe, folder, arch) with the means over seeds.

    python benchmarks/own_folder_recipes.py --folders oral osteo --archs mth --seeds 0 1 \\
        --recipes cap10 val-best
    python benchmarks/own_folder_recipes.py --archs mth --recipes head --init MODEL_FILE
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_folder import build_folders  # noqa: E402  (a benchmark beside this one)

NET = {"method": "network"}  # the whole network trained (the default before head fitting)
VAL = {**NET, "keep_best_epoch": True, "inner_val_fraction": 0.3}
# the net's first top-level modules that stay as the start's: MTH all but fc + hash layer,
# DCH its conv features, HATDH its MobileNet backbone
FROZEN = {"mth": 4, "dch": 1, "hatdh": 1}
RECIPES = {
    "head": {},                               # the default: the hash layer refitted
    # the same, from the bundled model of the arch that retrieves best as it is on 30 % of
    # the training part (the head is then fitted on all of it)
    "head-choose": {"choose_start": True},
    "cap10": NET,                             # the start's recipe, 10 epochs (before)
    "lr1e-4": {**NET, "lr": 1e-4},
    "val-best": VAL,
    "val-best-lr1e-4": {**VAL, "lr": 1e-4},
    "val-best-frozen": {**VAL, "freeze": True},
    "val-best-frozen-lr1e-4": {**VAL, "freeze": True, "lr": 1e-4},
    # the start chosen among the bundled models of the arch by the same inner validation
    "choose-val-best": {**VAL, "choose_start": True},
    "choose-val-best-lr1e-4": {**VAL, "lr": 1e-4, "choose_start": True},
    "choose-val-best-frozen-lr1e-4": {**VAL, "freeze": True, "lr": 1e-4, "choose_start": True},
}
VOTE, MAP = "vote_accuracy@10", "map"


def _bundled(folder: Path, split_file: Path, cache: dict, key) -> dict:
    """Every bundled model as it is, scored on the held-out part ("held") and on an inner
    split of the training part ("inner": 30 % of it queries the rest, the split the training
    run's own choices use), cached per folder and seed. The inner score picks a bundled model
    the way a user could, by their own labelled training patches only."""
    from hashview.evaluation import encode_folder_split, load_dataset, score_splits
    from hashview.models import list_models, load_model
    from hashview.splits import Split
    from hashview.training.folder_run import _inner_split

    if key not in cache:
        data, split = load_dataset(folder), Split.load(split_file)
        inner = _inner_split(data, split, 0.3)
        scores = {}
        for card in list_models():
            if card.source != "bundled" or not card.trained:
                continue
            codes = encode_folder_split(load_model(card.name), data.entries, "cpu")
            scores[card.name] = {
                part: score_splits(codes, data, [which], card.bits, {"k_list": (10,)},
                                   None)["splits"][0]
                for part, which in (("held", split), ("inner", inner))}
        cache[key] = scores
    return cache[key]


def _top(bundled: dict, part: str) -> str:
    """The bundled model with the best vote@10 (then mAP) on ``part`` ("held" or "inner")."""
    return max(bundled, key=lambda n: (bundled[n][part][VOTE], bundled[n][part][MAP]))


def run_one(folder, protocol, arch, seed, recipe, out: Path, cache: dict,
            init_from=None) -> dict:
    from hashview.training import train_from_folder

    options = dict(RECIPES[recipe])
    if init_from:  # another start than the arch's default (e.g. a candidate general model)
        options["init_from"] = str(init_from)
    if options.pop("freeze", False):
        options["freeze_children"] = FROZEN[arch]
    start = time.perf_counter()
    result = train_from_folder(folder, arch, 64, out, protocol=protocol, device="cpu",
                               seed=seed, keep_held_out=True, epochs=10, **options)
    seconds = time.perf_counter() - start
    bundled = _bundled(folder, out / "split.json", cache, (str(folder), seed))
    best, chosen = _top(bundled, "held"), _top(bundled, "inner")
    rep = result.report
    return {"trained": (rep["held_out"][VOTE], rep["held_out"][MAP]),
            "start": (rep["start_model"][VOTE], rep["start_model"][MAP]),
            "best": (best, bundled[best]["held"][VOTE], bundled[best]["held"][MAP]),
            "chosen": (chosen, bundled[chosen]["held"][VOTE], bundled[chosen]["held"][MAP]),
            # "+note": the report named a bundled model that did better (bundled_better)
            "quality": rep["quality"] + ("+note" if rep.get("bundled_better") else ""),
            "kept": rep.get("kept_epoch"), "seconds": seconds,
            "queries": rep["held_out"]["n_queries"]}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def row(recipe: str, name: str, arch: str, runs: list[dict]) -> str:
    trained_vote, trained_map = _mean(r["trained"][0] for r in runs), \
        _mean(r["trained"][1] for r in runs)
    start_vote, start_map = _mean(r["start"][0] for r in runs), _mean(r["start"][1] for r in runs)
    best_vote, best_map = _mean(r["best"][1] for r in runs), _mean(r["best"][2] for r in runs)
    chosen_vote = _mean(r["chosen"][1] for r in runs)
    chosen_map = _mean(r["chosen"][2] for r in runs)
    kept = ",".join(str(r["kept"]) for r in runs if r["kept"] is not None) or "-"
    verdicts = ",".join(r["quality"] for r in runs)
    per_seed = " ".join(f"{r['trained'][0]:.3f}" for r in runs)
    return (f"| {name} | {arch} | {recipe} | {trained_vote:.3f} / {trained_map:.3f} | "
            f"{trained_vote - start_vote:+.3f} / {trained_map - start_map:+.3f} | "
            f"{trained_vote - best_vote:+.3f} / {trained_map - best_map:+.3f} | "
            f"{trained_vote - chosen_vote:+.3f} / {trained_map - chosen_map:+.3f} | "
            f"{per_seed} | {kept} | {verdicts} | {_mean(r['seconds'] for r in runs):.0f} s |")


HEADER = ["| folder | arch | recipe | trained vote@10 / mAP | minus start as is | "
          "minus best bundled as is | minus bundled chosen on training part | "
          "vote@10 per seed | kept epoch | verdicts | wall |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folders", nargs="+",
                        default=["oral", "osteo", "kather-new", "idc-new", "kather", "idc"])
    parser.add_argument("--archs", nargs="+", default=["mth", "dch", "hatdh"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--root", type=Path, default=Path("/tmp/own-folders"))
    parser.add_argument("--md", type=Path, default=Path("/tmp/own-folder-recipes.md"))
    parser.add_argument("--init", default=None, help="start model (name or file) instead of "
                        "each arch's default; use with one --archs")
    args = parser.parse_args(argv)
    folders = build_folders(args.root)
    lines = ["# recipes on own folders (held-out runs, 64 bits; network: 10 epochs)", "",
             f"command: `{' '.join([sys.executable, *sys.argv])}`", "", *HEADER]
    cache: dict = {}
    from_init = f"-from-{Path(args.init).stem}" if args.init else ""
    for name in args.folders:
        folder, protocol = folders[name]
        for arch in args.archs:
            for recipe in args.recipes:
                runs = [run_one(folder, protocol, arch, seed, recipe, args.root / "recipes" /
                                f"{name}-{arch}-{recipe}{from_init}-{seed}", cache, args.init)
                        for seed in args.seeds]
                lines.append(row(recipe, name, arch, runs))
                print(lines[-1], flush=True)
                args.md.write_text("\n".join(lines) + "\n")
    best_lines = [f"- {name} seed {seed}: best bundled as is {_top(s, 'held')}, chosen on "
                  f"the training part {_top(s, 'inner')}"
                  for (name, seed), s in sorted(cache.items())]
    args.md.write_text("\n".join(lines + ["", *best_lines, ""]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
