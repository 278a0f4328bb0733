"""How slide tiles are read for indexing: the measurements behind docs/benchmarks.md's notes.

Four parts (``--only`` picks some):

- ``rules``: codes of the same tiles read the way indexing reads them now (pyramid level
  chosen for the model input, one resample) against the earlier rule (level chosen for the
  library's tile size, resampled to it, then to the model input): bits that differ per tile.
- ``level``: retrieval quality when tiles come from a scanner's 2x level, emulated on the Kather
  tiles (2x box reduction + JPEG q80, then the model-input resample), against full resolution,
  on the default model's own split (database = train part, queries = test part).
- ``schedule``: end-to-end indexing of the synthetic slide with a batch read on every core then
  encoded (the CPU schedule) against reading overlapped with the forward pass (the GPU one),
  alternating ``--repeats`` times.
- ``alpha``: ms per tile to turn OpenSlide's opaque RGBA into RGB by compositing on white
  against dropping the alpha channel.

    python benchmarks/tile_reads.py --only rules,level,alpha
    python benchmarks/tile_reads.py --only schedule --repeats 3     # needs an idle machine

Data from ``../shared/data`` (``HASHVIEW_DATA``); the synthetic slide is made (or reused) in
``/tmp/hashview-bench`` as ``hashview bench`` does.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("rules", "level", "schedule", "alpha")
WORKDIR = Path("/tmp/hashview-bench")


def _slides() -> list[Path]:
    from hashview.bench.synthetic import make_synthetic_slide
    from hashview.bench.throughput import real_slides, tissue_tiles_folder

    synthetic = make_synthetic_slide(WORKDIR / "synthetic-12000.tiff", tissue_tiles_folder(),
                                     12000)
    return real_slides() + [synthetic]


def rules(loaded, max_tiles: int = 400) -> list[dict]:
    import numpy as np

    from hashview.encode import Encoder
    from hashview.indexing import model_tiling
    from hashview.slides import open_source
    from hashview.tiling import plan_tiles, read_tile_pixels, square_tile

    encoder = Encoder(loaded, device="cpu")
    params = model_tiling(loaded.card)
    out = []
    for path in _slides():
        with open_source(path) as source:
            before = plan_tiles(source, params)
            now = plan_tiles(source, params, input_size=encoder.input_size)
            tiles = before.tiles[:max_tiles]
            old = [square_tile(square_tile(read_tile_pixels(source, t, before),
                                           before.tile_size), encoder.input_size)
                   for t in tiles]
            new = [square_tile(read_tile_pixels(source, t, now), encoder.input_size)
                   for t in tiles]
        a, b = encoder.encode(old), encoder.encode(new)
        bits = np.unpackbits(a ^ b, axis=1).sum(axis=1)
        out.append({"slide": path.name, "tiles": len(tiles),
                    "level_before": before.level, "read_px_before": before.read_size,
                    "level_now": now.level, "read_px_now": now.read_size,
                    "bits_differing_mean": round(float(bits.mean()), 2),
                    "bits_differing_median": float(np.median(bits)),
                    "bits_differing_max": int(bits.max())})
    return out


def level(loaded) -> dict:
    import numpy as np
    from PIL import Image

    from hashview.encode import Encoder
    from hashview.evaluation import load_dataset
    from hashview.metrics import evaluate_codes
    from hashview.slides.image_source import load_rgb_image
    from hashview.splits import Split
    from hashview.tiling import square_tile
    from hashview.bench.throughput import SHARED_DATA

    data = load_dataset(SHARED_DATA / "kather2016_subset")
    split = Split.from_dict(loaded.card.split)
    train, test = split.indices(data.paths)
    encoder = Encoder(loaded, device="cpu")
    images = [load_rgb_image(e.path) for e in data.entries]

    def scanner_2x(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.reduce(2).save(buffer, "JPEG", quality=80)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")

    codes = {"full": encoder.encode([square_tile(im, encoder.input_size) for im in images]),
             "2x": encoder.encode([square_tile(scanner_2x(im), encoder.input_size)
                                   for im in images])}
    labels = np.array(data.labels)
    out = {}
    for db, query in (("full", "full"), ("2x", "2x"), ("2x", "full")):
        scores = evaluate_codes(codes[db][train], labels[train], codes[query][test],
                                labels[test], encoder.bits)
        out[f"database {db}, queries {query}"] = {
            "map": round(scores["map"], 4), "vote@10": round(scores["vote_accuracy@10"], 4)}
    return out


def schedule(loaded, repeats: int) -> list[dict]:
    import numpy as np

    import hashview.indexing as indexing
    from hashview.bench.throughput import encoder_alone
    from hashview.encode import Encoder
    from hashview.slides import open_source
    from hashview.tiling import plan_tiles

    slide = _slides()[-1]
    params = indexing.model_tiling(loaded.card)
    encoder = Encoder(loaded, device="cpu")
    with open_source(slide) as source:
        plan = plan_tiles(source, params, input_size=encoder.input_size)
        load = indexing.tile_loader(source, plan, encoder)
        picks = np.linspace(0, len(plan.tiles) - 1, 512).astype(int)
        inputs = [load(plan.tiles[i]) for i in picks]
    encoder_alone(encoder, inputs[:64])
    batchwise = indexing._loaded

    def overlapped(load_, items, pool, encoder_):
        return indexing._prefetched(load_, items, pool,
                                    depth=indexing.PREFETCH_BATCHES * encoder_.batch_size)

    out = []
    try:
        for _ in range(repeats):
            for name, scheduler in (("overlapped", overlapped), ("read then encode", batchwise)):
                indexing._loaded = scheduler
                library = WORKDIR / "schedule.h5"
                library.unlink(missing_ok=True)
                before = encoder_alone(encoder, inputs)
                start = time.perf_counter()
                report = indexing.index_paths([slide], library, model=loaded, params=params,
                                              device="cpu")
                seconds = time.perf_counter() - start
                alone = (before + encoder_alone(encoder, inputs)) / 2 / len(inputs)
                n = report.tiles_added
                out.append({"schedule": name, "tiles": n, "tiles_per_s": round(n / seconds, 1),
                            "ratio": round(alone * n / seconds, 3)})
                print(json.dumps(out[-1]), flush=True)
    finally:
        indexing._loaded = batchwise
    return out


def alpha() -> dict:
    import openslide

    from hashview.bench.throughput import real_slides
    from hashview.slides.base import composite_on_white

    handle = openslide.OpenSlide(str(real_slides()[0]))
    regions = [handle.read_region((x, y), 0, (150, 150))
               for x in range(0, 1500, 150) for y in range(0, 1500, 150)]
    regions = [r for r in regions if r.getchannel("A").getextrema() == (255, 255)]

    def per_tile_ms(convert) -> float:
        start = time.perf_counter()
        for region in regions:
            convert(region)
        return round(1000 * (time.perf_counter() - start) / len(regions), 3)

    def composite(region):  # what composite_on_white did for every RGBA region before
        from PIL import Image
        canvas = Image.new("RGB", region.size, (255, 255, 255))
        canvas.paste(region, mask=region.getchannel("A"))
        return canvas

    return {"tiles": len(regions), "composite_on_white_ms": per_tile_ms(composite),
            "drop_alpha_ms": per_tile_ms(composite_on_white)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"any of {PARTS}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the app's default model")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r} (use {PARTS})")
    from hashview.models import DEFAULT_MODEL, load_model

    loaded = load_model(args.model or DEFAULT_MODEL)
    results = {"model": loaded.card.name}
    if "rules" in parts:
        results["rules"] = rules(loaded)
    if "level" in parts:
        results["level"] = level(loaded)
    if "schedule" in parts:
        results["schedule"] = schedule(loaded, args.repeats)
    if "alpha" in parts:
        results["alpha"] = alpha()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
