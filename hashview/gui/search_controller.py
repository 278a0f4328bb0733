"""Runs searches off the UI thread and hands the results back by signal.

One worker thread (a QThreadPool of one) owns the :class:`~hashview.session.LibrarySession` of
the open library (the same Qt-free object scripts get from ``hashview.open_library``), so
loading the model and the codes happens once per library, not once per query, and two searches
never use it at the same time. ``invalidate()`` (after an indexing job added tiles) makes the
next search reload the library.

A library large enough to want an approximate index gets it built on a background thread
(FAISS releases the GIL); searches meanwhile are exact, and the index is swapped in when ready
and saved next to the library, so the next start reads it.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from hashview.errors import HashViewError

Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class SearchRequest:
    """What the user searched with. ``kind``: "files" (patch images, each one query tile),
    "region" (a level-0 region of ``source_path``), "pixels" (in-memory images, e.g. pasted)
    or "case" (the whole slide at ``source_path``: the library's slides ranked)."""

    kind: str
    paths: tuple[str, ...] = ()
    source_path: Optional[str] = None
    region: Optional[Region] = None
    images: tuple = ()  # PIL images for "pixels"
    k: int = 10
    exclude_source: bool = False
    # refinement: library tile ids marked good / bad (the search is then one refined code)
    positive: tuple[int, ...] = ()
    negative: tuple[int, ...] = ()
    # filters on the hits (AND): label names (None = unlabelled) and source ids; ``filter_text``
    # says them in words
    labels: Optional[frozenset] = None
    sources: Optional[frozenset] = None
    filter_text: str = ""
    label: str = ""  # how to name "pixels" images (e.g. a crop of an earlier query)

    def with_options(self, k: int, exclude_source: bool) -> "SearchRequest":
        return replace(self, k=int(k), exclude_source=bool(exclude_source))

    def describe(self) -> str:
        text = self._describe_query()
        if self.positive or self.negative:
            text += f", refined by {len(self.positive)} good, {len(self.negative)} bad"
        if self.filter_text:
            text += f" [{self.filter_text}]"
        return text

    def _describe_query(self) -> str:
        if self.kind == "files":
            return Path(self.paths[0]).name if len(self.paths) == 1 else f"{len(self.paths)} images"
        if self.kind == "region":
            x, y, w, h = self.region
            return f"{Path(self.source_path).name} region {w}x{h} at ({x}, {y})"
        if self.kind == "case":
            return f"{Path(self.source_path).name}, whole slide"
        if self.label:
            return self.label
        return "pasted image" if len(self.images) == 1 else f"{len(self.images)} pasted images"

    def own_paths(self) -> list[str]:
        """Paths whose library tiles "Exclude this slide" leaves out."""
        return [self.source_path] if self.kind in ("region", "case") else list(self.paths)


@dataclass
class SearchOutcome:
    request: SearchRequest
    result: object  # hashview.search.query.QueryResult
    query_images: list  # PIL tiles, as encoded
    library: str
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoadedLibrary:
    path: str
    n_tiles: int
    model_name: str
    model_trained: bool
    device: str
    tile_size: int
    target_mpp: float
    index: str = "flat"  # the index searches use: "flat", "flat-ip", "ivf", "flat (ivf building)"
    notes: tuple[str, ...] = ()  # one-line messages about the index (e.g. its sidecar not saved)


_INDEX_WORDS = {"flat": "exact search", "flat-ip": "exact cosine search", "ivf": "IVF index",
                "multihash": "MultiHash index"}


def describe_index(kind: str) -> str:
    """``LoadedLibrary.index`` in words for the status bar: "exact search", "IVF index",
    "exact search (IVF index building)"."""
    base, _, rest = kind.partition(" (")
    words = _INDEX_WORDS.get(base, base)
    if rest.endswith(" building)"):
        wanted = rest[:-len(" building)")]
        words += f" ({_INDEX_WORDS.get(wanted, wanted)} building)"
    return words


class _Engine:
    """The worker-side state: the :class:`~hashview.session.LibrarySession` of the open library
    (worker thread only)."""

    def __init__(self, on_index_ready=None):
        self.key: Optional[tuple] = None
        self.session = None
        self._logged: tuple = (None, 0)  # the searcher whose first n notes were logged
        self.on_index_ready = on_index_ready  # called (from the build thread) with LoadedLibrary

    def load(self, library: str, device: str, version: int) -> LoadedLibrary:
        from hashview.session import LibrarySession

        key = (library, device, version)
        if self.key != key:
            self.key = None
            if self.session is None or (self.session.path, self.session.device) != (library,
                                                                                    device):
                self.session = LibrarySession(library, device=device,
                                              on_index_done=self._index_done)
            self.session.invalidate()
            searcher = self.session.load()
            self.key = key
            self._log_notes(searcher)
            self.session.build_index_in_background()
        return self.info()

    def _log_notes(self, searcher) -> None:
        """Each note about the index once on stderr (the status bar shows them too)."""
        logged_for, start = self._logged
        notes = searcher.index_notes
        for note in notes[start if logged_for is searcher else 0:]:
            print(f"hashview: {note}", file=sys.stderr)
        self._logged = (searcher, len(notes))

    def _index_done(self, session) -> None:
        if session is not self.session:
            return
        self._log_notes(session.searcher)
        if self.on_index_ready is not None:
            self.on_index_ready(self.info())

    def info(self) -> LoadedLibrary:
        session = self.session
        searcher, card = session.searcher, session.encoder.card
        index = searcher.index_kind
        if searcher.needs_index_build() and session.index_building:
            index += f" ({searcher.wanted_kind} building)"
        return LoadedLibrary(searcher.path, searcher.n_tiles, card.name, bool(card.trained),
                             str(session.encoder.device), searcher.tile_size,
                             searcher.target_mpp, index, tuple(searcher.index_notes))

    @staticmethod
    def query_of(request: SearchRequest):
        """The request as a :meth:`LibrarySession.search` query."""
        if request.kind == "files":
            return list(request.paths)
        if request.kind == "region":
            return (request.source_path, request.region)
        if request.kind == "pixels":
            return list(request.images)
        raise HashViewError(None, "the similarity map follows tile and region searches, not "
                                  "whole-slide ones")

    def similarity_map(self, request: SearchRequest, slide_path: str):
        from hashview.search.heatmap import similarity_map

        return similarity_map(self.session, self.query_of(request), slide_path)

    def run(self, request: SearchRequest) -> SearchOutcome:
        if request.kind == "case":
            return self._run_case(request)
        filters = {"k": request.k, "exclude_source": request.exclude_source,
                   "labels": request.labels, "sources": request.sources}
        if request.positive or request.negative:
            result = self.session.refine(self.query_of(request), list(request.positive),
                                         list(request.negative), **filters)
        else:
            result = self.session.search(self.query_of(request), **filters)
        return SearchOutcome(request, result, result.query_images, self.key[0], result.seconds,
                             result.warnings)

    def _run_case(self, request: SearchRequest) -> SearchOutcome:
        """Whole-slide search; its ranked slides are shown as their best-matching tiles."""
        from hashview.search.cases import search_cases

        started = time.perf_counter()
        cases = search_cases(self.session, request.source_path, k=request.k,
                             exclude_source=request.exclude_source)
        result = cases.to_query_result()
        # the ranked slides lead the grid: the mosaic (dozens of tiles) is described, not shown
        result.query_images = []
        note = (f"whole slide: {len(cases.sources)} slides ranked by the median over a "
                f"{len(cases.mosaic)}-tile mosaic (of {cases.query_tiles} tissue tiles) of "
                "each slide's closest tile; each hit is that slide's best match")
        return SearchOutcome(request, result, [], self.key[0], time.perf_counter() - started,
                             [note])


class _EngineTask(QRunnable):
    """Work on the search thread with the library loaded; failures become one line."""

    def __init__(self, controller: "SearchController", generation: int):
        super().__init__()
        self.controller, self.generation = controller, generation
        # captured now: the UI may switch library while this waits in the queue
        self.library, self.device = controller.library, controller.device
        self.version = controller._library_version

    def run(self) -> None:
        c = self.controller
        try:
            with c._engine_lock:
                info = c._engine.load(self.library, self.device, self.version)
                c._emit(c._loaded, self.generation, info)
                self.work(c._engine)
        except HashViewError as exc:
            self.failed(exc)
        except Exception as exc:  # noqa: BLE001  (report, never crash the app)
            traceback.print_exc()
            self.failed(exc)
        finally:
            c._emit(c._ended, self.generation, None)

    def work(self, engine: _Engine) -> None:
        raise NotImplementedError

    def failed(self, exc: BaseException) -> None:
        raise NotImplementedError


class _Task(_EngineTask):
    """A search (``request`` None: only preload the library)."""

    def __init__(self, controller: "SearchController", generation: int,
                 request: Optional[SearchRequest]):
        super().__init__(controller, generation)
        self.request = request

    def work(self, engine: _Engine) -> None:
        if self.request is not None:
            self.controller._emit(self.controller._done, self.generation,
                                  engine.run(self.request))

    def failed(self, exc: BaseException) -> None:
        self.controller._emit(self.controller._error, self.generation,
                              (self.request, _one_line(exc)))


class _MapTask(_EngineTask):
    """The similarity map of a search's query over one slide."""

    def __init__(self, controller: "SearchController", generation: int,
                 request: SearchRequest, slide_path: str):
        super().__init__(controller, generation)
        self.request, self.slide_path = request, slide_path

    def work(self, engine: _Engine) -> None:
        simmap = engine.similarity_map(self.request, self.slide_path)
        self.controller._emit(self.controller._map_done, self.generation, simmap)

    def failed(self, exc: BaseException) -> None:
        from hashview.search.heatmap import NotInLibrary

        self.controller._emit(self.controller._map_error, self.generation,
                              (self.slide_path, _one_line(exc), isinstance(exc, NotInLibrary)))


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, HashViewError) else str(exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class SearchController(QObject):
    """``search(request)``; results arrive as ``finished(SearchOutcome)`` or
    ``failed(SearchRequest | None, message)``. Only the latest request's answer is delivered."""

    started = Signal(object)          # SearchRequest
    finished = Signal(object)         # SearchOutcome
    failed = Signal(object, str)      # SearchRequest (None for a failed preload), message
    libraryLoaded = Signal(object)    # LoadedLibrary
    busyChanged = Signal(bool)
    mapReady = Signal(object)           # hashview.search.heatmap.SimilarityMap
    mapFailed = Signal(str, str, bool)  # slide path, message, the slide is not in the library

    # worker -> UI thread (queued: emitted from the pool thread)
    _loaded = Signal(int, object)
    _done = Signal(int, object)
    _error = Signal(int, object)
    _ended = Signal(int, object)
    _map_done = Signal(int, object)
    _map_error = Signal(int, object)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self._engine = _Engine(on_index_ready=lambda info: self._emit(self._loaded, 0, info))
        self._engine_lock = threading.Lock()
        self.library: Optional[str] = None
        self.device = "auto"
        self.last_request: Optional[SearchRequest] = None
        self.last_outcome: Optional[SearchOutcome] = None
        self.loaded_library: Optional[LoadedLibrary] = None
        self._generation = 0
        self._map_generation = 0
        self._library_version = 0
        self._pending = 0
        self._loaded.connect(self._on_loaded)
        self._done.connect(self._on_done)
        self._error.connect(self._on_error)
        self._ended.connect(self._on_ended)
        self._map_done.connect(self._on_map_done)
        self._map_error.connect(self._on_map_error)

    # ---------------------------------------------------------------- public API
    def set_library(self, path: Optional[str], device: str = "auto", preload: bool = True) -> None:
        """Search ``path`` from now on; loads it in the background when ``preload``."""
        path = str(Path(path).resolve()) if path else None
        if path != self.library:  # the same library reloaded (tiles added) keeps "re-run"
            self.last_request = self.last_outcome = None
        self.library = path
        self.device = device or "auto"
        self.loaded_library = None
        self.invalidate()
        if self.library and preload:
            self._submit(None)

    def set_device(self, device: str) -> None:
        if device != self.device:
            self.set_library(self.library, device)

    def invalidate(self) -> None:
        """The library file changed (tiles were added): reload it before the next search."""
        self._library_version += 1  # never blocks: a running search may hold the engine

    def search(self, request: SearchRequest) -> None:
        if not self.library:
            self.failed.emit(request, "no library is open (File ▸ Open library…)")
            return
        self.last_request = request
        self.started.emit(request)
        self._submit(request)

    def rerun(self, k: int, exclude_source: bool) -> bool:
        """The last search again with new options; False when there is none."""
        if self.last_request is None:
            return False
        self.search(self.last_request.with_options(k, exclude_source))
        return True

    def similarity_map(self, request: SearchRequest, slide_path: str) -> None:
        """The map of ``request``'s query over ``slide_path``: ``mapReady`` or ``mapFailed``;
        only the latest map asked for is delivered."""
        if not self.library:
            self.mapFailed.emit(slide_path, "no library is open", False)
            return
        self._map_generation += 1
        self._pending += 1
        if self._pending == 1:
            self.busyChanged.emit(True)
        self.pool.start(_MapTask(self, self._map_generation, request, slide_path))

    def is_busy(self) -> bool:
        return self._pending > 0

    def wait(self, msecs: int = 30000) -> bool:
        return self.pool.waitForDone(msecs)

    # ---------------------------------------------------------------- internals
    def _submit(self, request: Optional[SearchRequest]) -> None:
        self._generation += 1
        self._pending += 1
        if self._pending == 1:
            self.busyChanged.emit(True)
        self.pool.start(_Task(self, self._generation, request))

    def _emit(self, signal, generation: int, payload) -> None:
        try:
            signal.emit(generation, payload)
        except RuntimeError:
            pass  # controller deleted while the worker ran (app closing)

    @Slot(int, object)
    def _on_ended(self, generation: int, _payload) -> None:
        self._pending = max(0, self._pending - 1)
        if self._pending == 0:
            self.busyChanged.emit(False)

    @Slot(int, object)
    def _on_loaded(self, generation: int, info: LoadedLibrary) -> None:
        if info.path == self.library and info != self.loaded_library:
            self.loaded_library = info
            self.libraryLoaded.emit(info)

    @Slot(int, object)
    def _on_done(self, generation: int, outcome: SearchOutcome) -> None:
        if generation == self._generation:  # older answers were superseded
            self.last_outcome = outcome
            self.finished.emit(outcome)

    @Slot(int, object)
    def _on_map_done(self, generation: int, simmap) -> None:
        if generation == self._map_generation:
            self.mapReady.emit(simmap)

    @Slot(int, object)
    def _on_map_error(self, generation: int, payload) -> None:
        if generation == self._map_generation:
            self.mapFailed.emit(*payload)

    @Slot(int, object)
    def _on_error(self, generation: int, payload) -> None:
        request, message = payload
        if generation == self._generation:
            self.failed.emit(request, message)
