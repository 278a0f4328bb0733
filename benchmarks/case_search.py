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

    python benchmarks/case_search.py --synthetic [--model M] [--workdir DIR]

``--speed`` times the ranking step alone on random 64-bit codes (no data needed): queries of
``--mosaic`` codes against ``--slides`` x ``--tiles`` library tiles, top 5, the median of
``--queries`` (:mod:`hashview.bench.cases`, also ``hashview bench --only cases``).

``--synthetic`` measures the same two rankings end to end on synthetic whole slides made of the
Kather-2016 tiles (:mod:`hashview.bench.synthetic`): 1,800 px slides of 150 px cells, tissue in
regions of 2 x 2 cells, each slide dominated by one class (80 % of the regions, the rest spread
over the other classes) or by two (55 % + 30 %, the rest spread); its label is the class
holding most of its tissue cells. The 7 tissue classes (empty glass left out) give
:data:`QUERIES_PER_CLASS` query slides and :data:`LIBRARY_PER_CLASS` library slides each. Query
slides are made only of the model's Kather test tiles and library slides only of its training
tiles (the split on its card), so a query never shares a tile with the library and the model
never trained on a query's tiles. The library slides are indexed (``index_paths``) and every
query slide is searched as a new slide (``search_cases``: tiling, mosaic, encoding).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc_breast"
KATHER = DATA.parent / "kather2016_subset"
SLIDE_SIDE = 1800          # 12 x 12 Kather cells
QUERIES_PER_CLASS = 3
LIBRARY_PER_CLASS = 4
EMPTY_CLASS = "08_EMPTY"   # glass, not tissue: no slide is made of it


def _scores(orders: list[list[int]], labels, query_labels: Optional[list] = None) -> dict:
    """Top-1, top-5 majority and mAP of ranked candidate ``orders`` (one per query);
    ``labels[c]`` is candidate c's label, ``query_labels`` the queries' (default: the queries
    are the candidates, ``labels`` by query index)."""
    from hashview.metrics import average_precision

    query_labels = labels if query_labels is None else query_labels
    top1 = top5 = 0
    aps = []
    for query, order in enumerate(orders):
        ranked = [labels[c] for c in order]
        top1 += ranked[0] == query_labels[query]
        first5 = ranked[:5]
        # a tie goes to the label ranked first: reproducible, unlike a set's order
        majority = max(first5, key=lambda label: (first5.count(label), -first5.index(label)))
        top5 += majority == query_labels[query]
        aps.append(average_precision([label == query_labels[query] for label in ranked])[0])
    n = len(orders)
    return {"top1": top1 / n, "top5_majority": top5 / n, "map": float(np.mean(aps))}


def tile_hit_order(mosaic_codes: np.ndarray, codes: np.ndarray, owner: np.ndarray,
                   candidates: list[int], top: int = 10) -> list[int]:
    """Candidates ranked by how many of each mosaic code's ``top`` nearest tiles among theirs
    they hold (ties by best distance, then id); candidates without a hit last, by id."""
    from hashview.encode import hamming_distance

    pool = np.flatnonzero(np.isin(owner, candidates))
    distances = hamming_distance(mosaic_codes, codes[pool])  # (mosaic, pool)
    count, best = defaultdict(int), {}
    for row in distances:
        for tile in np.lexsort((np.arange(len(row)), row))[:top]:
            case = int(owner[pool[tile]])
            count[case] += 1
            best[case] = min(best.get(case, 99), int(row[tile]))
    ranked = sorted(count, key=lambda c: (-count[c], best[c], c))
    return ranked + [c for c in sorted(candidates) if c not in count]


def _chance(candidates: list[int], labels, query_labels: list, repeats: int = 1000) -> dict:
    """The scores of random rankings, the mean over ``repeats`` draws (seeded)."""
    rng = np.random.default_rng(0)
    draws = [_scores([list(rng.permutation(candidates)) for _ in query_labels], labels,
                     query_labels) for _ in range(repeats)]
    return {key: float(np.mean([d[key] for d in draws])) for key in draws[0]}


def _table(rows: list[tuple[str, dict]], first: str = "ranking") -> None:
    print(f"| {first} | top-1 | top-5 majority | mAP over cases |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['top1']:.3f} | {s['top5_majority']:.3f} | {s['map']:.3f} |")


def _speed(n_slides: int, per_slide: int, mosaics: list[int], queries: int) -> int:
    from hashview.bench.cases import describe, time_case_ranking

    for result in time_case_ranking(n_slides, per_slide, mosaics, queries):
        print(describe(result))
    return 0


def class_shares(dominant: int, second: Optional[int], n_classes: int) -> list[float]:
    """A slide's share of regions per class: one class 80 %, or two 55 % + 30 %; the rest
    spread evenly over the other classes."""
    shares = np.zeros(n_classes)
    if second is None:
        shares[dominant] = 0.8
    else:
        shares[dominant], shares[second] = 0.55, 0.30
    rest = shares == 0
    shares[rest] = (1 - shares.sum()) / rest.sum()
    return shares.tolist()


def synthetic_slides(split: dict, workdir: Path, seed: int = 0) -> list[dict]:
    """Query slides of the split's test tiles, library slides of its training tiles, written
    once per split: ``[{"path", "label", "role", "tiles" (the Kather files used), ...}]``."""
    import hashlib

    from PIL import Image

    from hashview.bench.synthetic import (CELL, class_layout, make_synthetic_slide,
                                          tissue_cells)

    classes = sorted({f.split("/")[0] for f in split["train"]} - {EMPTY_CLASS})
    folder = workdir / hashlib.sha256(repr((sorted(split["train"]), sorted(split["test"]),
                                            seed)).encode()).hexdigest()[:12]
    tissue = tissue_cells(SLIDE_SIDE, SLIDE_SIDE)
    slides = []
    for role, per_class, files in (("query", QUERIES_PER_CLASS, split["test"]),
                                   ("library", LIBRARY_PER_CLASS, split["train"])):
        names = sorted(f for f in files if f.split("/")[0] in classes)  # grouped by class
        pixels = [np.asarray(Image.open(KATHER / f).convert("RGB").resize((CELL, CELL)))
                  for f in names]
        counts = np.array([sum(f.split("/")[0] == c for f in names) for c in classes])
        first = np.r_[0, np.cumsum(counts)[:-1]]
        for c, name in enumerate(classes):
            for j in range(per_class):
                rng = np.random.default_rng([seed, role == "query", c, j])
                # every other slide has a second class, at random among the others
                second = (int(rng.choice([o for o in range(len(classes)) if o != c]))
                          if j % 2 else None)
                layout = class_layout(SLIDE_SIDE, class_shares(c, second, len(classes)),
                                      seed=int(rng.integers(1 << 31)))
                draws = rng.integers(0, 1 << 31, layout.shape)
                cell_tiles = first[layout] + draws % counts[layout]
                label = classes[np.bincount(layout[tissue], minlength=len(classes)).argmax()]
                path = make_synthetic_slide(folder / f"{role}-{name}-{j}.tiff", None, SLIDE_SIDE,
                                            seed=j, tiles=pixels, cell_tiles=cell_tiles)
                slides.append({"path": path, "label": label, "role": role,
                               "tiles": sorted({names[t] for t in cell_tiles[tissue]}),
                               "dominant": name,
                               "second": None if second is None else classes[second]})
    return slides


def _synthetic(model: str, workdir: Path) -> int:
    import hashview
    from hashview.indexing import index_paths
    from hashview.models import load_model
    from hashview.search.cases import search_cases

    loaded = load_model(model)
    split = loaded.card.split or {}
    if split.get("data_root") != KATHER.name or not KATHER.is_dir():
        print(f"case_search: {model} has no Kather split on its card, or {KATHER} is missing",
              file=sys.stderr)
        return 1
    slides = synthetic_slides(split, workdir)
    queries = [s for s in slides if s["role"] == "query"]
    library_slides = [s for s in slides if s["role"] == "library"]
    shared = {t for s in queries for t in s["tiles"]} & {t for s in library_slides
                                                          for t in s["tiles"]}
    assert not shared, f"query and library slides share tiles: {sorted(shared)[:3]}"
    library = workdir / f"library-{loaded.card.name}-{loaded.card.sha256[:12]}.h5"
    if not library.exists():
        report = index_paths([s["path"] for s in library_slides], library, model=loaded,
                             device="cpu")
        assert not report.failed, report.failed
    session = hashview.open_library(library, device="cpu")
    searcher = session.load()
    label_of_path = {str(s["path"]): s["label"] for s in library_slides}
    labels = {src.id: label_of_path[src.path] for src in session.sources}
    candidates = sorted(labels)
    median_orders, hit_orders, mosaic_sizes, query_tiles = [], [], [], []
    for query in queries:
        found = search_cases(session, query["path"], k=len(candidates))
        assert not found.query_from_library
        median_orders.append([s.source_id for s in found.sources])
        mosaic_codes = session.encoder.encode(found.mosaic_images)
        hit_orders.append(tile_hit_order(mosaic_codes, searcher.codes, searcher.tile_sources,
                                         candidates))
        mosaic_sizes.append(len(found.mosaic))
        query_tiles.append(found.query_tiles)
    query_labels = [q["label"] for q in queries]
    print(f"model {loaded.card.name}: {len(queries)} query slides (Kather test tiles) against "
          f"{len(candidates)} library slides (training tiles), {searcher.n_tiles} library "
          f"tiles; query slides of {min(query_tiles)}-{max(query_tiles)} tissue tiles, "
          f"mosaics of {min(mosaic_sizes)}-{max(mosaic_sizes)}; labels "
          f"{dict(sorted((lab, query_labels.count(lab)) for lab in set(query_labels)))} (queries)")
    _table([("median of min (whole-slide search)",
             _scores(median_orders, labels, query_labels)),
            ("tile hits per case (top-10 each)", _scores(hit_orders, labels, query_labels)),
            ("chance (random ranking, mean of 1,000)",
             _chance(candidates, labels, query_labels))])
    return 0


def main(argv=None) -> int:
    from hashview.encode import Encoder
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.search.cases import colour_histograms, rank_sources, select_mosaic
    from hashview.tiling import load_patch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--speed", action="store_true", help="time the ranking step alone")
    parser.add_argument("--synthetic", action="store_true",
                        help="synthetic slides of Kather tiles instead of IDC patients")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hashview-case-search"))
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
    if args.synthetic:
        return _synthetic(args.model, args.workdir.resolve())
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
        others = [c for c in range(len(new)) if c != query]
        hit_orders.append(tile_hit_order(codes[mosaic], codes, owner, others))
    n_idc = labels.count("IDC")
    print(f"IDC patients the model did not train on: {len(new)} ({n_idc} IDC at threshold "
          f"{args.threshold}, {len(new) - n_idc} non-IDC); model {loaded.card.name}; "
          f"{len(codes)} patches")
    _table([("median of min (whole-slide search)", _scores(median_orders, labels)),
            ("tile hits per case (top-10 each)", _scores(hit_orders, labels))])
    # a random ranking: its top-1 is right as often as a candidate shares the query's label
    chance = np.mean([(labels.count(labels[q]) - 1) / (len(labels) - 1)
                      for q in range(len(labels))])
    print(f"| chance (random ranking), top-1 | {chance:.3f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
