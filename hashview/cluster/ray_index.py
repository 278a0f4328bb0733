"""Index on a Ray cluster into one library: plan and read on tasks, encode on an actor pool,
commit on the driver.

Slides are planned by tasks (fingerprint, tissue mask, tile grid), their tiles read in chunks by
tasks, each chunk encoded by one of ``workers`` actors that load the model once, and every
source committed by the one writer, this driver, once all its chunks are back. So a killed
driver or a lost node loses at most the sources in flight, and a rerun skips what is committed
(the library's fingerprint dedup). A chunk whose actor dies is encoded again by another actor
(a new one takes the dead one's place); its codes are kept per chunk index, so nothing is lost
or stored twice. docs/cluster.md says why Ray core and not Ray Data.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from hashview.annotations.tiles import AnnotationOptions, label_counts
from hashview.cluster.connect import (CPU_SHARE, check_reachable, check_room, connected,
                                      import_ray)
from hashview.cluster.work import (ChunkEncoder, SlidePlan, TileChunk, plan_slide,
                                   read_patch_chunk, read_slide_chunk)
from hashview.code_kinds import code_kind
from hashview.encode import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA
from hashview.errors import HashViewError
from hashview.indexing import IndexReport, already_stored, open_library, prepare_run, \
    source_record
from hashview.library import Library, LibraryWriteError, fingerprint_file
from hashview.model_input import ModelInput
from hashview.models import DEFAULT_MODEL, LoadedModel
from hashview.progress import ProgressCallback, report
from hashview.slides import InputItem
from hashview.stain_reference import normaliser_of
from hashview.tiling import TilingParams

# Chunks in flight per actor (being read or encoded): enough to keep a GPU fed by read tasks.
CHUNKS_PER_WORKER_CPU, CHUNKS_PER_WORKER_GPU = 2, 8
MAX_CHUNK_TRIES = 3  # a chunk whose actor dies this often fails its source
WAIT_S = 0.5  # longest pause between progress reports
ACTOR_PREFIX = "hashview-encoder-"  # + run id + number: the encoding actors' names
# Slides planned (or being planned) but not yet committed, per actor: plans hold every tile's
# position, so an archive is planned as the work goes, not all at once.
SLIDES_AHEAD_PER_WORKER = 2
WORKER_START_S = 900  # no actor up by then: the cluster cannot place them (an autoscaler may
#                       need minutes to add a GPU node)


def index_with_ray(paths: Iterable[str | Path], library_path: str | Path,
                   model: str | Path | LoadedModel = DEFAULT_MODEL,
                   params: Optional[TilingParams] = None, *, address: Optional[str] = None,
                   workers: int = 2, gpus_per_worker: float = 0.0, device: str = "auto",
                   batch_size: Optional[int] = None,
                   progress: Optional[ProgressCallback] = None,
                   stain_reference: Optional[str] = None,
                   annotations: Optional[AnnotationOptions] = None) -> IndexReport:
    """:func:`hashview.indexing.index_paths` on a Ray cluster: the same library, report and
    dedup. A Ray already initialised in this process is used as it is; else ``address`` None
    starts a local one on this machine's cores, and "auto", "HOST:PORT" or "ray://HOST:PORT"
    join a running cluster.
    ``workers`` encoding actors, each with ``gpus_per_worker`` GPUs (0: CPU).
    ``stain_reference`` makes a new library stain-normalised, as in ``index_paths``; the
    actors re-stain every tile of a stain-normalised library to its stored reference.
    ``annotations`` labels the slides' tiles by their annotation files (read by the planning
    tasks, so the files must be where the workers can read them, as the slides)."""
    ray = import_ray()
    if workers < 1 or gpus_per_worker < 0:
        raise ValueError("workers must be >= 1 and gpus_per_worker >= 0")
    loaded, params, report_, items = prepare_run(paths, library_path, model, params,
                                                 annotations)
    if not items:
        return report_
    if address and address != "auto" and not ray.is_initialized():
        check_reachable(address)  # before a library is made for a run that cannot start
    library, params = open_library(library_path, loaded.card, params, report_,
                                   stain_reference)
    stored = library.model.stain_reference
    if stored:
        try:  # a reference the actors cannot read is this library's fault: say so here
            normaliser_of(stored, library_path)
        except HashViewError:
            library.close()
            raise
    batch = batch_size or (DEFAULT_BATCH_CUDA if gpus_per_worker else DEFAULT_BATCH_CPU)
    with library, connected(ray, address):
        run = _ClusterRun(ray, library, params, report_, progress, annotations)
        with contextlib.closing(run):
            run.start_workers(loaded, workers, gpus_per_worker, device, batch,
                              local=address is None, stain_reference=stored)
            run.index(items, batch)
    report_.summarise_duplicates()
    return report_


@dataclass(eq=False)
class _Unit:
    """What is committed at once: one slide, or one forward batch of patches."""

    name: str
    n_chunks: int
    slide: Optional[SlidePlan] = None
    patches: list = field(default_factory=list)  # [(InputItem, fingerprint)]
    encoded: dict = field(default_factory=dict)  # chunk index -> TileChunk of codes
    failed: bool = False


@dataclass(eq=False)
class _Chunk:
    unit: _Unit
    index: int
    read_args: tuple  # for the read task: slide (path, plan ref, start, stop) or patch paths
    tiles: int
    read_ref: object = None
    tries: int = 0


class _Worker:
    """One encoding actor and the chunks it holds."""

    def __init__(self, handle, ready_ref):
        self.handle, self.ready_ref = handle, ready_ref
        self.ready = False
        self.busy = 0


class _ClusterRun:
    def __init__(self, ray, library: Library, params: TilingParams, report_: IndexReport,
                 progress: Optional[ProgressCallback],
                 annotations: Optional[AnnotationOptions] = None):
        self.ray, self.library, self.params = ray, library, params
        self.annotations = annotations
        self.report, self.progress = report_, progress
        self.workers: list[_Worker] = []
        self.queue: deque[_Chunk] = deque()
        self.in_flight: dict = {}  # encode ref -> (_Chunk, _Worker)
        self.plans: dict = {}  # plan ref -> InputItem
        self.to_plan: deque[InputItem] = deque()
        self.open_slides = 0  # planned, not yet committed or failed
        self.slides_planned = 0
        self.seen: dict[str, str] = {}
        self.planned = self.done = 0
        self.started: Optional[float] = None  # when the first worker was ready
        self.run_id = uuid.uuid4().hex[:8]
        self._named = 0
        self.model_input: Optional[ModelInput] = None
        self.stain_reference: Optional[str] = None  # a stain-normalised library's, for reads

    # ------------------------------------------------------------ workers
    def start_workers(self, loaded: LoadedModel, count: int, gpus: float, device: str,
                      batch: int, local: bool, stain_reference: Optional[str] = None) -> None:
        ray = self.ray
        self.model_input = ModelInput.for_card(loaded.card)
        cpus = 1.0 if gpus else CPU_SHARE
        if local:  # a cluster may grow (autoscaling): only a local one is checked
            check_room(ray.cluster_resources(), count, cpus, gpus)
        threads = max(1, int((os.cpu_count() or 2) // count)) if local and not gpus else None
        self._actor = ray.remote(ChunkEncoder)
        self._actor_options = {"num_cpus": cpus, "num_gpus": gpus}
        self._actor_args = (ray.put(loaded), device, batch, threads)
        # tiles are re-stained by the read tasks, many at once, not on the encoding actors
        self.stain_reference = stain_reference
        self._read_slide = ray.remote(read_slide_chunk).options(num_cpus=cpus)
        self._read_patches = ray.remote(read_patch_chunk).options(num_cpus=cpus)
        self._plan = ray.remote(plan_slide).options(num_cpus=cpus)
        self.chunks_in_flight = count * (CHUNKS_PER_WORKER_GPU if gpus
                                         else CHUNKS_PER_WORKER_CPU)
        self.slides_ahead = count * SLIDES_AHEAD_PER_WORKER
        for _ in range(count):
            self._add_worker()

    def _add_worker(self) -> None:
        # named, so that an operator (or a test) can find this run's actors on the cluster
        self._named += 1
        name = f"{ACTOR_PREFIX}{self.run_id}-{self._named}"
        handle = self._actor.options(name=name, **self._actor_options).remote(
            *self._actor_args)
        self.workers.append(_Worker(handle, handle.describe.remote()))

    def _replace(self, worker: _Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle)
            self._add_worker()

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(worker.handle)
        self.workers.clear()

    # ------------------------------------------------------------ the run
    def index(self, items: list[InputItem], batch: int) -> None:
        """Plan, read, encode and commit ``items``; chunks of ``batch`` tiles are one forward
        batch each, cut where a single-process run cuts them, so codes come out the same."""
        self.batch = batch
        self.known = self.ray.put(frozenset(s.fingerprint for s in self.library.sources()))
        self.to_plan.extend(it for it in items if it.kind == "slide")
        self.slides_total = len(self.to_plan)
        self._queue_patches([it for it in items if it.kind == "patch"], batch)
        asked = time.perf_counter()
        while self.to_plan or self.plans or self.queue or self.in_flight:
            if self.started is None and time.perf_counter() - asked > WORKER_START_S:
                raise HashViewError(None, f"no encoding worker started in {WORKER_START_S} s: "
                                          "the cluster has no room for them (see --workers, "
                                          "--gpus-per-worker)")
            self._plan_more()
            self._dispatch()
            waiting = (list(self.plans) + list(self.in_flight)
                       + [w.ready_ref for w in self.workers if not w.ready])
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                if ref in self.plans:
                    self._planned(self.plans.pop(ref), ref)
                elif ref in self.in_flight:
                    self._encoded(ref, *self.in_flight.pop(ref))
                else:
                    self._worker_ready(ref)
            self._report()

    def _plan_more(self) -> None:
        while self.to_plan and len(self.plans) + self.open_slides < self.slides_ahead:
            item = self.to_plan.popleft()
            ref = self._plan.remote(item, self.params, self.model_input.input_size, self.known,
                                    self.annotations)
            self.plans[ref] = item

    def _worker_ready(self, ref) -> None:
        worker = next((w for w in self.workers if w.ready_ref == ref), None)
        if worker is None:
            return  # replaced meanwhile
        try:
            self.ray.get(ref)
            worker.ready = True
            self.started = self.started or time.perf_counter()
        except self.ray.exceptions.RayError:
            self._replace(worker)

    def _dispatch(self) -> None:
        room = self.chunks_in_flight - len(self.in_flight)
        # reads start before the actors are up (they take seconds to load torch and the
        # model), so the first chunks are waiting when one is ready
        for chunk in itertools.islice(self.queue, max(0, room)):
            self._read(chunk)
        ready = [w for w in self.workers if w.ready]
        while self.queue and ready and len(self.in_flight) < self.chunks_in_flight:
            chunk = self.queue.popleft()
            if chunk.unit.failed:
                continue
            self._read(chunk)
            worker = min(ready, key=lambda w: w.busy)
            worker.busy += 1
            self.in_flight[worker.handle.encode.remote(chunk.read_ref)] = (chunk, worker)

    def _read(self, chunk: _Chunk) -> None:
        """Start the read task of ``chunk`` unless it has one (a retried chunk keeps its)."""
        if chunk.read_ref is not None or chunk.unit.failed:
            return
        if chunk.unit.slide is not None:
            chunk.read_ref = self._read_slide.remote(*chunk.read_args, self.model_input,
                                                     self.stain_reference)
        else:
            chunk.read_ref = self._read_patches.remote(chunk.read_args, self.model_input,
                                                       self.stain_reference)

    def _planned(self, item: InputItem, ref) -> None:
        self.slides_planned += 1
        try:
            plan: SlidePlan = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.report.failed.append(f"{item.path}: planning failed on a worker ({_cause(exc)})")
            return
        if plan.failure:
            self.report.failed.append(plan.failure)
            return
        # a slide the task found stored (``plan.known``) is reported here like any other
        if already_stored(item, plan.fingerprint, self.library, self.seen, self.report):
            return
        self.seen[plan.fingerprint] = str(item.path)
        self.report.warnings.extend(plan.warnings)
        size = self.batch
        starts = range(0, plan.n_tiles, size)
        unit = _Unit(Path(item.path).name, len(starts), slide=plan)
        if not starts:
            self._commit(unit)
            return
        self.open_slides += 1
        plan_ref = self.ray.put(plan.plan)
        for index, start in enumerate(starts):
            stop = min(start + size, plan.n_tiles)
            self.queue.append(_Chunk(unit, index, (str(item.path), plan_ref, start, stop),
                                     stop - start))
        self.planned += plan.n_tiles

    def _queue_patches(self, patches: list[InputItem], batch: int) -> None:
        todo = []
        for item in patches:
            try:
                fingerprint = fingerprint_file(item.path)
            except HashViewError as exc:
                self.report.failed.append(exc.message)
                continue
            if not already_stored(item, fingerprint, self.library, self.seen, self.report):
                todo.append((item, fingerprint))
                self.seen[fingerprint] = str(item.path)
        self.patches_planned = len(todo)
        for start in range(0, len(todo), batch):
            group = todo[start:start + batch]
            unit = _Unit(Path(group[0][0].path).name, 1, patches=group)
            self.queue.append(_Chunk(unit, 0, tuple(str(it.path) for it, _ in group),
                                     len(group)))
            self.planned += len(group)

    def _encoded(self, ref, chunk: _Chunk, worker: _Worker) -> None:
        worker.busy -= 1
        unit = chunk.unit
        try:
            result: TileChunk = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            if worker in self.workers:
                self.report.warnings.append(f"an encoding worker was lost ({_cause(exc)}); "
                                            "its chunks were encoded again by another")
            self._replace(worker)  # lost with its process or node: its chunks go elsewhere
            chunk.tries += 1
            if chunk.tries < MAX_CHUNK_TRIES:
                self.queue.appendleft(chunk)
            else:
                self._fail(unit, f"{unit.name}: lost {chunk.tries} encoding workers")
            return
        except self.ray.exceptions.RayError as exc:
            self._fail(unit, f"{unit.name}: failed on a worker ({_cause(exc)})")
            return
        self.done += chunk.tiles
        if unit.failed:
            return
        if unit.slide is not None and result.failures:
            self._fail(unit, result.failures[0])
            return
        unit.encoded[chunk.index] = result
        if len(unit.encoded) == unit.n_chunks:
            self._commit(unit)

    def _fail(self, unit: _Unit, message: str) -> None:
        if not unit.failed:
            unit.failed = True
            self.report.failed.append(message)
            self._close(unit)

    def _close(self, unit: _Unit) -> None:
        unit.encoded.clear()
        if unit.slide is not None and unit.n_chunks:
            self.open_slides -= 1

    # ------------------------------------------------------------ the one writer
    def _commit(self, unit: _Unit) -> None:
        try:
            if unit.slide is not None:
                self._commit_slide(unit.slide, unit)
            else:
                self._commit_patches(unit)
        except LibraryWriteError:
            raise  # the library cannot take more: end the run (committed sources stay)
        except HashViewError as exc:
            self.report.failed.append(exc.message)
        self._close(unit)

    def _commit_slide(self, slide: SlidePlan, unit: _Unit) -> None:
        parts = [unit.encoded[i].pixels for i in range(unit.n_chunks)]
        codes = (np.concatenate(parts) if parts
                 else code_kind(self.library.code_kind).empty_encoded(self.library.bits))
        tiles = slide.plan.tiles
        self.library.add_source(slide.record, codes,
                                xs=np.array([t.x for t in tiles], dtype=np.int64),
                                ys=np.array([t.y for t in tiles], dtype=np.int64),
                                sizes=np.array([t.size for t in tiles], dtype=np.int64),
                                tile_labels=slide.labels)
        added = {"path": str(slide.item.path), "tiles": len(tiles)}
        if slide.labels is not None:
            added["labels"] = label_counts(slide.labels)
        self.report.added.append(added)

    def _commit_patches(self, unit: _Unit) -> None:
        result = unit.encoded[0]
        self.report.failed.extend(result.failures)
        items = []
        for n, (width, height), code in zip(result.kept, result.sizes, result.pixels):
            item, fingerprint = unit.patches[n]
            record = source_record(item, fingerprint, kind="patch", width=width, height=height,
                                   mpp=None, mpp_assumed=False)
            items.append((record, code[None, :], np.zeros(1, np.int64), np.zeros(1, np.int64),
                          np.array([max(width, height)])))
        if items:
            self.library.add_sources(items)
            self.report.added.extend({"path": str(unit.patches[n][0].path), "tiles": 1}
                                     for n in result.kept)

    def _report(self) -> None:
        seconds = time.perf_counter() - (self.started or time.perf_counter())
        rate = self.done / seconds if seconds > 0 else 0.0
        total = self._total()
        message = f"{rate:.0f} tiles/s" if self.done else "starting workers"
        if self.done and total > self.done:
            message += f" · ETA {_clock((total - self.done) / rate)}"
        report(self.progress, "tiles", self.done, total or None, message)

    def _total(self) -> int:
        """Tiles planned, plus the slides not planned yet at the mean of those planned."""
        unplanned = self.slides_total - self.slides_planned
        if not unplanned or not self.slides_planned:
            return self.planned
        slide_tiles = self.planned - self.patches_planned
        return self.planned + round(unplanned * slide_tiles / self.slides_planned)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _cause(exc: Exception) -> str:
    """The worker's own error, in one line, from Ray's wrapper."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
