"""Time of a copy-on-write library edit (docs/benchmarks.md, "Editing a library").

Builds a library of synthetic 64-bit codes (``--sources`` x ``--tiles`` tiles, random codes,
seven labels) in a temporary folder, then times one metadata edit (one key on one source),
one removal (one source) and one relabel (one source), each a rewrite of the whole file.

    python benchmarks/library_edit.py [--sources 1000] [--tiles 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hashview.library import Library, editing


def build(path: Path, n_sources: int, tiles: int) -> None:
    rng = np.random.default_rng(0)
    with Library.create(path, "bench-64", "hatdh", 64, "b" * 64) as lib:
        for first in range(0, n_sources, 100):
            lib.add_sources([({"path": f"/slides/slide-{i:06d}.svs", "fingerprint": f"fp-{i}",
                               "label": f"class-{i % 7}", "patient_id": f"P{i % 97}"},
                              rng.integers(0, 256, (tiles, 8), dtype=np.uint8),
                              np.arange(tiles) * 224, np.zeros(tiles, np.int64),
                              np.full(tiles, 224))
                             for i in range(first, min(first + 100, n_sources))])


def timed(edit) -> float:
    t0 = time.perf_counter()
    edit()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--tiles", type=int, default=1000, help="tiles per source")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lib.h5"
        t_build = timed(lambda: build(path, args.sources, args.tiles))
        size = path.stat().st_size
        print(f"library: {args.sources * args.tiles:,} tiles, {args.sources:,} sources, "
              f"{size / 1e6:.1f} MB (built in {t_build:.1f} s)")
        runs = {
            "metadata edit (1 key, 1 source)":
                lambda i: editing.set_case_data(path, {i: {"stain": f"HE-{i}"}}),
            "relabel 1 source": lambda i: editing.relabel_sources(path, [i], f"new-{i}"),
            "remove 1 source": lambda i: editing.remove_sources(path, [i]),
        }
        for name, edit in runs.items():
            seconds = [timed(lambda: edit(r)) for r in range(args.repeat)]
            print(f"{name}: median {statistics.median(seconds):.2f} s "
                  f"(runs {', '.join(f'{s:.2f}' for s in seconds)}); file "
                  f"{path.stat().st_size / 1e6:.1f} MB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
