"""What stain normalisation costs per tile (ms), as index and query time would pay it.

    OMP_NUM_THREADS=1 python benchmarks/stain_normalise_cost.py [--reference PATH]
        [--sizes 64,96,224] [--tiles 200] [--data-root ../shared/data]

Kather tiles resized to each model input side are re-stained to the reference (Macenko, then
Reinhard) one at a time on one thread, after one untimed warm-up pass; prints ms/tile (median
of three passes) and the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from hashview.stain import METHODS, fit_stain_target  # noqa: E402


def kather_tiles(root: Path, count: int, size: int) -> list[np.ndarray]:
    from hashview.tiling import load_patch
    files = sorted((root / "kather2016_subset").glob("*/*.tif"))
    step = max(1, len(files) // count)
    return [np.asarray(load_patch(f, size)) for f in files[::step][:count]]


def ms_per_tile(transfer, tiles: list[np.ndarray], passes: int = 3) -> float:
    for tile in tiles:  # warm-up: imports, caches
        transfer.restain(tile)
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        for tile in tiles:
            transfer.restain(tile)
        times.append((time.perf_counter() - started) / len(tiles) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--reference", default=None,
                        help="default: samples/he-stain-target-1000.png under the data root")
    parser.add_argument("--sizes", default="64,96,224")
    parser.add_argument("--tiles", type=int, default=200)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    root = Path(args.data_root)
    reference = args.reference or root / "samples" / "he-stain-target-1000.png"
    print(f"reference {reference}; load average before {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    print("| tile side | " + " | ".join(f"{m} ms/tile" for m in METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for size in (int(s) for s in args.sizes.split(",")):
        tiles = kather_tiles(root, args.tiles, size)
        cells = [f"{ms_per_tile(fit_stain_target(reference, method), tiles):.2f}"
                 for method in METHODS]
        print(f"| {size} px | " + " | ".join(cells) + " |")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
