"""Forward-pass speed of models, tiles/s, on random tiles at each model's input size: how much
a larger input or another architecture costs at indexing time, without slides or disk reads
(``hashview bench`` measures the whole indexing path of the default model).

    python benchmarks/encode_speed.py mth-64-general /tmp/hv-gen/final/mth-64-general.safetensors
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiles_per_second(model: str, tiles: int, repeats: int, device: str) -> tuple[int, float]:
    """(input size, best tiles/s over ``repeats`` runs) of ``Encoder.encode`` on seeded random
    model-input arrays (forward and packing; a warm-up batch first)."""
    import numpy as np

    from hashview.encode import Encoder
    from hashview.models import load_model

    encoder = Encoder(load_model(model), device=device)
    side = encoder.input_size
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(tiles)]
    encoder.encode(arrays[:encoder.batch_size])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(arrays)
        best = min(best, time.perf_counter() - start)
    return side, tiles / best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model names or files")
    parser.add_argument("--tiles", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    print("| model | input px | tiles/s (best of runs) |\n|---|---|---|")
    for model in args.models:
        side, speed = tiles_per_second(model, args.tiles, args.repeats, args.device)
        print(f"| {model} | {side} | {speed:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
