"""Indexing throughput: tiles/s end to end and per stage, against the encoder alone.

For each slide (the shared real slides and a large synthetic pyramidal TIFF of real tissue tiles,
see :mod:`hashview.bench.synthetic`):

- **end to end**: :func:`hashview.indexing.index_paths` into a fresh library, wall time from the
  call to its return (tissue mask, reading, decoding, resampling, forward, packing, HDF5 write);
- **encoder alone**: tiles of the same slide (a sample spread over it), already read and
  transformed into model inputs in memory, through the same :class:`~hashview.encode.Encoder` at
  the same batch size (stacking, forward, packing): the ceiling the pipeline can reach. It runs
  before and after the end-to-end run and the mean is the reference, so a change of machine load
  during the run shows in the data;
- **per stage**: seconds per tile of each stage from :class:`hashview.timing.StageTimes`. Read
  and resize run on reader threads beside the forward pass, so their seconds are
  thread-seconds hidden behind the forward pass, not added to it. OpenSlide decodes JPEG inside
  ``read_region``: "read" is file read plus decode.

The model is the app's default. Every tissue tile of every slide is indexed in full mode: the
fixed per-slide costs (fingerprint, tissue mask, library commit) weigh as they do in real use.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from hashview.bench import Section, prepare
from hashview.bench.synthetic import make_synthetic_slide
from hashview.encode import Encoder
from hashview.indexing import index_paths, model_tiling, tile_loader
from hashview.models import DEFAULT_MODEL, LoadedModel, load_model
from hashview.progress import ProgressCallback, report
from hashview.slides import open_source
from hashview.timing import StageTimes
from hashview.tiling import TilingParams, plan_tiles

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("HASHVIEW_DATA", REPO.parent / "shared" / "data"))
STAGES = ["read", "resize", "batch", "forward", "pack", "write"]

# mode -> (synthetic slide side in px, max tiles per real slide, max tiles of the synthetic one)
PLANS = {"quick": (600, 8, 8), "full": (12000, None, None)}
# Tiles (evenly spread over the slide) the encoder alone is timed on: its rate does not depend on
# which tiles, and a sample keeps the reference runs short beside a whole-slide run.
ENCODER_SAMPLE = {"quick": 8, "full": 512}


def real_slides() -> list[Path]:
    """The shared real slides (``$HASHVIEW_DATA``, default ``../shared/data``), else the
    repository's test slide, so quick mode runs from a bare checkout too."""
    shared = [SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs",
              SHARED_DATA / "wsi" / "TCGA-CR-7395-01A-01-TS1-crop.svs"]
    found = [p for p in shared if p.exists()]
    return found or [REPO / "tests" / "data" / "CMU-1-Small-Region.svs"]


def tissue_tiles_folder() -> Path:
    """Labelled real tissue tiles for the synthetic slide (Kather-2016)."""
    shared = SHARED_DATA / "kather2016_subset"
    return shared if shared.exists() else REPO / "tests" / "data" / "kather"


def slides_for(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None
               ) -> list[tuple[Path, Optional[int]]]:
    """``(slide, max_tiles)`` for this mode; the synthetic slide is built (or reused) here."""
    side, real_max, synthetic_max = PLANS[mode]
    synthetic = make_synthetic_slide(workdir / f"synthetic-{side}.tiff", tissue_tiles_folder(),
                                     side, progress=progress)
    real = real_slides()[:1] if mode == "quick" else real_slides()
    return [(path, real_max) for path in real] + [(synthetic, synthetic_max)]


def encoder_alone(encoder: Encoder, inputs: list[np.ndarray]) -> float:
    """Seconds for the encoder on in-memory model inputs (stack, forward, pack)."""
    start = time.perf_counter()
    for _ in encoder.encode_batches(inputs, total=len(inputs)):
        pass
    return time.perf_counter() - start


def measure_slide(path: Path, loaded: LoadedModel, params: TilingParams, device: str,
                  batch_size: Optional[int], workdir: Path, sample: int) -> dict:
    """End to end and encoder-alone numbers for one slide (see the module notes)."""
    encoder = Encoder(loaded, device=device, batch_size=batch_size)
    with open_source(path) as source:
        plan = plan_tiles(source, params, input_size=encoder.input_size)
        load = tile_loader(source, plan, encoder)
        picks = np.linspace(0, len(plan.tiles) - 1, min(sample, len(plan.tiles))).astype(int)
        inputs = [load(plan.tiles[i]) for i in picks]
        grid, tissue = plan.grid_count, plan.tissue_count
    encoder_alone(encoder, inputs[:encoder.batch_size])  # warm-up: first-call allocations
    before = encoder_alone(encoder, inputs)

    library = workdir / f"{path.stem}-{device}.h5"
    library.unlink(missing_ok=True)
    times = StageTimes()
    start = time.perf_counter()
    result = index_paths([path], library, model=loaded, params=params, device=device,
                         batch_size=encoder.batch_size, times=times)
    end_to_end = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(f"indexing {path} failed: {result.failed[0]}")
    after = encoder_alone(encoder, inputs)
    n = result.tiles_added
    alone = (before + after) / 2 * n / len(inputs)  # the encoder alone's time for n tiles
    return {
        "slide": path.name, "device": encoder.device.type, "batch_size": encoder.batch_size,
        "tiles": n, "grid_tiles": grid, "tissue_tiles": tissue,
        "end_to_end_s": round(end_to_end, 3), "end_to_end_tiles_per_s": round(n / end_to_end, 1),
        "encoder_sample_tiles": len(inputs),
        "encoder_alone_sample_s": [round(before, 3), round(after, 3)],
        "encoder_alone_tiles_per_s": round(n / alone, 1),
        "ratio": round(alone / end_to_end, 3),
        "stages": times.to_dict(),
        "library_bytes": library.stat().st_size,
    }


def _row(m: dict) -> list:
    stages = m["stages"]
    per_tile_ms = [f"{1000 * stages[s]['seconds'] / max(1, m['tiles']):.2f}"
                   if s in stages else "-" for s in STAGES]
    mask = stages.get("tissue mask", {}).get("seconds", 0.0)
    return ([m["slide"], m["device"], m["batch_size"], m["tiles"], m["end_to_end_tiles_per_s"],
             m["encoder_alone_tiles_per_s"], f"{m['ratio']:.0%}", f"{mask:.2f}"] + per_tile_ms)


def run(mode: str, workdir: Path, progress: Optional[ProgressCallback] = None) -> Section:
    import torch

    workdir = prepare(mode, workdir)
    loaded = load_model(DEFAULT_MODEL)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    measured = []
    slides = slides_for(mode, workdir, progress)
    for d, device in enumerate(devices):
        for s, (path, max_tiles) in enumerate(slides):
            report(progress, "throughput", d * len(slides) + s, len(devices) * len(slides),
                   path.name)
            params = dataclasses.replace(model_tiling(loaded.card), max_tiles=max_tiles)
            measured.append(measure_slide(path, loaded, params, device, None, workdir,
                                          ENCODER_SAMPLE[mode]))
    card = loaded.card
    notes = [
        f"Model `{card.name}` ({card.arch}, {card.bits} bits, {card.input_size} px input); tiles "
        f"of {card.tile_size} px at {card.target_mpp} µm/px (the model's training tiling).",
        "end to end = `index_paths` wall time (fingerprint, tissue mask, read, decode, "
        "resample, forward, pack, HDF5 write) into a fresh library; encoder alone = tiles of the "
        f"same slide already decoded in memory (up to {ENCODER_SAMPLE[mode]} spread over it) "
        "through the same encoder and batch size, timed before and after the end-to-end run "
        "(mean); ratio = end to end tiles/s / encoder alone tiles/s.",
        "ms/tile columns are thread-seconds per tile: read (OpenSlide read_region, which "
        "includes JPEG decode) and resize (one Lanczos resample to the model input) run on "
        "reader threads overlapped with the forward pass.",
        f"The synthetic slide ({PLANS[mode][0]} px square, {measured[-1]['tissue_tiles']} "
        f"tissue tiles) is a JPEG pyramidal TIFF of real Kather-2016 tiles built by "
        f"`hashview.bench.synthetic`"
        + (f"; a seeded subset of {PLANS[mode][2]} of its tiles is indexed." if PLANS[mode][2]
           else "; all of its tissue tiles are indexed."),
    ]
    if "cuda" not in devices:
        notes.append("CUDA: unmeasured (no CUDA device on this machine). The CUDA path (fp16 "
                     "autocast, channels-last, pinned memory, non-blocking copies, batch 256, "
                     "more reader threads) is exercised only where a GPU is present.")
    return Section(
        name="throughput",
        title="Indexing throughput (tiles/s, end to end vs encoder alone)",
        columns=["slide", "device", "batch", "tiles", "end to end tiles/s",
                 "encoder alone tiles/s", "ratio", "tissue mask s"]
        + [f"{s} ms/tile" for s in STAGES],
        rows=[_row(m) for m in measured],
        notes=notes,
        data={"slides": measured, "model": card.name},
    )
