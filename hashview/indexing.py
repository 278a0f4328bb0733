"""Index slides, images and patch folders into a library: the one writer path.

``index_paths`` is what ``hashview index`` and the app's background indexing jobs run. It goes on
past a bad file (recording its one-line reason), never stores a source twice (sources are keyed by
a content fingerprint: a file whose content is already stored, or met earlier in the same run, is
skipped before it is encoded), and writes each source in one append so that a cancelled or
failed run leaves every source already stored intact. A failed write (disk full...) ends the run
with :class:`~hashview.library.LibraryWriteError`: the library keeps what was committed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from hashview.annotations.tiles import AnnotationOptions, label_counts, labelled_tiles
from hashview.code_kinds import code_kind
from hashview.encode import Encoder
from hashview.annotations import AnnotationError
from hashview.errors import HashViewError, LibraryError
from hashview.library import Library, LibraryWriteError, ModelInfo, fingerprint_file
from hashview.models import DEFAULT_MODEL, LoadedModel, load_model
from hashview.progress import ProgressCallback, report
from hashview.slides import InputItem, expand_inputs, open_source
from hashview.slides.image_source import load_rgb_image
from hashview.stain_reference import normaliser_of
from hashview.timing import NO_TIMES, StageTimes
from hashview.tiling import (DEFAULT_TARGET_MPP, DEFAULT_TILE_SIZE, Tile, TilePlan, TilingParams,
                             plan_tiles, read_tile_pixels, square_tile)

# On a GPU, tiles read ahead of the forward pass, in batches: one being encoded, this many queued.
PREFETCH_BATCHES = 2


@dataclass
class IndexReport:
    """What one indexing run did; printed by the CLI and shown by the app."""

    library: str
    added: list[dict] = field(default_factory=list)  # {"path", "tiles"}
    skipped: list[str] = field(default_factory=list)  # already in the library (or duplicates)
    failed: list[str] = field(default_factory=list)  # one-line reasons
    warnings: list[str] = field(default_factory=list)
    # files skipped because another file of this run has the same content: {"path", "duplicate_of"}
    duplicates: list[dict] = field(default_factory=list)

    @property
    def tiles_added(self) -> int:
        return sum(a["tiles"] for a in self.added)

    @property
    def tile_labels(self) -> dict[str, int]:
        """Tiles added per annotation class (``"unlabelled"``: no class), over annotated slides."""
        counts: dict[str, int] = {}
        for added in self.added:
            for label, n in added.get("labels", {}).items():
                counts[label] = counts.get(label, 0) + n
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "added": self.added,
            "skipped": self.skipped,
            "failed": self.failed,
            "warnings": self.warnings,
            "duplicates": self.duplicates,
            "tiles_added": self.tiles_added,
            "tile_labels": self.tile_labels,
        }

    def duplicate(self, path, first) -> None:
        """``path`` has the content of ``first``, met earlier in this run: skipped, not encoded."""
        self.skipped.append(str(path))
        self.duplicates.append({"path": str(path), "duplicate_of": str(first)})

    def summarise_duplicates(self) -> None:
        if self.duplicates:
            n = len(self.duplicates)
            example = self.duplicates[0]
            self.warnings.append(
                f"{n} file{'s' if n > 1 else ''} skipped as duplicate{'s' if n > 1 else ''} "
                f"(same content as another file of this run), e.g. "
                f"{example['path']} = {example['duplicate_of']}")


def source_record(item: InputItem, fingerprint: str, *, kind: str, width: int, height: int,
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


def reader_threads(encoder: Encoder) -> int:
    """Threads reading and decoding tiles: every core (up to 8) on a CPU, where they run
    between forward passes (see :func:`_loaded`); on a GPU, all but one core, so decoding
    keeps ahead of a forward pass an order of magnitude faster than a CPU's."""
    cores = os.cpu_count() or 2
    return max(2, min(16, cores - 1)) if encoder.is_cuda else max(2, min(8, cores))


def _prefetched(load, items: Sequence, pool: ThreadPoolExecutor, depth: int) -> Iterator:
    """``load(item)`` for each item, in order, with up to ``depth`` loads running ahead.

    Loads still in flight are always waited for before returning, even on cancel or error: the
    caller closes the slide next, and OpenSlide must not be closed under a running read.
    """
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(load, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        wait(pending)


def _batchwise(load, items: Sequence, pool: ThreadPoolExecutor, batch: int) -> Iterator:
    """``load(item)`` for each item, in order: one batch at a time on every reader thread, and
    nothing in flight while the caller works on what was yielded."""
    for chunk in _batched(items, batch):
        futures = [pool.submit(load, item) for item in chunk]
        wait(futures)
        for future in futures:
            yield future.result()


def _loaded(load, items: Sequence, pool: ThreadPoolExecutor, encoder: Encoder) -> Iterator:
    """``load(item)`` for each item, in order, scheduled for ``encoder``'s device.

    A GPU encodes while reader threads decode the next batches (prefetch). On a CPU the forward
    pass already keeps every core busy, and readers running beside it stall torch's threads (a
    parallel operation waits for its slowest thread), so a batch is read on every core, then
    encoded: on the synthetic 3,321-tile slide 271-300 tiles/s against 255-274 with reading
    overlapped, three runs each, alternating (``benchmarks/tile_reads.py --only schedule``).
    """
    if encoder.is_cuda:
        return _prefetched(load, items, pool, depth=PREFETCH_BATCHES * encoder.batch_size)
    return _batchwise(load, items, pool, encoder.batch_size)


def tile_loader(source, plan: TilePlan, encoder: Encoder, times=NO_TIMES):
    """The per-tile work done on reader threads: read (with OpenSlide's decode), then resample
    once, straight to the model's input array, so the forward thread only stacks a batch.

    ``plan`` should be made with ``input_size=encoder.input_size`` so the read comes from the
    coarsest level that still has the model's resolution (what region queries read too)."""
    def load(tile: Tile) -> np.ndarray:
        with times.stage("read"):
            pixels = read_tile_pixels(source, tile, plan)
        with times.stage("resize"):
            return encoder.to_input(pixels)
    return load


def encode_tiles(source, plan: TilePlan, encoder: Encoder, pool: ThreadPoolExecutor,
                 times=NO_TIMES) -> Iterator[np.ndarray]:
    """Packed codes of ``plan.tiles``, one array per batch; reading is scheduled by
    :func:`_loaded`."""
    load = tile_loader(source, plan, encoder, times)
    inputs = _loaded(load, plan.tiles, pool, encoder)
    with closing(inputs):
        yield from encoder.encode_batches(inputs, total=len(plan.tiles), times=times)


def rate_message(name: str, done: int, seconds: float) -> str:
    """``"slide.svs · 312 tiles/s"``: the measured rate, which the ETA is computed from."""
    if done <= 0 or seconds <= 0:
        return name
    return f"{name} · {done / seconds:.0f} tiles/s"


def model_tiling(card, params: Optional[TilingParams] = None, tile_size: Optional[int] = None,
                 target_mpp: Optional[float] = None) -> TilingParams:
    """Tiling for a new library: explicit values, else the model's training tiling, else defaults."""
    params = params or TilingParams()
    # An explicit value is used as given (TilingParams refuses 0), never replaced by a default.
    return dataclasses.replace(
        params,
        tile_size=tile_size if tile_size is not None else card.tile_size or DEFAULT_TILE_SIZE,
        target_mpp=(target_mpp if target_mpp is not None
                    else card.target_mpp or DEFAULT_TARGET_MPP))


def open_library(library_path: str | Path, card, params: TilingParams,
                 report_: IndexReport,
                 stain_reference: Optional[str] = None) -> tuple[Library, TilingParams]:
    """The library opened for appending (made for ``card`` when missing) and the tiling to use:
    an existing library's own tile size and resolution win (with a warning), so that all its
    tiles are comparable. ``stain_reference`` (:mod:`hashview.stain_reference` text) is stored
    in a new library; an existing one must already have the same (or it is refused)."""
    try:
        info = ModelInfo.coerce(card, tile_size=params.tile_size, target_mpp=params.target_mpp,
                                stain_reference=stain_reference)
    except (ValueError, TypeError, AttributeError) as exc:
        raise LibraryError(library_path, f"bad model description ({exc})") from None
    library = Library.open_or_create(library_path, info, tile_size=params.tile_size,
                                     target_mpp=params.target_mpp, code_kind=info.code_kind)
    if stain_reference and library.model.stain_reference != stain_reference:
        library.close()
        has = "another" if library.model.stain_reference else "no"
        raise LibraryError(library_path, f"was made with {has} stain reference; index into a "
                                         "new library to normalise to this one")
    if (library.tile_size, library.target_mpp) != (params.tile_size, params.target_mpp):
        report_.warnings.append(
            f"{library_path}: using the library's tiling ({library.tile_size} px at "
            f"{library.target_mpp} µm/px), not the requested one")
        params = dataclasses.replace(params, tile_size=library.tile_size,
                                     target_mpp=library.target_mpp)
    return library, params


def already_stored(item: InputItem, fingerprint: str, library: Library, seen: dict[str, str],
                   report_: IndexReport) -> bool:
    """True (and reported as skipped) when ``fingerprint`` is in the library or was stored
    earlier in this run (``seen``: fingerprint -> the file stored with it)."""
    if fingerprint in seen:
        report_.duplicate(item.path, seen[fingerprint])
        return True
    if library.find_source(fingerprint=fingerprint) is not None:
        report_.skipped.append(str(item.path))
        seen[fingerprint] = str(item.path)
        return True
    return False


def index_paths(paths: Iterable[str | Path], library_path: str | Path,
                model: str | Path | LoadedModel = DEFAULT_MODEL,
                params: Optional[TilingParams] = None, device: str = "auto",
                batch_size: Optional[int] = None,
                progress: Optional[ProgressCallback] = None,
                times: Optional[StageTimes] = None,
                annotations: Optional[AnnotationOptions] = None,
                stain_reference: Optional[str] = None) -> IndexReport:
    """Tile, encode and store every slide, image and patch under ``paths``.

    ``params`` defaults to the model's training tiling (:func:`model_tiling`). A library that
    already exists must have been made with the same model (else ``LibraryError``); its tile size
    and resolution then win over ``params`` so that all its tiles are comparable. ``times``
    collects the seconds of each stage of slides (tissue mask, read, resize, transform, batch,
    forward, pack, write); ``None`` times nothing. ``annotations`` labels the tiles of slides
    by their annotation files (:mod:`hashview.annotations.tiles`); patches keep their folder's.
    ``stain_reference`` (text of :func:`hashview.stain_reference.fit_reference_text`) makes a
    new library normalise every tile to that stain; a library that has one always uses it.
    """
    times = times or NO_TIMES
    loaded, params, report_, items = prepare_run(paths, library_path, model, params,
                                                 annotations)
    if not items:
        return report_
    card = loaded.card
    library, params = open_library(library_path, card, params, report_, stain_reference)
    with library:
        stored = library.model.stain_reference
        encoder = Encoder(loaded, device=device, batch_size=batch_size,
                          stain_normaliser=normaliser_of(stored, library_path) if stored
                          else None)
        batch = encoder.batch_size
        seen: dict[str, str] = {}  # fingerprint -> the file of this run stored with it
        with ThreadPoolExecutor(max_workers=reader_threads(encoder),
                                thread_name_prefix="hashview-read") as pool:
            slides = [it for it in items if it.kind == "slide"]
            patches = [it for it in items if it.kind == "patch"]
            for n, item in enumerate(slides):
                report(progress, "slides", n, len(slides), Path(item.path).name)
                try:
                    _index_slide(item, library, encoder, params, pool, report_, progress, times,
                                 seen, annotations)
                except LibraryWriteError:
                    raise  # the library cannot take more: end the run (committed ones stay)
                except HashViewError as exc:
                    report_.failed.append(exc.message)
            if slides:
                report(progress, "slides", len(slides), len(slides))
            if patches:
                _index_patches(patches, library, encoder, params, batch, pool, report_, progress,
                               seen)
    report_.summarise_duplicates()
    return report_


def prepare_run(paths: Iterable[str | Path], library_path: str | Path,
                model: str | Path | LoadedModel, params: Optional[TilingParams],
                annotations: Optional[AnnotationOptions]):
    """What every indexing engine checks before a library is made: the model, the tiling
    (validated: e.g. max_tiles 0 would store empty slides), the inputs found under ``paths``
    (those that cannot be read go to the report) and the annotation place. Returns
    ``(loaded model, params, report, items)``; no items: nothing to index."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    params = params or model_tiling(loaded.card)
    params.validate()
    report_ = IndexReport(library=str(library_path))
    items, errors = expand_inputs([Path(p) for p in paths])
    report_.failed.extend(e.message for e in errors)
    if items and annotations is not None:
        check_annotation_place(annotations, [it for it in items if it.kind == "slide"])
    return loaded, params, report_, items


def check_annotation_place(options: AnnotationOptions, slides: list[InputItem]) -> None:
    where = options.where
    if where is not None and not Path(where).exists():
        raise AnnotationError(where, "no such annotation file or folder")
    if where is not None and Path(where).is_file() and len(slides) > 1:
        raise AnnotationError(where, f"one annotation file for {len(slides)} slides; give a "
                                     "folder with a SLIDE.geojson per slide")


def _index_slide(item: InputItem, library: Library, encoder: Encoder, params: TilingParams,
                 pool: ThreadPoolExecutor, report_: IndexReport,
                 progress: Optional[ProgressCallback], times=NO_TIMES,
                 seen: Optional[dict[str, str]] = None,
                 annotations: Optional[AnnotationOptions] = None) -> None:
    seen = {} if seen is None else seen
    fingerprint = fingerprint_file(item.path)
    if already_stored(item, fingerprint, library, seen, report_):
        return
    name = Path(item.path).name
    with open_source(item.path) as source:
        with times.stage("tissue mask"):
            plan = plan_tiles(source, params, input_size=encoder.input_size)
        report_.warnings.extend(f"{item.path}: {w}" for w in plan.warnings)
        labels = None
        if annotations is not None:
            tiles, labels = labelled_tiles(item.path, plan.tiles, annotations, report_.warnings)
            plan = dataclasses.replace(plan, tiles=tiles)
        codes = []
        done = 0
        start = time.perf_counter()
        # closing(): reads in flight finish before the slide is closed, even on cancel
        with closing(encode_tiles(source, plan, encoder, pool, times)) as batches:
            for packed in batches:
                codes.append(packed)
                done += len(packed)
                report(progress, "encoding", done, len(plan.tiles),
                       rate_message(name, done, time.perf_counter() - start))
        width, height = source.dimensions
        record = source_record(item, fingerprint, kind="slide", width=width, height=height,
                               mpp=source.mpp, mpp_assumed=plan.mpp_assumed)
    codes_arr = (np.concatenate(codes) if codes
                 else code_kind(encoder.code_kind).empty_encoded(encoder.bits))
    with times.stage("write", len(plan.tiles)):
        library.add_source(record, codes_arr,
                           xs=np.array([t.x for t in plan.tiles], dtype=np.int64),
                           ys=np.array([t.y for t in plan.tiles], dtype=np.int64),
                           sizes=np.array([t.size for t in plan.tiles], dtype=np.int64),
                           tile_labels=labels)
    added = {"path": str(item.path), "tiles": len(plan.tiles)}
    if labels is not None:
        added["labels"] = label_counts(labels)
    report_.added.append(added)
    seen[fingerprint] = str(item.path)


def _index_patches(patches: list[InputItem], library: Library, encoder: Encoder,
                   params: TilingParams, batch: int, pool: ThreadPoolExecutor,
                   report_: IndexReport, progress: Optional[ProgressCallback],
                   seen: Optional[dict[str, str]] = None) -> None:
    """Each patch image is one source holding one tile (the whole image, resized). Copies of
    one image (same fingerprint) are encoded and stored once: the others are skipped."""
    seen = {} if seen is None else seen
    todo = []
    for item in patches:
        try:
            fingerprint = fingerprint_file(item.path)
        except HashViewError as exc:
            report_.failed.append(exc.message)
            continue
        if not already_stored(item, fingerprint, library, seen, report_):
            todo.append((item, fingerprint))
            seen[fingerprint] = str(item.path)

    def load(entry):
        item, _ = entry
        try:
            image = load_rgb_image(item.path)
        except HashViewError as exc:
            return exc
        return image.size, encoder.to_input(square_tile(image, encoder.input_size))

    done = 0
    loads = _loaded(load, todo, pool, encoder)
    with closing(loads):
        for chunk in _batched(todo, batch):
            loaded = [next(loads) for _ in chunk]
            good = [(entry, img) for entry, img in zip(chunk, loaded)
                    if not isinstance(img, Exception)]
            report_.failed.extend(img.message for img in loaded if isinstance(img, HashViewError))
            if good:
                codes = encoder.encode([tile for _, (_, tile) in good])
                batch_items = []
                for ((item, fingerprint), ((width, height), _)), code in zip(good, codes):
                    record = source_record(item, fingerprint, kind="patch", width=width,
                                           height=height, mpp=None, mpp_assumed=False)
                    batch_items.append((record, code[None, :], np.zeros(1, np.int64),
                                        np.zeros(1, np.int64), np.array([max(width, height)])))
                # one commit per batch: a per-patch commit costs ~100x more on large folders
                library.add_sources(batch_items)
                report_.added.extend({"path": str(item.path), "tiles": 1}
                                     for (item, _), _ in good)
            done += len(chunk)
            report(progress, "patches", done, len(todo))

