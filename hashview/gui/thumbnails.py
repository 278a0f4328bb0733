"""Background thumbnails of sources and of tiles inside them (library panel, results grid).

Reading pixels can take tens of milliseconds (slide decoding), so it never happens on the UI
thread: requests run on a small QThreadPool and come back as ``loaded(key, QImage)``. Open
sources are kept in a small LRU cache because a result list often holds many hits of one slide.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from hashview.errors import HashViewError
from hashview.slides import Source, open_source
from hashview.slides.thumbnail import Region, read_thumbnail



def pil_to_qimage(image: Image.Image) -> QImage:
    """An RGB copy of a PIL image as a QImage (safe to build off the UI thread)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes()
    qimage = QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888)
    return qimage.copy()  # detach from ``data``, which Python frees


def qimage_to_pil(qimage: QImage) -> Image.Image:
    """A QImage (e.g. from the clipboard) as an RGB PIL image."""
    converted = qimage.convertToFormat(QImage.Format.Format_RGB888)
    width, height = converted.width(), converted.height()
    stride = converted.bytesPerLine()
    raw = bytes(converted.constBits())[: stride * height]
    return Image.frombuffer("RGB", (width, height), raw, "raw", "RGB", stride, 1).copy()


class SourceCache:
    """Open sources by path, least recently used closed first; one lock per source because
    Pillow-backed sources are not safe to read from two threads at once."""

    def __init__(self, capacity: int = 12):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[Source, threading.Lock]] = OrderedDict()

    def get(self, path: str) -> tuple[Source, threading.Lock]:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        source = open_source(path)  # outside the lock: opening a slide can be slow
        with self._lock:
            if path in self._items:  # another thread won the race
                source.close()
                return self._items[path]
            self._items[path] = (source, threading.Lock())
            while len(self._items) > self.capacity:
                _, (old, old_lock) = self._items.popitem(last=False)
                with old_lock:
                    old.close()
            return self._items[path]

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for source, lock in items:
            with lock:
                source.close()


class _ThumbnailRead(QRunnable):
    def __init__(self, loader: "ThumbnailLoader", key: str, path: str,
                 region: Optional[Region], side: int, generation: int):
        super().__init__()
        self.loader, self.key, self.path = loader, key, path
        self.region, self.side, self.generation = region, side, generation

    def run(self) -> None:
        loader = self.loader
        if self.generation != loader.generation:
            return  # the view asking for it has moved on
        try:
            source, lock = loader.sources.get(self.path)
            with lock:
                image = read_thumbnail(source, self.region, self.side)
            result, error = pil_to_qimage(image), ""
        except HashViewError as exc:
            result, error = None, exc.message
        except Exception as exc:  # noqa: BLE001  (a bad file must not kill the worker)
            result, error = None, f"{self.path}: {exc}"
        try:
            if result is not None:
                loader.loaded.emit(self.key, result)
            else:
                loader.failed.emit(self.key, error)
        except RuntimeError:
            pass  # the loader was deleted while we were reading (window closed)


class BackgroundReader(QObject):
    """A thread pool for reads from sources, with a shared source cache and a generation
    counter: ``cancel_pending`` drops queued jobs, and running ones finish but are ignored."""

    def __init__(self, parent: Optional[QObject] = None, threads: int = 2,
                 sources: Optional[SourceCache] = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self.sources = sources or SourceCache()
        self.generation = 0

    def cancel_pending(self) -> None:
        """Drop queued requests (running ones finish but are ignored by generation)."""
        self.generation += 1
        self.pool.clear()

    def shutdown(self, msecs: int = 3000) -> None:
        self.cancel_pending()
        self.pool.waitForDone(msecs)
        self.sources.clear()


class ThumbnailLoader(BackgroundReader):
    """``request(key, path, region, side)`` -> later ``loaded(key, QImage)`` or ``failed``."""

    loaded = Signal(str, QImage)
    failed = Signal(str, str)

    def request(self, key: str, path: str, region: Optional[Region] = None,
                side: int = 128) -> None:
        self.pool.start(_ThumbnailRead(self, key, path, region, side, self.generation))
