"""Refine by example measured with simulated feedback: one round, then search again.

Each query's top-10 hits are marked by their true labels (same label as the query: good, else
bad), the query is refined (``hashview.search.refine.refined_code``) and the library ranked
again. Scored before and after:

- **mAP@100**: AP over the first 100 ranks divided by min(100, relevant tiles in the library)
  (``hashview.metrics.average_precision``, ``normalise="min"``), and **P@10**;
- the same on the **residual** ranking: the 10 judged tiles taken out of the ranking before and
  after, so that a gain counts only tiles the user had not seen (the fair reading: moving the
  marked good tiles up is no news to the user).

Sets, read from the shared data folder beside the checkout (``--data``):

- **Kather 2016** (264 tiles, 8 classes): every tile queries the other 263 (leave one out).
  The models were trained on most of these tiles, so absolute numbers are optimistic.
- **IDC breast**: only patients the model did not train on (its card's recorded IDC split; all
  patients when it has none), split by patient at random (per seed) into half library, half
  queries; at most ``--max-queries`` query patches, drawn at random. One run per
  seed (``--seeds``): each draws its own patient split.

Rules compared: the plain search; the majority of query + good codes (``push`` 0); that pushed
from the bad codes (``push`` 0.5, 1 and 2); the majority of the good codes alone (the query's
code where no hit was good). Two references that are not one code: every tile ranked by its
summed Hamming distance to query + good codes, and by its minimum distance to any of them (the
rule of a region query). Library order is shuffled (per seed) so Hamming ties fall at random.

    python benchmarks/refine_feedback.py [--model M ...] [--sets kather,idc] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MARKED = 10   # hits the simulated user judges
MAP_DEPTH = 100
PUSHES = (0.5, 1.0, 2.0)  # weights of the bad examples compared (--pushes)


def _rank(distances: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray,
          own_index: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(order, relevance) per query, ties by library position; a query's own tile (leave one
    out) is ranked last and dropped."""
    distances = distances.astype(np.int64)
    if own_index is not None:
        distances[np.arange(len(distances)), own_index] = np.iinfo(np.int64).max
    order = np.argsort(distances, axis=1, kind="stable")
    if own_index is not None:
        order = order[:, :-1]
    return order, db_labels[order] == query_labels[:, None]


def _scores(order: np.ndarray, relevance: np.ndarray, judged: np.ndarray) -> dict:
    from hashview.metrics import average_precision, precision_at_k

    residual = np.stack([rel[~np.isin(row, marks)]
                         for row, rel, marks in zip(order, relevance, judged)])
    return {"map": float(average_precision(relevance, MAP_DEPTH, "min").mean()),
            "p10": precision_at_k(relevance, [10])[10],
            "residual_map": float(average_precision(residual, MAP_DEPTH, "min").mean()),
            "residual_p10": precision_at_k(residual, [10])[10]}


def evaluate(db_codes: np.ndarray, db_labels, query_codes: np.ndarray, query_labels,
             own_index: np.ndarray | None = None, pushes=PUSHES) -> tuple[dict, dict]:
    """Scores per rule, and how much feedback the simulated user gave."""
    from hashview.metrics import pairwise_hamming
    from hashview.search.refine import refined_code

    db_labels, query_labels = np.asarray(db_labels), np.asarray(query_labels)
    before = pairwise_hamming(query_codes, db_codes)
    order, relevance = _rank(before, db_labels, query_labels, own_index)
    judged = order[:, :MARKED]
    good = [marks[rel[:MARKED]] for marks, rel in zip(judged, relevance)]
    bad = [marks[~rel[:MARKED]] for marks, rel in zip(judged, relevance)]

    def one_code(make) -> np.ndarray:
        return np.stack([make(q, g, b) for q, g, b in zip(query_codes, good, bad)])

    codes = {"majority of query + good (push 0)":
             one_code(lambda q, g, b: refined_code(q, db_codes[g], push=0.0))}
    for push in pushes:
        codes[f"+ pushed from bad, push {push:g}"] = one_code(
            lambda q, g, b, push=push: refined_code(q, db_codes[g], db_codes[b], push=push))
    codes["majority of good only"] = one_code(
        lambda q, g, b: refined_code((), db_codes[g]) if len(g) else q)
    distances = {"plain search (before)": before}
    distances.update({name: pairwise_hamming(c, db_codes) for name, c in codes.items()})
    summed, nearest = [], []
    for q, g in zip(query_codes, good):
        each = pairwise_hamming(np.vstack([q[None, :], db_codes[g]]), db_codes)
        summed.append(each.sum(axis=0))
        nearest.append(each.min(axis=0))
    distances["ref: summed distance to query + good"] = np.stack(summed)
    distances["ref: min distance to query + good"] = np.stack(nearest)
    scores = {}
    for name, dist in distances.items():
        scores[name] = _scores(*_rank(dist, db_labels, query_labels, own_index), judged)
    n_good = np.array([len(g) for g in good])
    feedback = {"queries": len(query_codes), "mean_good": float(n_good.mean()),
                "no_good": int((n_good == 0).sum())}
    return scores, feedback


def _codes(loaded, folder, indices: list[int], cache: dict) -> np.ndarray:
    """Codes of ``folder``'s entries at ``indices``, each image encoded once per model."""
    from hashview.evaluation import encode_folder_split

    todo = [i for i in dict.fromkeys(indices) if (folder.name, i) not in cache]
    if todo:
        encoded = encode_folder_split(loaded, [folder.entries[i] for i in todo], device="cpu")
        cache.update({(folder.name, i): code for i, code in zip(todo, encoded)})
    return np.stack([cache[folder.name, i] for i in indices])


def _kather(folder, loaded, seed: int, cache: dict, pushes):
    shuffle = np.random.default_rng(seed).permutation(len(folder.paths))
    codes = _codes(loaded, folder, shuffle.tolist(), cache)
    labels = np.asarray(folder.labels)[shuffle]
    note = f"Kather 2016: {len(codes)} tiles, each against the other {len(codes) - 1}"
    return evaluate(codes, labels, codes, labels, np.arange(len(codes)), pushes), note


def _idc(folder, loaded, seed: int, max_queries: int, cache: dict, pushes):
    trained = {p for split in (loaded.card.training or {}).get("splits", [])
               if split.get("data_root") == "idc_breast" for p in split.get("train", [])}
    seen = {pid for path, pid in zip(folder.paths, folder.patients) if path in trained}
    rng = np.random.default_rng(seed)
    new = np.array(sorted({p for p in folder.patients if p not in seen}))
    rng.shuffle(new)
    library_patients = set(new[:len(new) // 2])
    query_patients = set(new[len(new) // 2:])
    library = [i for i, p in enumerate(folder.patients) if p in library_patients]
    queries = [i for i, p in enumerate(folder.patients) if p in query_patients]
    all_queries = len(queries)
    if len(queries) > max_queries:
        queries = sorted(rng.choice(queries, max_queries, replace=False).tolist())
    library = rng.permutation(library).tolist()
    labels = np.asarray(folder.labels)
    idc_share = float(np.mean(labels[library] == "IDC"))
    note = (f"IDC breast, the {len(new)} patients the model did not train on: a library of "
            f"{len(library_patients)} patients, queries from the other {len(query_patients)}. "
            f"Seed {seed}: {len(library)} library patches ({idc_share:.0%} IDC), "
            f"{len(queries)} query patches drawn from {all_queries}")
    return evaluate(_codes(loaded, folder, library, cache), labels[library],
                    _codes(loaded, folder, queries, cache), labels[queries], None, pushes), note


def _print_table(model: str, notes: list[str], runs: list[tuple[dict, dict]]) -> None:
    """Scores averaged over the runs (one per seed), with the spread of the change in mAP."""
    print(f"\n{notes[0]}")
    for note in dict.fromkeys(notes[1:]):  # what differs between runs (the IDC draws)
        if note != notes[0]:
            print(note.rpartition(". ")[2])
    queries = sum(f["queries"] for _, f in runs)
    good = np.mean([f["mean_good"] for _, f in runs])
    none = sum(f["no_good"] for _, f in runs)
    print(f"model {model}; {len(runs)} run(s), {queries} queries in all; on average {good:.1f} "
          f"of the top {MARKED} good; {none} queries with none")
    print(f"| rule | mAP@{MAP_DEPTH} | P@10 | residual mAP@{MAP_DEPTH} | residual P@10 | "
          f"change in mAP@{MAP_DEPTH}, min to max over runs |")
    print("|---|---|---|---|---|---|")
    base = "plain search (before)"
    for name in runs[0][0]:
        mean = {key: np.mean([scores[name][key] for scores, _ in runs])
                for key in ("map", "p10", "residual_map", "residual_p10")}
        change = [scores[name]["map"] - scores[base]["map"] for scores, _ in runs]
        spread = "" if name == base else f"{min(change):+.3f} to {max(change):+.3f}"
        print(f"| {name} | {mean['map']:.3f} | {mean['p10']:.3f} | {mean['residual_map']:.3f} "
              f"| {mean['residual_p10']:.3f} | {spread} |")


def main(argv=None) -> int:
    from hashview.models import DEFAULT_MODEL, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", dest="models",
                        help=f"model name (repeatable; default {DEFAULT_MODEL})")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--sets", default="kather,idc", help="kather, idc or both")
    parser.add_argument("--max-queries", type=int, default=1000,
                        help="IDC query patches per run (drawn at random)")
    parser.add_argument("--seeds", default="0,1,2,3,4",
                        help="one run per seed: library order (ties) and the IDC patient split")
    parser.add_argument("--pushes", default=",".join(f"{p:g}" for p in PUSHES),
                        help="weights of the bad examples to compare")
    args = parser.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    needed = {"kather": args.data / "kather2016_subset", "idc": args.data / "idc_breast" /
              "labels.csv"}
    unknown = [s for s in sets if s not in needed]
    if unknown or not sets:
        print(f"refine_feedback: --sets takes kather and/or idc, not {args.sets!r}",
              file=sys.stderr)
        return 2
    missing = [str(needed[s]) for s in sets if not needed[s].exists()]
    if missing:
        print(f"refine_feedback: {missing[0]} not found (the shared data folder; see --data)",
              file=sys.stderr)
        return 1
    from hashview.evaluation import load_dataset

    seeds = [int(v) for v in args.seeds.split(",")]
    pushes = [float(v) for v in args.pushes.split(",") if v.strip()]
    folders = {which: load_dataset(needed[which] if which == "kather" else needed[which].parent)
               for which in sets}
    for name in args.models or [DEFAULT_MODEL]:
        loaded, cache = load_model(name), {}
        for which in sets:
            started = time.perf_counter()
            runs, notes = [], []
            for seed in seeds:
                if which == "kather":
                    run, note = _kather(folders[which], loaded, seed, cache, pushes)
                else:
                    run, note = _idc(folders[which], loaded, seed, args.max_queries, cache,
                                     pushes)
                runs.append(run)
                notes.append(note)
            _print_table(loaded.card.name, notes, runs)
            print(f"({time.perf_counter() - started:.0f} s on this machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
