"""The main window's query side: drops, clipboard, region searches, results, the comparison.

A mixin of :class:`hashview.gui.main_window.MainWindow` (it uses its widgets and controller);
kept in its own module so each file stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from PySide6.QtCore import QUrl
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog

from hashview.errors import HashViewError
from hashview.gui.search_controller import SearchRequest
from hashview.gui.thumbnails import qimage_to_pil

LIBRARY_SUFFIXES = (".h5", ".hdf5")
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.webp);;All files (*)"


@dataclass
class DroppedPaths:
    """What a drop (or a paste of file names) holds, by what the app does with it."""

    images: list[str] = field(default_factory=list)     # searched with (patches)
    slides: list[str] = field(default_factory=list)     # opened in the viewer
    folders: list[str] = field(default_factory=list)    # offered for indexing
    libraries: list[str] = field(default_factory=list)  # opened


def classify_paths(paths: Iterable[str | Path]) -> DroppedPaths:
    """Slides (whole-slide files and slide-sized images: :func:`hashview.slides.image_kind`)
    open in the viewer; any other file is taken as a query image (a file that is no image is
    then reported by the core in one line)."""
    from hashview.slides import image_kind

    out = DroppedPaths()
    for path in map(Path, paths):
        if path.is_dir():
            out.folders.append(str(path))
        elif path.suffix.lower() in LIBRARY_SUFFIXES:
            out.libraries.append(str(path))
        elif image_kind(path) == "slide":
            out.slides.append(str(path))
        else:
            out.images.append(str(path))
    return out


def local_paths(urls: Iterable[QUrl]) -> list[str]:
    return [url.toLocalFile() for url in urls if url.isLocalFile() and url.toLocalFile()]


class SearchMixin:
    # ---------------------------------------------------------------- drag and drop
    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt API)
        mime = event.mimeData()
        if mime.hasUrls() or mime.hasImage():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.dragEnterEvent(event)

    def dropEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if self.handle_mime_data(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def handle_mime_data(self, mime) -> bool:
        """A drop or a paste: files by URL first, else raw image pixels."""
        if mime.hasUrls():
            paths = local_paths(mime.urls())
            if paths:
                self.handle_dropped_paths(paths)
                return True
        if mime.hasImage():
            image = QImage(mime.imageData())
            if not image.isNull():
                self.search_pixels([image])
                return True
        return False

    def handle_dropped_paths(self, paths: list[str]) -> None:
        """Images -> one search (many images: hits merged); a slide -> open it; a library ->
        open it; folders (and extra slides) -> offer to add them to the library."""
        dropped = classify_paths(paths)
        if dropped.libraries:
            self.open_library(dropped.libraries[0])
        if dropped.slides:
            self.open_slide(dropped.slides[0])
        extra = dropped.folders + dropped.slides[1:]
        if extra:
            self.offer_to_add(extra)
        if dropped.images:
            self.search_files(dropped.images)

    def paste_from_clipboard(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None or not self.handle_mime_data(mime):
            self.warn("The clipboard holds no image or image file", "Paste")

    # ---------------------------------------------------------------- starting searches
    def _request(self, kind: str, **fields) -> SearchRequest:
        """A new query: the marks of the last one's hits are cleared; the filters stay."""
        self.results.marks.clear()
        labels, sources, words = self.results.refine.filters()
        return SearchRequest(kind, k=self.results.k(),
                             exclude_source=self.results.exclude_source(), labels=labels,
                             sources=sources, filter_text=words, **fields)

    # ---------------------------------------------------------------- refining
    def search_again(self) -> bool:
        """The last query again, refined by the hits marked good and bad (and the filters)."""
        last = self.controller.last_request
        marks = self.results.marks
        if last is None or last.kind == "case" or not (marks.good() or marks.bad()):
            self.show_message("Mark some hits good (G) or bad (B) first")
            return False
        labels, sources, words = self.results.refine.filters()
        self.controller.search(replace(
            last, positive=tuple(marks.good()), negative=tuple(marks.bad()), labels=labels,
            sources=sources, filter_text=words, k=self.results.k(),
            exclude_source=self.results.exclude_source()))
        return True

    def apply_result_filters(self) -> None:
        """A filter changed: the last search again with it (marks kept as they were used)."""
        last = self.controller.last_request
        if last is None:
            return
        labels, sources, words = self.results.refine.filters()
        if last.kind == "case" and (labels or sources):
            self.show_message("Filters apply to tile and region searches")
            return
        self.controller.search(replace(last, labels=labels, sources=sources, filter_text=words))

    def clear_marks(self) -> None:
        self.results.marks.clear()

    def ask_crop_query(self) -> None:
        """Crop within the last query (a patch or a region) and search with the crop."""
        from hashview.gui.crop_dialog import CropDialog

        last = self.controller.last_request
        if last is None or last.kind == "case":
            self.show_message("Crop works on a patch or region query: search with one first")
            return
        try:
            image = self._query_picture(last)
        except (HashViewError, OSError) as exc:
            self.warn(getattr(exc, "message", str(exc)), "Crop query")
            return
        dialog = CropDialog(image, self)
        if dialog.exec():
            self.search_crop(last, dialog.crop_box(), image.size, picture=image)

    def search_crop(self, last: SearchRequest, box, shown_size, picture=None) -> bool:
        """Search with ``box`` (x, y, w, h in the pixels of :meth:`_query_picture`, of size
        ``shown_size``; ``picture``: that picture when already read)."""
        if box is None:
            self.show_message("Drag a rectangle over the query to crop it")
            return False
        x, y, w, h = box
        if last.kind == "region":  # a sub-region of the slide, read as the library's tiles
            rx, ry, rw, rh = last.region
            sx, sy = rw / shown_size[0], rh / shown_size[1]
            self.search_region(rx + x * sx, ry + y * sy, max(1, w * sx), max(1, h * sy))
        else:
            picture = picture if picture is not None else self._query_picture(last)
            crop = picture.crop((x, y, x + w, y + h))
            self.controller.search(self._request("pixels", images=(crop,), label=(
                f"crop {w}x{h} of {last.describe()}")))
        return True

    @staticmethod
    def _query_picture(request: SearchRequest):
        """The query as one picture: the first patch image, or the region read from its
        slide (at most about 1,024 px a side)."""
        from PIL import Image

        from hashview.slides import open_source

        if request.kind == "files":
            with Image.open(request.paths[0]) as image:
                return image.convert("RGB")
        if request.kind == "pixels":
            return request.images[0].convert("RGB")
        x, y, w, h = request.region
        with open_source(request.source_path) as source:
            level = source.get_best_level_for_downsample(max(w, h) / 1024)
            downsample = source.level_downsamples[level]
            region = source.read_region((x, y), level, (max(1, round(w / downsample)),
                                                        max(1, round(h / downsample))))
        scale = min(1.0, 1024 / max(region.size))
        return region.resize((max(1, round(region.width * scale)),
                              max(1, round(region.height * scale)))) if scale < 1 else region

    def ask_search_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Search with image", "", IMAGE_FILTER)
        if paths:
            self.search_files(paths)

    def search_files(self, paths: list[str]) -> None:
        self.controller.search(self._request("files", paths=tuple(
            str(Path(p).resolve()) for p in paths)))

    def search_pixels(self, images: list[QImage]) -> None:
        self.controller.search(self._request("pixels", images=tuple(
            qimage_to_pil(image) for image in images)))

    def search_region(self, x: int, y: int, w: int, h: int) -> None:
        """Find similar region: the viewer's right-click tile or rubber-band rectangle."""
        if not self.source_path:
            self.warn("Open a slide first", "Find similar region")
            return
        region = (int(x), int(y), int(w), int(h))
        self.viewer.set_highlight(region)
        self.controller.search(self._request("region", source_path=self.source_path,
                                             region=region))

    def find_similar_cases(self) -> None:
        """Search ▸ Find similar cases: the open slide as a whole against the library's."""
        if not self.source_path:
            self.warn("Open a slide first", "Find similar cases")
            return
        self.controller.search(self._request("case", source_path=self.source_path))

    def export_hits_to_qupath(self) -> None:
        """The shown query region and hits as GeoJSON for QuPath, one file per slide."""
        from hashview.gui.qupath_export import ask_export_hits

        ask_export_hits(self)

    def rerun_search(self, k: int, exclude_source: bool) -> None:
        self.settings.top_k = int(k)
        self.controller.rerun(k, exclude_source)

    # ---------------------------------------------------------------- search results
    def _on_search_started(self, request: SearchRequest) -> None:
        self.results.show_pending(request.describe())
        self.show_message(f"Searching: {request.describe()}…", 0)
        self.docks[1].show()
        self.docks[1].raise_()

    def _on_search_finished(self, outcome) -> None:
        self.results.show_outcome(outcome)
        result = outcome.result
        # the headline's own words (a bare "vote 1/1" would call one labelled hit a vote)
        self.show_message(f"{len(result.hits)} hits for {outcome.request.describe()} "
                          f"in {outcome.seconds:.2f} s: {result.summary}", 10000)
        self.refresh_similarity_map()  # the map follows the last query
        if outcome.warnings:
            self.warn("\n".join(outcome.warnings), "Some images could not be read")

    def _on_search_failed(self, request, message: str) -> None:
        if request is None:  # the library could not be loaded
            self.show_message(message, 10000)
            return
        self.results.show_error(message)
        self.warn(message, "Search")

    # ---------------------------------------------------------------- comparison
    def show_hit(self, hit) -> bool:
        """Open the hit's source in the second viewer, centred on the hit and outlined."""
        from hashview.slides import open_source

        viewer = self.compare_viewer
        with self.sync.paused():  # opening fits the new slide: not a zoom to copy across
            if self.compare_source is None or self.compare_source.path != Path(hit.source_path):
                try:
                    source = open_source(hit.source_path)
                except HashViewError as exc:
                    self.warn(exc.message, "Open hit")
                    return False
                old = self.compare_source
                viewer.open_source(source)
                if old is not None:
                    old.close()
                self.compare_source = source
            self.compare.show_hit(hit)
            query = self.controller.last_request
            self.query_pane.show_caption(f"<b>Query</b> {query.describe()}" if query else
                                         f"<b>Query</b> {Path(self.source_path or '').name}")
            if not self.compare.isVisible():
                self.compare.show()
                total = max(2, self.splitter.width())
                self.splitter.setSizes([total // 2, total - total // 2])
            viewer.set_highlight((hit.x, hit.y, hit.size, hit.size))
            width, height = self.compare_source.dimensions
            downsample = self.viewer.downsample() if self.source is not None else None
            if downsample and max(width, height) > 2 * hit.size:
                # the same magnification as the query slide, centred on the hit
                viewer.center_on(hit.x + hit.size / 2, hit.y + hit.size / 2, downsample)
            else:
                viewer.fit()  # a patch: show all of it
        self.sync.forget(1)
        self.sync.note_view(1, *viewer.center(), viewer.downsample())
        return True

    def close_comparison(self) -> None:
        if self.compare_source is not None:
            self.compare_viewer.close_source()
            self.compare_source.close()
            self.compare_source = None
        self.sync.forget(1)
        self.compare.hide()
        self.query_pane.show_caption(None)
