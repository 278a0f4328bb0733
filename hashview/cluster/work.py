"""The work a cluster does for one indexing run, as plain functions and a class: planning a
slide, reading a chunk of tiles, encoding it. ``ray_index.py`` runs them as Ray tasks and
actors; here they import no Ray, so they are tested and reused without a cluster.

Nothing here raises for a bad file: a one-line reason comes back in the result instead, so the
driver reports the file by name and goes on with the others.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hashview.annotations.tiles import AnnotationOptions, labelled_tiles
from hashview.code_kinds import code_kind
from hashview.errors import HashViewError
from hashview.indexing import source_record
from hashview.library import fingerprint_file
from hashview.model_input import ModelInput
from hashview.slides import InputItem, open_source
from hashview.slides.image_source import load_rgb_image
from hashview.tiling import TilePlan, TilingParams, plan_tiles, read_tile_pixels, square_tile


@dataclass
class SlidePlan:
    """A planned slide: its source record and tiles, or why it cannot be indexed."""

    item: InputItem
    fingerprint: str = ""
    record: Optional[dict] = None
    plan: Optional[TilePlan] = None  # without its tissue mask (not needed to read tiles)
    failure: Optional[str] = None
    known: bool = False  # already in the library: nothing else was done
    labels: Optional[list] = None  # per tile, from the slide's annotations (None: not asked)
    warnings: list[str] = field(default_factory=list)  # whole lines, the slide's path in each

    @property
    def n_tiles(self) -> int:
        return len(self.plan.tiles) if self.plan is not None else 0


@dataclass
class TileChunk:
    """Model inputs read for one chunk; patches that could not be read are left out of
    ``pixels`` (``kept`` says which were read) with their reasons in ``failures``."""

    pixels: np.ndarray  # (n, S, S, 3) uint8; after encoding, the codes
    kept: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # patches: width, height
    failures: list[str] = field(default_factory=list)


def plan_slide(item: InputItem, params: TilingParams, input_size: int,
               known: frozenset = frozenset(),
               annotations: Optional[AnnotationOptions] = None) -> SlidePlan:
    """Fingerprint ``item`` and, unless its fingerprint is in ``known``, plan its tiles, and
    with ``annotations`` label them (keeping only the labelled ones when it says so), as a
    single-process run does."""
    try:
        fingerprint = fingerprint_file(item.path)
        if fingerprint in known:
            return SlidePlan(item, fingerprint, known=True)
        with open_source(item.path) as source:
            plan = plan_tiles(source, params, input_size=input_size)
            width, height = source.dimensions
            record = source_record(item, fingerprint, kind="slide", width=width, height=height,
                                   mpp=source.mpp, mpp_assumed=plan.mpp_assumed)
        warnings = [f"{item.path}: {w}" for w in plan.warnings]
        labels = None
        if annotations is not None:
            tiles, labels = labelled_tiles(item.path, plan.tiles, annotations, warnings)
            plan = dataclasses.replace(plan, tiles=tiles)
    except HashViewError as exc:
        return SlidePlan(item, failure=exc.message)
    return SlidePlan(item, fingerprint, record, dataclasses.replace(plan, mask=None),
                     labels=labels, warnings=warnings)


def _restainer(stain_reference: Optional[str]):
    """The re-staining of model inputs to a stain-normalised library's stored reference (its
    JSON text), done where tiles are read, as a single-process run's reader threads do; the
    identity without one."""
    if not stain_reference:
        return lambda pixels: pixels
    from hashview.stain_reference import normaliser_of
    return normaliser_of(stain_reference).restain


def read_slide_chunk(path: str | Path, plan: TilePlan, start: int, stop: int,
                     model_input: ModelInput, stain_reference: Optional[str] = None
                     ) -> TileChunk:
    """Model inputs of ``plan.tiles[start:stop]`` (re-stained to ``stain_reference`` when
    given); any unreadable tile fails the chunk (and so its slide), as in a single-process
    run."""
    tiles = plan.tiles[start:stop]
    restain = _restainer(stain_reference)
    try:
        with open_source(path) as source:
            pixels = [restain(model_input.array(read_tile_pixels(source, tile, plan)))
                      for tile in tiles]
    except HashViewError as exc:
        return TileChunk(_empty(model_input), failures=[exc.message])
    return TileChunk(_stack(pixels, model_input), kept=list(range(len(tiles))))


def read_patch_chunk(paths: Sequence[str | Path], model_input: ModelInput,
                     stain_reference: Optional[str] = None) -> TileChunk:
    """Model inputs of whole patch images (each one tile, re-stained to ``stain_reference``
    when given); unreadable ones are left out."""
    chunk = TileChunk(_empty(model_input))
    restain = _restainer(stain_reference)
    pixels = []
    for n, path in enumerate(paths):
        try:
            image = load_rgb_image(path)
        except HashViewError as exc:
            chunk.failures.append(exc.message)
            continue
        pixels.append(restain(model_input.array(square_tile(image, model_input.input_size))))
        chunk.kept.append(n)
        chunk.sizes.append(image.size)
    chunk.pixels = _stack(pixels, model_input)
    return chunk


def _empty(model_input: ModelInput) -> np.ndarray:
    side = model_input.input_size
    return np.zeros((0, side, side, 3), np.uint8)


def _stack(pixels: list, model_input: ModelInput) -> np.ndarray:
    return np.stack(pixels) if pixels else _empty(model_input)


class ChunkEncoder:
    """Loads the model once (per Ray actor) and encodes chunks with
    :class:`hashview.encode.Encoder`: CUDA with autocast when the process sees a GPU."""

    def __init__(self, model, device: str = "auto", batch_size: Optional[int] = None,
                 threads: Optional[int] = None):
        import torch

        from hashview.encode import Encoder

        if threads:
            torch.set_num_threads(threads)
        self.encoder = Encoder(model, device=device, batch_size=batch_size)

    def encode(self, chunk: TileChunk) -> TileChunk:
        """The chunk with its pixels replaced by their codes (one forward batch per chunk when
        the chunk is no larger than the batch size, as in a single-process run)."""
        codes = (self.encoder.encode(list(chunk.pixels)) if len(chunk.pixels)
                 else code_kind(self.encoder.code_kind).empty_encoded(self.encoder.bits))
        return dataclasses.replace(chunk, pixels=codes)

    def describe(self) -> dict:
        """Where this encoder runs: process id (to stop it in tests) and device."""
        return {"pid": os.getpid(), "device": str(self.encoder.device)}
