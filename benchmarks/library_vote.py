"""What the app's vote gets right, end to end: a labelled set's training part is indexed into a
library folder by folder, as a user indexes class folders, and every held-out file is searched
through the library session (``LibrarySession.search``, what the app and ``hashview search``
run); the vote over the top k is scored against the file's label.

    python benchmarks/library_vote.py --models mth-64-idc dch-64-idc --sets idc
    python benchmarks/library_vote.py --models mth-64-general --sets kather oral osteo \\
        --tie-order shuffle index

Split seed 0 of each set (IDC by patient, the others 70/30 per class): every bundled Kather and
IDC model trained on split 0's training part only, so the queries are new to them.
``--tie-order index`` ranks equal distances by tile index, the rule before the fixed shuffle
(:func:`hashview.code_kinds.tie_keys`), to measure what the shuffle changed. Balanced = mean
per-class recall of the vote (IDC is 72 % non-IDC, oral 77 % OSCC).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
SETS = {"idc": ("idc_breast", "patient"), "kather": ("kather2016_subset", "hatdh"),
        "oral": ("tissue_multi_lab/oral_oscc", "hatdh"),
        "osteo": ("tissue_multi_lab/osteosarcoma", "hatdh")}


@contextmanager
def tie_order(rule: str):
    """``shuffle``: the search as shipped; ``index``: equal distances by tile index."""
    import hashview.code_kinds as code_kinds
    import hashview.search.query as query

    shipped = code_kinds.tie_keys
    if rule == "index":
        def by_index(ids):
            return np.asarray(ids, dtype=np.int64).astype(np.uint64)
        code_kinds.tie_keys = query.tie_keys = by_index
    try:
        yield
    finally:
        code_kinds.tie_keys = query.tie_keys = shipped


def library_folder(data, indices, folder: Path) -> Path:
    """The files of ``indices`` linked under ``folder`` at their own relative paths, with a
    labels.csv naming their labels (so class folders and label files both read alike)."""
    lines = ["path,label"]
    for i in indices:
        relative = Path(data.paths[i])
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(data.root / relative, folder / relative)
        lines.append(f"{relative.as_posix()},{data.labels[i]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def measure(model: str, set_name: str, k: int, rules, work: Path) -> list[str]:
    """Table rows: one per tie rule, for ``model`` on ``set_name``."""
    import hashview
    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.indexing import index_paths
    from hashview.metrics import balanced_accuracy

    folder, protocol = SETS[set_name]
    data = load_dataset(DATA / folder)
    split = resolve_splits(data, None, protocol, [0], 0.7)[0]
    train, test = split.indices(data.paths)
    run = work / f"{model}-{set_name}".replace("/", "_")
    library = run / "library.h5"
    index_paths([library_folder(data, train, run / "files")], library, model=model,
                device="cpu")
    session = hashview.open_library(str(library))
    truth = np.asarray([data.labels[i] for i in test])
    rows = []
    for rule in rules:
        predicted, unsettled, start = [], 0, time.perf_counter()
        with tie_order(rule):
            for i in test:
                result = session.search(str(data.root / data.paths[i]), k=k)
                predicted.append(result.vote.label if result.vote else "")
                unsettled += "not settled" in result.summary
        predicted = np.asarray(predicted)
        rows.append(f"| {model} | {set_name} | {rule} | {len(test)} | "
                    f"{balanced_accuracy(truth, predicted):.3f} | "
                    f"{(predicted == truth).mean():.3f} | {unsettled / len(test):.0%} | "
                    f"{time.perf_counter() - start:.0f} s |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mth-64-general"])
    parser.add_argument("--sets", nargs="+", default=["idc"], choices=list(SETS))
    parser.add_argument("--tie-order", nargs="+", default=["shuffle"],
                        choices=["shuffle", "index"])
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    for set_name in args.sets:
        if not (DATA / SETS[set_name][0]).is_dir():
            print(f"library_vote.py: {DATA / SETS[set_name][0]}: not found (the shared data "
                  "folder beside the repository)", file=sys.stderr)
            return 2
    print(f"| model | set | ties | queries | balanced vote@{args.k} | vote@{args.k} | "
          "not settled | search |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for model in args.models:
            for set_name in args.sets:
                for row in measure(model, set_name, args.k, args.tie_order, Path(work)):
                    print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
