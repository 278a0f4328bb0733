"""One library and its model, ready to index and search: what ``hashview.open_library`` gives.

The CLI, the app and scripts all search through :class:`LibrarySession`. It loads the library's
codes and its model once, reloads them when the file has moved on (tiles added here or by
another process), and keeps the index choice inside: exact search, or the approximate index of
the library's sidecar file (built when wanted, in the background where asked to).

A query is what the user points at (see :meth:`LibrarySession.query_tiles`): a patch image file,
a PIL image, an RGB numpy array, a ``(slide_path, (x, y, w, h))`` region, or a list of these.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from hashview.errors import HashViewError, LibraryError, SourceError
from hashview.search.query import QueryResult, load_library_model, region_tiles, search_images
from hashview.search import Searcher
from hashview.stain_reference import normaliser_of

if TYPE_CHECKING:
    from hashview.annotations.tiles import AnnotationOptions
    from hashview.encode import Encoder
    from hashview.indexing import IndexReport
    from hashview.library import ModelInfo, SourceRecord
    from hashview.models import LoadedModel
    from hashview.progress import ProgressCallback
    from hashview.search.refine import RefinedResult
    from hashview.tiling import TilingParams

Region = tuple[int, int, int, int]


class QueryError(HashViewError):
    """A query none of whose images could be read; ``message`` is the line to show."""

    def __init__(self, message: str):
        super().__init__(None, message)


def open_library(path: str | Path, model: Optional[str | Path] = None, device: str = "auto",
                 index: str = "auto") -> "LibrarySession":
    """Open the library at ``path``, or create it (empty) when there is no file there.

    ``model`` (a name or a model file): for a new library the model that will make its codes
    (the default model when ``None``), with that model's tiling; for an existing one, a model
    to search it with instead of its own (same weights and code length, or ``LibraryError``).
    ``device``: "auto" (CUDA when there is one), "cpu" or "cuda". ``index``: "auto" (exact, or
    the approximate index the library's size calls for), "flat", "ivf" or "multihash".
    """
    path = Path(path)
    if not path.exists():
        model = _create_empty(path, model)  # loaded once: the session searches with it
    return LibrarySession(path, model=model, device=device, index=index)


def _create_empty(path: Path, model: Optional[str | Path]) -> "LoadedModel":
    from hashview.indexing import model_tiling
    from hashview.library import Library
    from hashview.models import DEFAULT_MODEL, load_model

    loaded = load_model(model or DEFAULT_MODEL)
    tiling = model_tiling(loaded.card)
    with Library.create(path, loaded.card, tile_size=tiling.tile_size,
                        target_mpp=tiling.target_mpp):
        pass
    return loaded


class LibrarySession:
    """A library file with its model: ``add`` slides and patches, ``search`` with images.

    Not thread-safe: one thread searches at a time (the app gives it one worker thread). An
    approximate index built with :meth:`build_index_in_background` runs on its own thread and
    is swapped in when ready.
    """

    def __init__(self, path: str | Path, model: "Optional[str | Path | LoadedModel]" = None,
                 device: str = "auto", index: str = "auto",
                 on_index_done: Optional[Callable[["LibrarySession"], None]] = None):
        self.path = str(path)
        self.device = device or "auto"
        self.index = index
        self._model_choice = model
        # called from the build thread when a background build ended (in use, or a note says why
        # not: ``searcher.index_notes``)
        self.on_index_done = on_index_done
        self.searcher: Optional[Searcher] = None
        self.encoder: Optional["Encoder"] = None
        self._model: Optional["LoadedModel"] = None  # the model behind ``encoder``
        self._generation: Optional[int] = None
        self._model_sha256 = self._created = ""
        self._stain_reference = ""  # the reference the encoder re-stains queries to
        self._stale = True
        self._builder: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ what is in it
    @property
    def model(self) -> "ModelInfo":
        """The model that made the library's codes, and the tiling it was run with."""
        with self._read() as library:
            return library.model

    @property
    def n_tiles(self) -> int:
        with self._read() as library:
            return library.n_tiles

    @property
    def sources(self) -> list["SourceRecord"]:
        """The indexed slides and patches, in the order they were added."""
        with self._read() as library:
            return library.sources()

    def _read(self):
        from hashview.library import Library

        return Library.open(self.path, mode="r")

    def __repr__(self) -> str:
        return f"LibrarySession({self.path!r}, device={self.device!r})"

    # ------------------------------------------------------------------ loading
    def invalidate(self) -> None:
        """Reload the library before the next search (its file changed)."""
        self._stale = True

    def load(self) -> Searcher:
        """The library's codes and its model in memory (loaded once; again after the library's
        file has changed). Returns the searcher in use."""
        from hashview.library import Library

        if not self._stale and self.searcher is not None:
            try:
                self._stale = Library.current_generation(self.path) != self._generation
            except LibraryError:
                self._stale = True  # gone or replaced: opening it again says what is wrong
        if self._stale or self.searcher is None:
            self._load()
        return self.searcher

    def _load(self) -> None:
        from hashview.encode import Encoder
        from hashview.library import Library

        self.searcher = None
        # Only the copy is made with the file open (milliseconds): the model takes about a
        # second to load, and an indexing job starting meanwhile would find the file locked.
        with Library.open(self.path, mode="r") as library:
            searcher = Searcher(library, index=self.index)
            stored, generation = library.model, library.generation
            created = str(library.created or "")
        new_encoder = self.encoder is None or self.encoder.card.sha256 != stored.sha256
        if new_encoder:
            self._model = load_library_model(self.path, stored, self._model_choice)
            self.encoder = Encoder(self._model, device=self.device)
        if new_encoder or stored.stain_reference != self._stain_reference:
            # queries are re-stained to the library's reference, as its tiles were
            self.encoder.stain_normaliser = (normaliser_of(stored.stain_reference, self.path)
                                             if stored.stain_reference else None)
            self._stain_reference = stored.stain_reference
        self.searcher, self._generation, self._stale = searcher, generation, False
        self._model_sha256, self._created = stored.sha256, created

    @property
    def loaded_model(self) -> "LoadedModel":
        """The model that encodes queries (loads the library when it is not loaded yet)."""
        self.load()
        return self._model

    # ------------------------------------------------------------------ the index
    @property
    def index_building(self) -> bool:
        return self._builder is not None and self._builder.is_alive()

    def build_index(self, progress: "ProgressCallback" = None):
        """Build the approximate index the library's size wants, now, and save it next to the
        library (a note in ``searcher.index_notes`` says when it could not be saved)."""
        return self.load().build_index(progress=progress)

    def build_index_in_background(self) -> bool:
        """Start building the wanted approximate index on a thread; searches stay exact until
        it is ready. False when none is needed (or one is building already)."""
        searcher = self.load()
        if not searcher.needs_index_build() or self.index_building:
            return False

        def build() -> None:
            try:
                searcher.build_index()
            except Exception as exc:  # noqa: BLE001  (searches stay exact; never crash)
                searcher.index_notes.append(f"the index could not be built ({exc}); "
                                            "searching exactly")
            finally:
                self._builder = None
            if self.searcher is not searcher and self.searcher is not None:
                self.build_index_in_background()  # the library was reloaded meanwhile
            elif self.on_index_done is not None:
                self.on_index_done(self)

        self._builder = threading.Thread(target=build, name="hashview-index-build", daemon=True)
        self._builder.start()
        return True

    # ------------------------------------------------------------------ indexing
    def add(self, paths: str | Path | Sequence[str | Path],
            progress: "ProgressCallback" = None, params: Optional["TilingParams"] = None,
            batch_size: Optional[int] = None,
            annotations: Optional["AnnotationOptions"] = None,
            stain_reference: Optional[str] = None) -> "IndexReport":
        """Tile, encode and store the slides, images and folders of patches under ``paths``
        (what ``hashview index`` and the app's indexing jobs run). Files already in the
        library are skipped; a bad file is reported in ``report.failed`` and the rest go on.
        ``annotations`` labels slide tiles by QuPath annotations (``report.tile_labels``);
        ``stain_reference`` stain-normalises a new library (see :func:`index_paths`)."""
        from hashview.indexing import index_paths

        if isinstance(paths, (str, Path)):
            paths = [paths]
        model = self._model if self._model is not None else self._indexing_model()
        try:
            return index_paths(paths, self.path, model=model, params=params, device=self.device,
                               batch_size=batch_size, progress=progress,
                               annotations=annotations, stain_reference=stain_reference)
        finally:
            self._stale = True

    def _indexing_model(self) -> "LoadedModel":
        """The model to index with: the one given (``index_paths`` checks it against the
        library's), else the library's own, else (no library yet) the default model."""
        from hashview.models import DEFAULT_MODEL, LoadedModel, load_model

        if isinstance(self._model_choice, LoadedModel):
            return self._model_choice
        if self._model_choice or not Path(self.path).exists():
            return load_model(self._model_choice or DEFAULT_MODEL)
        with self._read() as library:
            stored = library.model
        return load_library_model(self.path, stored)

    # ------------------------------------------------------------------ searching
    def search(self, query: Any, k: int = 10, exclude_source: bool = False,
               labels: Optional[set] = None, sources: Optional[set] = None,
               exclude_sources: Optional[set] = None) -> QueryResult:
        """The ``k`` library tiles nearest to ``query`` (see :meth:`query_tiles`), ordered by
        distance, then by the tiles' fixed shuffle (:func:`hashview.code_kinds.tie_keys`), with
        the label vote. ``exclude_source`` leaves out the query's own slide or image files;
        ``labels``/``sources`` keep only tiles with those labels or source ids;
        ``exclude_sources`` leaves out those source ids."""
        started = time.perf_counter()
        searcher = self.load()
        images, warnings, own_paths = self._query_tiles(searcher, query)
        exclude = _excluded_sources(searcher, own_paths, exclude_source, exclude_sources)
        result = search_images(searcher, self.encoder, images, k=k, labels=labels,
                               sources=sources, exclude_sources=exclude)
        result.query_images = images
        result.warnings = warnings
        result.caution = self.check_caution()
        result.seconds = time.perf_counter() - started
        return result

    def check_caution(self) -> Optional[str]:
        """A line when the library's kept check (``hashview check``, or the one after indexing)
        found its model serving its labels badly; read at every search, as a check may have
        been kept since the library was loaded."""
        from hashview.search.check_record import caution, recalled

        return caution(recalled(self.path, self._created, self._generation,
                                self._model_sha256))

    def refine(self, query: Any, positive: Sequence[int], negative: Sequence[int] = (),
               k: int = 10, exclude_source: bool = False, labels: Optional[set] = None,
               sources: Optional[set] = None, exclude_sources: Optional[set] = None,
               push: Optional[float] = None) -> "RefinedResult":
        """Search again with ``query`` refined by examples: library tile ids (``Hit.tile_index``)
        of hits marked good (``positive``) and bad (``negative``).

        The library is searched with one code: the bitwise majority of the query's code(s) and
        the good tiles' codes, pushed away from the bad tiles' codes by ``push`` from 0 to 1
        (default :data:`hashview.search.refine.DEFAULT_PUSH`); see :mod:`hashview.search.refine`. A
        query of several tiles (a region, a list) gives each tile's code one vote; ``query``
        ``None`` refines from the good examples alone. Filters as in :meth:`search`. Returns
        a :class:`QueryResult` (a ``RefinedResult`` naming the examples). ``RefineError``
        (one line) for a tile id the library does not hold, a float-code library, or neither
        a query nor a good example.
        """
        from hashview.search.refine import refined_search

        started = time.perf_counter()
        searcher = self.load()
        images, warnings, own_paths = ([], [], []) if query is None else \
            self._query_tiles(searcher, query)
        exclude = _excluded_sources(searcher, own_paths, exclude_source, exclude_sources)
        result: RefinedResult = refined_search(
            searcher, self.encoder, images, positive, negative, push=push, k=k, labels=labels,
            sources=sources, exclude_sources=exclude)
        result.query_images, result.warnings = images, warnings
        result.caution = self.check_caution()
        result.seconds = time.perf_counter() - started
        return result

    def query_tiles(self, query: Any) -> tuple[list[Image.Image], list[str], list[str]]:
        """``query`` as the tiles to encode: ``(tiles, warnings, files it came from)``.

        A path is a patch image (one tile: the whole image, resized); ``(path, (x, y, w, h))``
        a level-0 region of a slide, read at the library's resolution (one tile per library
        tile it spans); a PIL image or an RGB ``uint8`` array (H, W, 3) one tile; a list, each
        of these. Files in a list that cannot be read are skipped with a warning; when none can
        be, ``QueryError`` (one line) is raised.
        """
        return self._query_tiles(self.load(), query)

    def _query_tiles(self, searcher: Searcher, query: Any):
        size = self.encoder.input_size
        items = query if isinstance(query, list) else [query]
        tiles: list[Image.Image] = []
        warnings: list[str] = []
        own_paths: list[str] = []
        for item in items:
            try:
                if _is_region(item):
                    path, region = item
                    own_paths.append(str(path))
                    tiles.extend(self._region_tiles(searcher, path, region, size))
                elif isinstance(item, (str, Path)):
                    own_paths.append(str(item))
                    tiles.append(_patch_tile(item, size))
                else:
                    tiles.append(_pixels_tile(item, size))
            except HashViewError as exc:
                if len(items) == 1:
                    raise
                warnings.append(exc.message)
        if not tiles:
            raise QueryError(warnings[0] if len(warnings) == 1 else
                             f"none of the {len(warnings)} images could be read: {warnings[0]}")
        return tiles, warnings, own_paths

    @staticmethod
    def _region_tiles(searcher: Searcher, path, region, size: int) -> list[Image.Image]:
        from hashview.slides import open_source
        from hashview.tiling import TilingParams

        params = TilingParams(tile_size=searcher.tile_size, target_mpp=searcher.target_mpp)
        with open_source(path) as source:
            return region_tiles(source, tuple(int(v) for v in region), params, size)


def _excluded_sources(searcher: Searcher, own_paths: Sequence[str], exclude_source: bool,
                      exclude_sources: Optional[set]) -> Optional[set]:
    """The source ids a search leaves out: those given, and with ``exclude_source`` the
    query's own files (however they were moved or renamed); None for none."""
    exclude = set(exclude_sources or ())
    if exclude_source:
        exclude |= {sid for path in own_paths for sid in searcher.source_ids_of_file(path)}
    return exclude or None


def _is_region(item: Any) -> bool:
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, Path))
            and len(item[1]) == 4)


def _patch_tile(path: str | Path, size: int) -> Image.Image:
    """A patch image file as one query tile; a slide (or a slide-sized image) is refused: it
    would be squashed into one tile (:func:`hashview.slides.image_kind`, the one rule)."""
    from hashview.slides import PATCH_MAX_SIDE, image_kind, image_size, open_source
    from hashview.tiling import load_patch

    if Path(path).is_file() and image_kind(path) == "slide":
        found = image_size(path)
        if found and max(found) > PATCH_MAX_SIDE:
            what = f"a {found[0]}x{found[1]} px image (larger than {PATCH_MAX_SIDE} px) is"
        else:
            with open_source(path):  # a broken slide file: its reader says why
                what = "this is"
        raise SourceError(path, f"{what} a slide, not a patch: search a region of it "
                                "(--region x,y,w,h, or open it in the app)")
    return load_patch(path, size)


def _pixels_tile(pixels: Any, size: int) -> Image.Image:
    """A PIL image or an RGB uint8 array as one query tile of ``size`` x ``size``."""
    from hashview.tiling import square_tile

    if isinstance(pixels, np.ndarray):
        if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
            raise SourceError(None, f"an image array must be uint8 of shape (height, width, 3); "
                                    f"got {pixels.dtype} {pixels.shape}")
        pixels = Image.fromarray(np.ascontiguousarray(pixels[:, :, :3]), "RGB")
    if not isinstance(pixels, Image.Image):
        raise TypeError("a query is a path, a (path, (x, y, w, h)) region, a PIL image or an "
                        f"RGB numpy array, not {type(pixels).__name__}")
    return square_tile(pixels.convert("RGB"), size)
