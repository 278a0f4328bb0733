"""How often the top-k cut of a search falls inside a run of equal Hamming distances, how
often the tiles tied past it carry a label other than the vote's, and how often they could
change the vote (the result then says "not settled"): every Kather-2016 tile of
``../shared/data`` searched against a library of all of them (its own file left out).

    python benchmarks/cut_ties.py --models mth-64-general dch-64 --k 5 10 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KATHER = ROOT.parent / "shared" / "data" / "kather2016_subset"
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


def cut_counts(model: str, files: list[Path], ks: list[int], work: Path) -> list[str]:
    """One table row per k for ``model``."""
    import hashview
    from hashview.indexing import index_paths

    library = work / f"{model.replace('/', '_')}.h5"
    index_paths([KATHER], library, model=model, device="cpu")
    session = hashview.open_library(str(library))
    rows = []
    for k in ks:
        cut = other = unsettled = 0
        for path in files:
            result = session.search(str(path), k=k, exclude_source=True)
            if result.cut_tie is not None:
                cut += 1
                if result.vote and any(label != result.vote.label
                                       for label in result.cut_tie.labels):
                    other += 1
                unsettled += "not settled" in result.summary
        rows.append(f"| {model} | {k} | {len(files)} | {cut} ({cut / len(files):.0%}) | "
                    f"{other} ({other / len(files):.0%}) | "
                    f"{unsettled} ({unsettled / len(files):.0%}) |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mth-64-general"])
    parser.add_argument("--k", nargs="+", type=int, default=[5, 10, 20])
    args = parser.parse_args(argv)
    if not KATHER.is_dir():
        print(f"cut_ties.py: {KATHER}: not found (the shared data folder beside the "
              "repository)", file=sys.stderr)
        return 2
    files = sorted(p for p in KATHER.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    print("| model | k | queries | cut inside a tie | a label past the cut other than the "
          "vote's | vote not settled |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for model in args.models:
            for row in cut_counts(model, files, args.k, Path(work)):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
