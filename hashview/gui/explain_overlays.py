"""Background Grad-CAM overlays for the results grid (query vs each hit).

Same pattern as :mod:`hashview.gui.thumbnails`: requests run on a one-thread QThreadPool (a
Grad-CAM pass is CPU-bound; one thread leaves the other core to the UI and thumbnails) and come
back as ``ready(key, query_map, hit_map)`` (float32 numpy maps in [0, 1]). The model is loaded
once per library in the worker, as a private copy: hooks and autograd never touch the
search engine's net. The hit is read as the library tile (its level-0 region, fitted in the
thumbnail side), which the model then resizes to its input size like any image.
"""

from __future__ import annotations

import threading
from typing import Optional

from PIL import Image
from PySide6.QtCore import QObject, QRunnable, Signal

from hashview.gui.thumbnails import BackgroundReader, SourceCache
from hashview.slides.thumbnail import Region, read_thumbnail


class _ExplainJob(QRunnable):
    def __init__(self, owner: "ExplainLoader", key: str, library: str, query: Image.Image,
                 path: str, region: Optional[Region], side: int, generation: int):
        super().__init__()
        self.owner, self.key, self.library, self.query = owner, key, library, query
        self.path, self.region, self.side, self.generation = path, region, side, generation

    def run(self) -> None:
        owner = self.owner
        if self.generation != owner.generation:
            return
        try:
            from hashview.explain import explain_pair

            model = owner.model_for(self.library)
            source, lock = owner.sources.get(self.path)
            with lock:
                hit = read_thumbnail(source, self.region, self.side)
            result = explain_pair(model, self.query, hit, method=owner.method)
            payload, error = (result.map_a, result.map_b), ""
        except Exception as exc:  # noqa: BLE001  (an overlay must never kill the worker)
            payload, error = None, str(exc)
        try:
            if payload is not None:
                owner.ready.emit(self.key, payload[0], payload[1])
            else:
                owner.failed.emit(self.key, error)
        except RuntimeError:
            pass  # the loader was deleted meanwhile


class ExplainLoader(BackgroundReader):
    """``request(key, library, query_image, hit_path, region, side)`` -> ``ready`` later."""

    ready = Signal(str, object, object)
    failed = Signal(str, str)

    def __init__(self, parent: Optional[QObject] = None, method: str = "gradcam",
                 sources: Optional[SourceCache] = None):
        # one thread: a Grad-CAM pass already uses every core through torch
        super().__init__(parent, threads=1, sources=sources or SourceCache(capacity=4))
        self.method = method
        self._models: dict = {}
        self._lock = threading.Lock()

    def model_for(self, library: str):
        """The library's model, loaded once (worker thread)."""
        with self._lock:
            if library not in self._models:
                from hashview.library import Library
                from hashview.search.query import load_library_model

                with Library.open(library, mode="r") as lib:
                    stored = lib.model
                self._models[library] = load_library_model(library, stored)
            return self._models[library]

    def request(self, key: str, library: str, query: Image.Image, path: str,
                region: Optional[Region] = None, side: int = 128) -> None:
        self.pool.start(_ExplainJob(self, key, library, query, path, region, side,
                                    self.generation))
