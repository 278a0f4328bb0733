"""Editing the open library from the app: case data from a CSV, removing and relabelling
sources, relabelling tiles from the results, relocating moved slides.

Every edit is one of the core's copy-on-write rewrites (:mod:`hashview.library.editing`): the
whole file is written again, seconds for a large library, so it runs on a worker thread while a
busy bar shows in the status bar and the window keeps answering. When it ends the library is
read again everywhere (panel, filters, search session, outlines); a failure is one message
naming the file and the reason, and the core leaves the library as it was.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox, QProgressBar

from hashview.errors import HashViewError
from hashview.slides.folders import IMAGE_EXTENSIONS, SLIDE_EXTENSIONS

UNLABELLED = "(unlabelled)"
CSV_FILTER = "Case data (*.csv);;All files (*)"
GEOJSON_FILTER = "QuPath GeoJSON (*.geojson *.json);;All files (*)"
# Open slide, Locate… and the stain reference alike: every file the core opens as a slide or
# image, from its own extension lists so that the dialogs never drift from what it reads
SLIDE_FILTER = "Slides and images ({});;All files (*)".format(" ".join(
    f"*{ext}" for ext in sorted(SLIDE_EXTENSIONS) + sorted(IMAGE_EXTENSIONS - SLIDE_EXTENSIONS)))
LISTED = 5  # sources named in a confirmation; the rest are counted


def relocation_dirs(old_path: str, new_path: str) -> tuple[str, str]:
    """What to relocate when the slide at ``old_path`` is found at ``new_path``.

    A folder that is gone moved as a whole: relocate it, and its parents while they are gone
    too and have the same names on both sides (a patch folder ``kather/01_TUMOR`` moved with
    ``kather``), so every source under it moves together. A folder that still exists lost only
    this file: relocate the file alone, never its neighbours that are still in place."""
    old_dir, new_dir = os.path.dirname(old_path), os.path.dirname(new_path)
    if os.path.basename(old_path) != os.path.basename(new_path) or os.path.isdir(old_dir):
        return old_path, new_path
    while True:
        old_up, new_up = os.path.dirname(old_dir), os.path.dirname(new_dir)
        same_name = os.path.basename(old_dir) == os.path.basename(new_dir)
        if not same_name or old_up == old_dir or new_up == new_dir or os.path.isdir(old_up):
            return old_dir, new_dir
        old_dir, new_dir = old_up, new_up


def _nearest_folder(path: str) -> str:
    """The deepest existing folder above ``path`` (where a file dialog starts)."""
    folder = os.path.dirname(path)
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder if os.path.isdir(folder) else str(Path.home())


def _names(records) -> str:
    names = [r.name or os.path.basename(r.path) for r in records]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


class _EditTask(QRunnable):
    def __init__(self, editor: "LibraryEditor", token: int, work: Callable):
        super().__init__()
        self.editor, self.token, self.work = editor, token, work

    def run(self) -> None:
        try:
            result = self.work()
        except HashViewError as exc:
            self.editor._failed.emit(self.token, exc.message)
        except Exception as exc:  # noqa: BLE001  (report in one line, never crash the app)
            traceback.print_exc()
            self.editor._failed.emit(self.token, f"{self.editor.library}: {exc}")
        else:
            self.editor._done.emit(self.token, result)


class LibraryEditor(QObject):
    """The edits of ``window`` (a MainWindow)'s library. ``finished(result)`` after each
    successful edit (an EditResult, or ``(EditResult, CaseMatch)`` for case data),
    ``failed(message)`` otherwise; ``busy`` while one runs (one at a time)."""

    finished = Signal(object)
    failed = Signal(str)
    _done = Signal(int, object)   # worker -> UI thread
    _failed = Signal(int, str)

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self.busy = False
        self.library: Optional[str] = None  # the library the running edit rewrites
        self._token = 0
        self._then: Optional[Callable] = None
        self._title = ""
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy: a rewrite reports no steps
        self.progress.setMaximumWidth(120)
        self.progress.hide()
        window.statusBar().addWidget(self.progress)
        self._done.connect(self._on_done)
        self._failed.connect(self._on_failed)
        window.library_panel.removeRequested.connect(self.confirm_remove)
        window.library_panel.relabelRequested.connect(self.ask_relabel_sources)
        window.library_panel.annotationsRequested.connect(self.ask_annotations)
        window.results.marks.relabelRequested.connect(self.ask_relabel_tiles)

    # ---------------------------------------------------------------- running an edit
    def run(self, title: str, work: Callable[[str], object],
            then: Optional[Callable[[object], None]] = None) -> bool:
        """``work(library_path)`` on the worker thread; then the library is reloaded and
        ``then(result)`` runs. False when no library is open or an edit is running."""
        if not self.window.library_path:
            self.window.warn("Open a library first (File ▸ Open library…)", title)
            return False
        if self.busy:
            self.window.show_message("An edit of the library is still running; wait for it")
            return False
        self.busy, self._then, self._title = True, then, title
        self.library = path = self.window.library_path
        self._token += 1
        self.progress.show()
        self.window.show_message(f"{title}: rewriting {Path(path).name}…", 0)
        self.pool.start(_EditTask(self, self._token, lambda: work(path)))
        return True

    def wait(self, msecs: int = 30000) -> bool:
        return self.pool.waitForDone(msecs)

    @Slot(int, object)
    def _on_done(self, token: int, result) -> None:
        self._end()
        edit = result[0] if isinstance(result, tuple) else result
        self._reload(edit.action == "remove")
        if self._then is not None:
            self._then(result)
        else:
            self.window.show_message(f"{Path(edit.path).name}: {edit.summary}", 15000)
        self.finished.emit(result)

    @Slot(int, str)
    def _on_failed(self, token: int, message: str) -> None:
        self._end()
        self.window.warn(message, self._title)
        self.failed.emit(message)

    def _end(self) -> None:
        self.busy = False
        self.progress.hide()
        self.window.statusBar().clearMessage()

    def _reload(self, ids_moved: bool) -> None:
        """The edited library everywhere: panel, filters, status, outlines, search session.
        After a removal, tile ids have moved: the shown hits and their marks go."""
        window = self.window
        if window.library_path != self.library:
            return  # another library was opened meanwhile
        window.controller.invalidate()
        if ids_moved:
            window.results.clear()
            window.results.marks.clear()
            window.controller.last_request = window.controller.last_outcome = None
        window.open_library(self.library)
        if not ids_moved and window.controller.last_request is not None:
            window.rerun_search(window.results.k(), window.results.exclude_source())

    # ---------------------------------------------------------------- case data
    def ask_import_case_data(self) -> None:
        if not self.window.library_path:
            self.window.warn("Open a library first (File ▸ Open library…)", "Import case data")
            return
        path, _ = QFileDialog.getOpenFileName(self.window, "Import case data (CSV)",
                                              str(Path(self.window.library_path).parent),
                                              CSV_FILTER)
        if path:
            self.import_case_data(path)

    def import_case_data(self, csv_path: str) -> bool:
        """Case data (label, patient, free columns) from a CSV, one row per slide."""
        from hashview.library.case_csv import apply_case_csv, read_case_csv

        def then(result) -> None:
            edit, match = result
            unmatched = ""
            if match.unmatched:
                unmatched = f" ({', '.join(match.unmatched[:LISTED])}" + \
                            (" …)" if len(match.unmatched) > LISTED else ")")
            text = (f"{Path(csv_path).name}: {len(match.matched)} rows matched, "
                    f"{len(match.unmatched)} unmatched{unmatched}, {len(match.without_row)} "
                    f"sources without a row; {edit.summary}")
            self.window.show_message(text, 30000)
            QMessageBox.information(self.window, "Import case data", text)

        return self.run("Import case data",
                        lambda lib: apply_case_csv(lib, read_case_csv(csv_path)), then)

    # ---------------------------------------------------------------- sources
    def confirm_remove(self, records: list) -> bool:
        """Ask (naming the sources and their tiles), then remove them from the library."""
        if not records or not self.window.library_path:
            return False
        tiles = sum(r.tile_count for r in records)
        what = f"{len(records)} sources" if len(records) > 1 else "1 source"
        answer = QMessageBox.question(
            self.window, "Remove from library",
            f"Remove {what} ({_names(records)}) and their {tiles:,} tiles from "
            f"{Path(self.window.library_path).name}?\n\nThe library is rewritten without them; "
            "the slide files are not touched. To have them back, add them again.")
        if answer != QMessageBox.StandardButton.Yes:
            return False
        from hashview.library.editing import remove_sources

        ids = [r.id for r in records]
        return self.run("Remove from library", lambda lib: remove_sources(lib, ids))

    def _ask_label(self, title: str, prompt: str, current: Optional[str]) -> Optional[str]:
        """A label chosen from the library's or typed; "" for unlabelled; None if cancelled."""
        labels = sorted(self.window.library_panel.stats.get("labels", {}))
        items = [*labels, UNLABELLED]
        start = items.index(current) if current in items else len(items) - 1
        text, ok = QInputDialog.getItem(self.window, title, prompt, items, start, True)
        if not ok:
            return None
        text = text.strip()
        return "" if text == UNLABELLED else text

    def ask_relabel_sources(self, records: list) -> bool:
        from hashview.library.editing import relabel_sources

        if not records:
            return False
        tiles = sum(r.tile_count for r in records)
        label = self._ask_label("Relabel", f"Label for {_names(records)} and its {tiles:,} "
                                           "tiles:" if len(records) == 1 else
                                f"Label for {len(records)} sources ({_names(records)}) and "
                                f"their {tiles:,} tiles:", records[0].label)
        if label is None:
            return False
        ids = [r.id for r in records]
        return self.run("Relabel", lambda lib: relabel_sources(lib, ids, label))

    def ask_annotations(self, records: list) -> bool:
        """Relabel slides' tiles from QuPath annotations: one file for one slide, else a
        folder of SLIDE.geojson files."""
        if not records:
            return False
        start = _nearest_folder(records[0].path)
        if len(records) == 1:
            where, _ = QFileDialog.getOpenFileName(
                self.window, f"QuPath annotations of {_names(records)}", start, GEOJSON_FILTER)
        else:
            where = QFileDialog.getExistingDirectory(
                self.window, f"Folder of SLIDE.geojson files for {len(records)} slides", start)
        return bool(where) and self.relabel_from_annotations(records, where)

    def relabel_from_annotations(self, records: list, where: str) -> bool:
        from hashview.annotations.relabel import relabel_from_annotations
        from hashview.annotations.tiles import AnnotationOptions

        ids = [r.id for r in records]

        def then(edit) -> None:
            problems = edit.details["without_annotations"] + edit.details["failed"]
            text = f"{Path(edit.path).name}: {edit.summary}"
            self.window.show_message(text, 30000)
            box = QMessageBox.warning if problems else QMessageBox.information
            box(self.window, "Labels from QuPath annotations",
                "\n".join([text, *problems[:LISTED]]))

        return self.run("Labels from QuPath annotations", lambda lib: relabel_from_annotations(
            lib, ids, AnnotationOptions(where=Path(where))), then)

    def ask_relabel_tiles(self, hits: list) -> bool:
        from hashview.library.editing import relabel_tiles

        if not hits:
            return False
        what = "this tile" if len(hits) == 1 else f"these {len(hits)} tiles"
        label = self._ask_label("Relabel tile", f"Label for {what} of the library (now "
                                                f"{hits[0].label or 'unlabelled'}):",
                                hits[0].label)
        if label is None:
            return False
        tiles = [h.tile_index for h in hits]
        return self.run("Relabel tile", lambda lib: relabel_tiles(lib, tiles, label))

    # ---------------------------------------------------------------- moved slides
    def open_record(self, record) -> bool:
        """Open a library source; one whose file is gone is offered "Locate…"."""
        if os.path.exists(record.path):
            return self.window.open_slide(record.path)
        box = QMessageBox.question(
            self.window, "Slide not found",
            f"{os.path.basename(record.path)} is no longer at {os.path.dirname(record.path)} "
            "(moved, renamed, or on a drive that is not connected).\n\nLocate it? The other "
            "sources of that folder move with it.")
        if box != QMessageBox.StandardButton.Yes:
            return False
        new_path, _ = QFileDialog.getOpenFileName(
            self.window, f"Locate {os.path.basename(record.path)}",
            _nearest_folder(record.path), SLIDE_FILTER)
        return bool(new_path) and self.relocate(record, new_path)

    def relocate(self, record, new_path: str) -> bool:
        """Relocate ``record`` (and its folder's sources: :func:`relocation_dirs`) to
        ``new_path``; say how many now exist, and open it."""
        from hashview.library.editing import relocate

        new_path = os.path.abspath(new_path)
        old_dir, new_dir = relocation_dirs(record.path, new_path)

        def then(result) -> None:
            found = len(result.details["found"])
            self.window.show_message(f"{Path(result.path).name}: {result.summary}", 30000)
            if found < result.changed:
                QMessageBox.information(self.window, "Locate", f"{result.summary}.")
            self.window.open_slide(new_path)

        return self.run("Locate", lambda lib: relocate(lib, old_dir, new_dir), then)
