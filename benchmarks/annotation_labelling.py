"""Seconds to label a slide's tiles by annotation polygons (hashview.annotations.tiles).

A 100x100 grid of 224 px tiles (10,000 tiles, a large slide at 20x) against 40 wobbly outlines
of 2,000 vertices in 4 classes, placed with a fixed seed; the median of ``--repeats`` runs.

    .venv/bin/python benchmarks/annotation_labelling.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from shapely.geometry import Polygon

from hashview.annotations import Annotation
from hashview.annotations.tiles import label_tiles

GRID, SIDE, OUTLINES, VERTICES, CLASSES = 100, 224, 40, 2000, 4


def outlines(seed: int = 0) -> list[Annotation]:
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, VERTICES, endpoint=False)
    found = []
    for k in range(OUTLINES):
        cx, cy = rng.uniform(2000, GRID * SIDE - 2000, 2)
        radius = rng.uniform(800, 3000) * (1 + 0.15 * np.sin(7 * angles + k))
        ring = np.c_[cx + radius * np.cos(angles), cy + radius * np.sin(angles)]
        found.append(Annotation(Polygon(ring), f"class{k % CLASSES}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    xs, ys = (a.ravel() * SIDE for a in np.meshgrid(np.arange(GRID), np.arange(GRID)))
    sizes = np.full(xs.size, SIDE)
    annotations = outlines()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        labels = label_tiles(annotations, xs, ys, sizes)
        seconds.append(time.perf_counter() - start)
    labelled = sum(label is not None for label in labels)
    print(f"{xs.size} tiles, {OUTLINES} outlines x {VERTICES} vertices: "
          f"median {statistics.median(seconds):.3f} s over {args.repeats} runs "
          f"({labelled} tiles labelled)")


if __name__ == "__main__":
    main()
