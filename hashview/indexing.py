"""Index slides, images and patch folders into a library: the one writer path.

``index_paths`` is what ``hashview index`` and the app's background indexing jobs run. It goes on
past a bad file (recording its one-line reason), never stores a source twice (sources are keyed by
a content fingerprint), and writes each source in one append so that a cancelled or failed run
leaves every source already stored intact.
"""

from __future__ import annotations

import dataclasses
from contextlib import closing
import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from hashview.encode import Encoder
from hashview.errors import HashViewError
from hashview.library import Library, fingerprint_file
from hashview.models import DEFAULT_MODEL, LoadedModel, load_model
from hashview.progress import ProgressCallback, report
from hashview.slides import InputItem, expand_inputs, open_source
from hashview.slides.image_source import load_rgb_image
from hashview.tiling import DEFAULT_TARGET_MPP, DEFAULT_TILE_SIZE, TilingParams, plan_tiles, read_tile, square_tile


@dataclass
class IndexReport:
    """What one indexing run did; printed by the CLI and shown by the app."""

    library: str
    added: list[dict] = field(default_factory=list)  # {"path", "tiles"}
    skipped: list[str] = field(default_factory=list)  # already in the library
    failed: list[str] = field(default_factory=list)  # one-line reasons
    warnings: list[str] = field(default_factory=list)

    @property
    def tiles_added(self) -> int:
        return sum(a["tiles"] for a in self.added)

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "added": self.added,
            "skipped": self.skipped,
            "failed": self.failed,
            "warnings": self.warnings,
            "tiles_added": self.tiles_added,
        }


def _source_record(item: InputItem, fingerprint: str, *, kind: str, width: int, height: int,
                   mpp: Optional[float], mpp_assumed: bool) -> dict:
    stat = os.stat(item.path)
    return {
        "path": str(Path(item.path).resolve()),
        "name": Path(item.path).name,
        "byte_size": stat.st_size,
        "mtime": stat.st_mtime,
        "fingerprint": fingerprint,
        "mpp": mpp,
        "width": width,
        "height": height,
        "kind": kind,
        "label": item.label,
        "patient_id": item.patient_id,
        "mpp_assumed": mpp_assumed,
    }


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _encode_prefetched(encoder: Encoder, loaders: Sequence, batch_size: int,
                       pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
    """Encode batches while the next batch is read and decoded on worker threads.

    Reading (OpenSlide / Pillow decode) releases the GIL, so one batch ahead keeps the encoder fed.
    Reads still in flight are always waited for before returning, even on cancel or error: the
    caller closes the slide next, and OpenSlide must not be closed under a running read.
    """
    batches = list(_batched(loaders, batch_size))
    pending: list = []
    try:
        if batches:
            pending = [pool.submit(load) for load in batches[0]]
        for i in range(len(batches)):
            images = [future.result() for future in pending]
            pending = [pool.submit(load) for load in batches[i + 1]] if i + 1 < len(batches) else []
            yield encoder.encode(images)
    finally:
        for future in pending:
            future.cancel()
        wait(pending)


def model_tiling(card, params: Optional[TilingParams] = None, tile_size: Optional[int] = None,
                 target_mpp: Optional[float] = None) -> TilingParams:
    """Tiling for a new library: explicit values, else the model's training tiling, else defaults."""
    params = params or TilingParams()
    return dataclasses.replace(
        params,
        tile_size=tile_size or card.tile_size or DEFAULT_TILE_SIZE,
        target_mpp=target_mpp or card.target_mpp or DEFAULT_TARGET_MPP)


def index_paths(paths: Iterable[str | Path], library_path: str | Path,
                model: str | Path | LoadedModel = DEFAULT_MODEL,
                params: Optional[TilingParams] = None, device: str = "auto",
                batch_size: Optional[int] = None,
                progress: Optional[ProgressCallback] = None) -> IndexReport:
    """Tile, encode and store every slide, image and patch under ``paths``.

    ``params`` defaults to the model's training tiling (:func:`model_tiling`). A library that
    already exists must have been made with the same model (else ``LibraryError``); its tile size
    and resolution then win over ``params`` so that all its tiles are comparable.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    card = loaded.card
    params = params or model_tiling(card)
    report_ = IndexReport(library=str(library_path))

    items, errors = expand_inputs([Path(p) for p in paths])
    report_.failed.extend(e.message for e in errors)
    if not items:
        return report_

    library = Library.open_or_create(
        library_path, model_name=card.name, model_arch=card.arch, bits=card.bits,
        model_sha256=card.sha256, tile_size=params.tile_size, target_mpp=params.target_mpp)
    with library:
        if (library.tile_size, library.target_mpp) != (params.tile_size, params.target_mpp):
            report_.warnings.append(
                f"{library_path}: using the library's tiling ({library.tile_size} px at "
                f"{library.target_mpp} µm/px), not the requested one")
            params = dataclasses.replace(params, tile_size=library.tile_size,
                                         target_mpp=library.target_mpp)
        encoder = Encoder(loaded, device=device, batch_size=batch_size)
        batch = encoder.batch_size
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hashview-read") as pool:
            slides = [it for it in items if it.kind == "slide"]
            patches = [it for it in items if it.kind == "patch"]
            for n, item in enumerate(slides):
                report(progress, "slides", n, len(slides), Path(item.path).name)
                try:
                    _index_slide(item, library, encoder, params, batch, pool, report_, progress)
                except HashViewError as exc:
                    report_.failed.append(exc.message)
            if slides:
                report(progress, "slides", len(slides), len(slides))
            if patches:
                _index_patches(patches, library, encoder, params, batch, pool, report_, progress)
    return report_


def _index_slide(item: InputItem, library: Library, encoder: Encoder, params: TilingParams,
                 batch: int, pool: ThreadPoolExecutor, report_: IndexReport,
                 progress: Optional[ProgressCallback]) -> None:
    fingerprint = fingerprint_file(item.path)
    if library.find_source(fingerprint=fingerprint) is not None:
        report_.skipped.append(str(item.path))
        return
    with open_source(item.path) as source:
        plan = plan_tiles(source, params)
        report_.warnings.extend(f"{item.path}: {w}" for w in plan.warnings)
        loaders = [lambda t=tile: read_tile(source, t, plan) for tile in plan.tiles]
        codes = []
        done = 0
        # closing(): reads in flight finish before the slide is closed, even on cancel
        with closing(_encode_prefetched(encoder, loaders, batch, pool)) as batches:
            for packed in batches:
                codes.append(packed)
                done += len(packed)
                report(progress, "encoding", done, len(plan.tiles), Path(item.path).name)
        width, height = source.dimensions
        record = _source_record(item, fingerprint, kind="slide", width=width, height=height,
                                mpp=source.mpp, mpp_assumed=plan.mpp_assumed)
    codes_arr = (np.concatenate(codes) if codes
                 else np.zeros((0, encoder.bits // 8), dtype=np.uint8))
    library.add_source(record, codes_arr,
                       xs=np.array([t.x for t in plan.tiles], dtype=np.int64),
                       ys=np.array([t.y for t in plan.tiles], dtype=np.int64),
                       sizes=np.array([t.size for t in plan.tiles], dtype=np.int64))
    report_.added.append({"path": str(item.path), "tiles": len(plan.tiles)})


def _index_patches(patches: list[InputItem], library: Library, encoder: Encoder,
                   params: TilingParams, batch: int, pool: ThreadPoolExecutor,
                   report_: IndexReport, progress: Optional[ProgressCallback]) -> None:
    """Each patch image is one source holding one tile (the whole image, resized)."""
    todo = []
    for item in patches:
        try:
            fingerprint = fingerprint_file(item.path)
        except HashViewError as exc:
            report_.failed.append(exc.message)
            continue
        if library.find_source(fingerprint=fingerprint) is not None:
            report_.skipped.append(str(item.path))
        else:
            todo.append((item, fingerprint))

    def load(entry):
        item, _ = entry
        try:
            image = load_rgb_image(item.path)
        except HashViewError as exc:
            return exc
        return image.size, square_tile(image, encoder.input_size)

    done = 0
    for chunk in _batched(todo, batch):
        loaded = list(pool.map(load, chunk))
        good = [(entry, img) for entry, img in zip(chunk, loaded) if not isinstance(img, Exception)]
        report_.failed.extend(img.message for img in loaded if isinstance(img, HashViewError))
        if good:
            codes = encoder.encode([tile for _, (_, tile) in good])
            batch_items = []
            for ((item, fingerprint), ((width, height), _)), code in zip(good, codes):
                record = _source_record(item, fingerprint, kind="patch", width=width,
                                        height=height, mpp=None, mpp_assumed=False)
                batch_items.append((record, code[None, :], np.zeros(1, np.int64),
                                    np.zeros(1, np.int64), np.array([max(width, height)])))
            # one commit per batch: a per-patch commit costs ~100x more on large folders
            library.add_sources(batch_items)
            report_.added.extend({"path": str(item.path), "tiles": 1} for (item, _), _ in good)
        done += len(chunk)
        report(progress, "patches", done, len(todo))

