"""Case search measured on IDC breast patients: every patient a case, new patients only.

Each patient the model never trained on (the card's recorded IDC split) queries the other such
patients. A patient's label is "IDC" when at least ``--threshold`` of its patches are IDC.
Two rankings of the candidate patients are compared:

- **median of min** (``hashview.search.cases``, Yottixel's rule): a mosaic of the query
  patient's patches (colour clusters, spread by the patches' positions on the slide), each
  candidate's distance = median over the mosaic of the minimum Hamming distance to its codes;
- **tile hits per case** (what the app's per-slide summary does today): every mosaic patch's
  top-10 nearest patches among all candidates, candidates ranked by how many they got (ties by
  best distance).

Reports top-1 accuracy (the first case has the query's label), top-5 majority accuracy and the
mean average precision over the ranked cases (relevant = same label), as a markdown table.

    python benchmarks/case_search.py [--model mth-64-general] [--threshold 0.25]
    python benchmarks/case_search.py --speed [--slides 10000] [--tiles 3000] [--mosaic N ...]

``--speed`` times the ranking step alone on random 64-bit codes (no data needed): queries of
``--mosaic`` codes against ``--slides`` x ``--tiles`` library tiles, top 5, the median of
``--queries`` (:mod:`hashview.bench.cases`, also ``hashview bench --only cases``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc_breast"


def _scores(orders: list[list[int]], labels: list[str]) -> dict:
    from hashview.metrics import average_precision

    top1 = top5 = 0
    aps = []
    for query, order in enumerate(orders):
        ranked = [labels[c] for c in order]
        top1 += ranked[0] == labels[query]
        first5 = ranked[:5]
        top5 += max(set(first5), key=first5.count) == labels[query]
        aps.append(average_precision([label == labels[query] for label in ranked])[0])
    n = len(orders)
    return {"top1": top1 / n, "top5_majority": top5 / n, "map": float(np.mean(aps))}


def _speed(n_slides: int, per_slide: int, mosaics: list[int], queries: int) -> int:
    from hashview.bench.cases import describe, time_case_ranking

    for result in time_case_ranking(n_slides, per_slide, mosaics, queries):
        print(describe(result))
    return 0


def main(argv=None) -> int:
    from hashview.encode import Encoder, hamming_distance
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.search.cases import colour_histograms, rank_sources, select_mosaic
    from hashview.tiling import load_patch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--speed", action="store_true", help="time the ranking step alone")
    parser.add_argument("--slides", type=int, default=10_000)
    parser.add_argument("--tiles", type=int, default=3_000)
    parser.add_argument("--mosaic", type=int, action="append",
                        help="mosaic codes per query (repeatable; default 9 and 5 %% of --tiles)")
    parser.add_argument("--queries", type=int, default=3)
    args = parser.parse_args(argv)
    if args.speed:
        from hashview.bench.cases import mosaic_sizes

        return _speed(args.slides, args.tiles, args.mosaic or mosaic_sizes(args.tiles),
                      args.queries)
    if not (DATA / "labels.csv").is_file():
        print(f"case_search: {DATA}/labels.csv not found (the shared data folder beside the "
              "checkout)", file=sys.stderr)
        return 1
    loaded = load_model(args.model)
    trained_on = {p for split in (loaded.card.training or {}).get("splits", [])
                  if split.get("data_root") == "idc_breast" for p in split.get("train", [])}
    patients: dict[str, list[dict]] = defaultdict(list)
    with open(DATA / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            patients[row["patient_id"]].append(row)
    new = sorted(pid for pid, rows in patients.items()
                 if not any(r["path"] in trained_on for r in rows))
    encoder = Encoder(loaded, device="cpu")
    codes, pixels, owner, positions = [], [], [], []
    labels = []
    for index, pid in enumerate(new):
        rows = patients[pid]
        tiles = [encoder.to_input(load_patch(DATA / r["path"], encoder.input_size))
                 for r in rows]
        pixels.extend(tiles)
        codes.append(encoder.encode(tiles))
        owner += [index] * len(rows)
        positions += [(float(r["x"]), float(r["y"])) for r in rows]
        share = sum(r["label"] == "IDC" for r in rows) / len(rows)
        labels.append("IDC" if share >= args.threshold else "non-IDC")
    codes, owner = np.concatenate(codes), np.asarray(owner)
    histograms, positions = colour_histograms(np.stack(pixels)), np.asarray(positions)
    searcher = SimpleNamespace(codes=codes, tile_sources=owner, code_kind="binary", path="idc")
    median_orders, hit_orders = [], []
    for query in range(len(new)):
        mine = np.flatnonzero(owner == query)
        mosaic = mine[select_mosaic(histograms[mine], positions[mine])]
        ranked = rank_sources(searcher, codes[mosaic], exclude_sources={query})
        median_orders.append([sid for sid, _, _ in ranked])
        others = np.flatnonzero(owner != query)
        distances = hamming_distance(codes[mosaic], codes[others])  # (mosaic, others)
        count, best = defaultdict(int), {}
        for row in distances:
            for tile in np.lexsort((np.arange(len(row)), row))[:10]:
                case = int(owner[others[tile]])
                count[case] += 1
                best[case] = min(best.get(case, 99), int(row[tile]))
        hit_ranked = sorted(count, key=lambda c: (-count[c], best[c], c))
        rest = [c for c in range(len(new)) if c != query and c not in count]
        hit_orders.append(hit_ranked + rest)  # cases without a hit come last, by id
    n_idc = labels.count("IDC")
    print(f"IDC patients the model did not train on: {len(new)} ({n_idc} IDC at threshold "
          f"{args.threshold}, {len(new) - n_idc} non-IDC); model {loaded.card.name}; "
          f"{len(codes)} patches")
    print("| ranking | top-1 | top-5 majority | mAP over cases |")
    print("|---|---|---|---|")
    for name, orders in (("median of min (whole-slide search)", median_orders),
                         ("tile hits per case (top-10 each)", hit_orders)):
        s = _scores(orders, labels)
        print(f"| {name} | {s['top1']:.3f} | {s['top5_majority']:.3f} | {s['map']:.3f} |")
    # a random ranking: its top-1 is right as often as a candidate shares the query's label
    chance = np.mean([(labels.count(labels[q]) - 1) / (len(labels) - 1)
                      for q in range(len(labels))])
    print(f"| chance (random ranking), top-1 | {chance:.3f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
