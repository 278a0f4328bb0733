"""Variants of the hash-head refit (``hashview.training.head_fit``) on the own folders,
side by side on the held-out parts: the start's features are computed once per folder, split
seed and architecture (cached under ``--cache``), then each variant fits a head on them in
seconds and is scored as ``hashview train``'s report scores (database = training part,
queries = held-out part, packed codes through ``score_splits``).

    python benchmarks/head_fit_variants.py --variants default "neg=0.0" "epochs=30" \\
        "epochs=300" "keep=1.0" "ce=1.0" "views=1" "quant=0.0" "balance=1"
    python benchmarks/head_fit_variants.py --cv                  # choose by 5-fold CV
    python benchmarks/head_fit_variants.py --folders idc-new --archs mth --start mth-64-idc \\
        --variants start default "keep=1.0" "keep=3.0" "keep=10.0"

A variant is ``default`` (the shipped settings), ``start`` (the start's own head, unchanged)
or ``KEY=VALUE,...`` over :func:`fit`'s keywords. The features of a view differ from a real
run's by the random draws of the augmentation, so a variant's numbers move by about the
spread between split seeds against ``own_folder_recipes.py``'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_folder import build_folders  # noqa: E402  (a benchmark beside this one)

BITS = 64
VOTE, MAP, BALANCED = "vote_accuracy@10", "map", "balanced_accuracy@10"


def features(name, folder, protocol, arch, seed, cache: Path, start_name=None):
    """(dataset, split, {"feats": (VIEWS, N, D), "w", "b", "labels"}) of every patch of the
    folder through the start's net (cached)."""
    import torch

    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.models import load_model
    from hashview.training import head_fit
    from hashview.training.data import PatchesInMemory
    from hashview.training.defaults import DEFAULT_START
    from hashview.training.folder_run import _config
    from hashview.training.loop import _Run

    data = load_dataset(folder)
    split = resolve_splits(data, None, protocol, [seed], 0.7)[0]
    suffix = f"-{start_name}" if start_name else ""
    path = cache / f"{name}-{arch}-{seed}-{head_fit.VIEWS}{suffix}.pt"
    if path.is_file():
        return data, split, torch.load(path)
    start_name = start_name or DEFAULT_START[arch]
    start = load_model(start_name)
    cfg = _config(arch, BITS, 10, None, None, seed, data.name, start_name, start,
                  {"device": "cpu"}).resolved()
    run = _Run(cfg, PatchesInMemory(data.entries, cfg.input_size), torch.device("cpu"))
    feats = head_fit._features(run, torch.Generator().manual_seed(seed))
    w, b = (t.detach().float() for t in run.net.hash_head_weights())
    found = {"feats": feats, "w": w, "b": b, "labels": torch.from_numpy(run.data.labels)}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(found, path)
    return data, split, found


def codes_of(plain, weight, bias) -> np.ndarray:
    return np.packbits(((plain @ weight.T + bias) > 0).numpy().astype(np.uint8), axis=1)


def fit(found, train_idx, seed, epochs=100, keep=0.3, quant=0.1, lr=1e-3, wd=1e-4, neg=-1.0,
        views=None, batch=256, ce=0.0, balance=0):
    """``head_fit.fit_hash_head``'s fit on cached features, with its settings as keywords
    (``neg``: the target of different-label pairs; ``ce``: the weight of an added class
    head's cross-entropy; ``views``: how many of the cached views to use; ``balance=1``:
    each pair weighted by the inverse of its two labels' counts, so that every label weighs
    the same in the pair term whatever its share of the folder)."""
    import torch

    feats = found["feats"][:views] if views else found["feats"]
    index = torch.as_tensor(np.asarray(train_idx))
    flat = feats[:, index].reshape(-1, feats.shape[-1])
    y = found["labels"][index].repeat(feats.shape[0])
    weight = (1.0 / torch.bincount(y).float())[y] if balance else torch.ones(len(y))
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    x = (flat - mean) / std
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], BITS)
    with torch.no_grad():
        layer.weight.copy_(found["w"] * std)
        layer.bias.copy_(found["b"] + (found["w"] * mean).sum(1))
        start_codes = torch.tanh(layer(x))
    params = list(layer.parameters())
    classes = torch.nn.Linear(BITS, int(y.max()) + 1) if ce else None
    if classes is not None:
        params += list(classes.parameters())
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            u = torch.tanh(layer(x[idx]))
            same = (y[idx][:, None] == y[idx][None, :]).float()
            pair = weight[idx][:, None] * weight[idx][None, :]
            error = (u @ u.T / BITS - (same + (1 - same) * neg)) ** 2
            loss = (error * pair).sum() / pair.sum() \
                + quant * ((u.abs() - 1) ** 2).mean() \
                + keep * ((u - start_codes[idx]) ** 2).mean()
            if classes is not None:
                loss = loss + ce * torch.nn.functional.cross_entropy(classes(u), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return layer.weight / std, layer.bias - (layer.weight * (mean / std)).sum(1)


def head_of(found, train_idx, seed, options):
    """(W, b) of a variant: None is the start's head as it is."""
    return (found["w"], found["b"]) if options is None else fit(found, train_idx, seed,
                                                                  **options)


def held_out(data, split, found, head) -> tuple[float, float, int, bool, float]:
    """Held-out vote@10 and mAP, the distinct codes over the whole folder, whether the
    report's collapse check (``report.is_collapsed``) flags them, and balanced vote@10."""
    from hashview.evaluation import score_splits
    from hashview.training.report import code_stats, is_collapsed
    codes = codes_of(found["feats"][0], *head)
    scored = score_splits(codes, data, [split], BITS, {"k_list": (10,)}, None)["splits"][0]
    stats = code_stats(codes, BITS, len(np.unique(found["labels"].numpy())))
    return (scored[VOTE], scored[MAP], stats["distinct"], is_collapsed(stats),
            scored[BALANCED])


def cv_folds(train_idx, labels, groups, k, seed):
    """k folds of the training part, by patient when there are patients, else per class."""
    rng = np.random.default_rng(seed + 7)
    train_idx = np.asarray(train_idx)
    if groups is not None and len(set(groups[train_idx])) >= 2:
        names = sorted(set(groups[train_idx]))
        rng.shuffle(names)
        fold_of = {g: i % min(k, len(names)) for i, g in enumerate(names)}
        folds = np.array([fold_of[groups[i]] for i in train_idx])
    else:
        folds = np.zeros(len(train_idx), int)
        for label in np.unique(labels[train_idx]):
            members = np.where(labels[train_idx] == label)[0]
            rng.shuffle(members)
            folds[members] = np.arange(len(members)) % k
    return [(train_idx[folds != j], train_idx[folds == j]) for j in np.unique(folds)]


def cv_choice(found, data, protocol, train_idx, seed, candidates: dict) -> str:
    """The candidate with the best mean of vote@10 and mAP over folds of the training part."""
    from hashview.evaluation import score_ranking

    labels = found["labels"].numpy()
    groups = np.array(data.patients, dtype=object) if protocol == "patient" else None
    scores = {}
    for name, options in candidates.items():
        per_fold = []
        for fit_idx, val_idx in cv_folds(train_idx, labels, groups, 5, seed):
            codes = codes_of(found["feats"][0], *head_of(found, fit_idx, seed, options))
            scored = score_ranking(codes[fit_idx], labels[fit_idx], codes[val_idx],
                                   labels[val_idx], BITS, {"k_list": (10,)}, seed)
            per_fold.append((scored[VOTE], scored[MAP]))
        scores[name] = float(np.mean(per_fold))
    return max(candidates, key=lambda n: scores[n])


def parse_variant(text: str):
    if text == "start":
        return None
    if text == "default":
        return {}
    return {key: float(value) if "." in value else int(value)
            for key, value in (pair.split("=") for pair in text.split(","))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", default=["oral", "osteo", "kather-new",
                                                         "idc-new"])
    parser.add_argument("--archs", nargs="+", default=["mth", "dch", "hatdh"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["default", "start"])
    parser.add_argument("--cv", action="store_true", help="also: choose among keep 0.3, keep 1 "
                        "and the start's head by 5-fold cross-validation on the training part")
    parser.add_argument("--start", default=None, help="start model instead of the arch's default")
    parser.add_argument("--root", type=Path, default=Path("/tmp/own-folders"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/head-fit-features"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    folders = build_folders(args.root)
    variants = {text: parse_variant(text) for text in args.variants}
    candidates = {"keep 0.3": {}, "keep 1": {"keep": 1.0}, "start": None}
    print("| folder | arch | variant | vote@10 | balanced@10 | mAP | vote@10 per seed | distinct "
          "codes per seed (patches) | collapsed runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.folders:
        folder, protocol = folders[name]
        for arch in args.archs:
            rows = {text: [] for text in [*variants, *(["cv"] if args.cv else [])]}
            for seed in args.seeds:
                data, split, found = features(name, folder, protocol, arch, seed, args.cache,
                                              args.start)
                train_idx, _ = split.indices(data.paths)
                for text, options in variants.items():
                    rows[text].append(held_out(data, split, found,
                                               head_of(found, train_idx, seed, options)))
                if args.cv:
                    chosen = cv_choice(found, data, protocol, train_idx, seed, candidates)
                    rows["cv"].append(held_out(data, split, found, head_of(
                        found, train_idx, seed, candidates[chosen])))
            for text, scores in rows.items():
                scores = np.array(scores)
                print(f"| {name} | {arch} | {text} | {scores[:, 0].mean():.3f} | "
                      f"{scores[:, 4].mean():.3f} | {scores[:, 1].mean():.3f} | "
                      f"{' '.join(f'{v:.3f}' for v in scores[:, 0])} | "
                      f"{' '.join(str(int(v)) for v in scores[:, 2])} ({len(data.paths)}) | "
                      f"{int(scores[:, 3].sum())} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
