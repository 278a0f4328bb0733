"""The main window: library (left), slide viewer(s) (centre), results (right), jobs (bottom).

Behaviour lives here (opening, settings, persistence), in :mod:`hashview.gui.window_search`
(queries, drops, comparison), :mod:`hashview.gui.window_similarity` (the similarity map) and
:mod:`hashview.gui.window_jobs` (indexing and training jobs); the menus are built in
:mod:`hashview.gui.menus`. Nothing here tiles, encodes or searches: the core does, on worker
threads (search) or worker processes (indexing, training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QSplitter, QWidget)

from hashview.errors import HashViewError
from hashview.gui.compare import ComparePane, QueryPane, ViewerSync
from hashview.gui.dialogs import LIBRARY_FILTER, NewLibraryDialog, SettingsDialog, show_about
from hashview.gui.jobs_panel import JobsPanel
from hashview.gui.library_edits import SLIDE_FILTER, LibraryEditor
from hashview.gui.library_panel import LibraryPanel
from hashview.gui.menus import build_menus
from hashview.gui.results import ResultsPanel
from hashview.gui.search_controller import SearchController
from hashview.gui.settings import AppSettings
from hashview.gui.thumbnails import ThumbnailLoader
from hashview.gui.viewer import SlideViewer
from hashview.gui.window_jobs import JobsMixin
from hashview.gui.window_search import SearchMixin
from hashview.gui.window_similarity import SimilarityMapMixin
from hashview.gui.window_view import ViewMixin


class MainWindow(SearchMixin, SimilarityMapMixin, JobsMixin, ViewMixin, QMainWindow):
    def __init__(self, settings: Optional[AppSettings] = None):
        super().__init__()
        self.settings = settings or AppSettings()
        self.setWindowTitle("HashView")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.library_path: Optional[str] = None
        self.library_info: dict = {}   # Library.stats() of the open library
        self.source = None             # the Source shown in the main viewer
        self.source_path: Optional[str] = None
        self.compare_source = None
        self.thumbnails = ThumbnailLoader(self)

        self.viewer = SlideViewer(cache_mb=self.settings.cache_mb)
        self.compare_viewer = SlideViewer(cache_mb=self.settings.cache_mb)
        self.compare = ComparePane(self.compare_viewer)
        self.query_pane = QueryPane(self.viewer)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.query_pane)
        self.splitter.addWidget(self.compare)
        self.splitter.setChildrenCollapsible(False)
        self.compare.hide()
        self.setCentralWidget(self.splitter)
        self.sync = ViewerSync(self.viewer, self.compare_viewer, self)
        self.compare.sync.setChecked(self.settings.sync_zoom)
        self.sync.set_enabled(self.settings.sync_zoom)
        self.compare.syncToggled.connect(self._on_sync_toggled)
        self.compare.closeRequested.connect(self.close_comparison)

        self.library_panel = LibraryPanel(loader=self.thumbnails)
        self.results = ResultsPanel(loader=self.thumbnails)
        self.results.set_options(self.settings.top_k, False)
        self.jobs = JobsPanel()
        area = Qt.DockWidgetArea
        self.docks = [self._dock("Library", self.library_panel, area.LeftDockWidgetArea),
                      self._dock("Results", self.results, area.RightDockWidgetArea),
                      self._dock("Jobs", self.jobs, area.BottomDockWidgetArea)]
        self.resizeDocks(self.docks[:2], [280, 420], Qt.Orientation.Horizontal)
        self.resizeDocks(self.docks[2:], [170], Qt.Orientation.Vertical)
        self.docks[2].hide()  # the slide gets the room until a job runs

        self.controller = SearchController(self)
        self._build_status_bar()
        self.edits = LibraryEditor(self)
        self._build_similarity_bar()
        self.actions_ = build_menus(self)
        self.actions_.outlines.setChecked(self.settings.tile_outlines)
        self._connect()
        self._restore_window()
        self.offer_interrupted_jobs()

    # ---------------------------------------------------------------- construction
    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{title.lower()}")  # saveState needs stable names
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.status_library = QLabel("No library")
        self.status_tiles = QLabel("")
        self.status_model = QLabel("")
        self.status_device = QLabel(f"device: {self.settings.device}")
        for label in (self.status_library, self.status_tiles, self.status_model,
                      self.status_device):
            label.setContentsMargins(6, 0, 6, 0)
            bar.addPermanentWidget(label)

    def _connect(self) -> None:
        self.viewer.findSimilarRequested.connect(self.search_region)
        self.library_panel.sourceActivated.connect(self.edits.open_record)
        self.results.hitActivated.connect(self.show_hit)
        self.results.optionsChanged.connect(self.rerun_search)
        self.results.qupathExportRequested.connect(self.export_hits_to_qupath)
        self.results.refine.searchAgainRequested.connect(self.search_again)
        self.results.refine.clearMarksRequested.connect(self.clear_marks)
        self.results.refine.filtersChanged.connect(self.apply_result_filters)
        self.results.refine.cropRequested.connect(self.ask_crop_query)
        self.controller.started.connect(self._on_search_started)
        self.controller.finished.connect(self._on_search_finished)
        self.controller.failed.connect(self._on_search_failed)
        self.controller.libraryLoaded.connect(self._on_library_loaded)
        self.jobs.jobFinished.connect(self._on_job_finished)

    def _restore_window(self) -> None:
        geometry, state = self.settings.window_state()
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(1400, 860)
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if not self.confirm_cancel_jobs():
            event.ignore()
            return
        self.settings.save_window_state(self.saveGeometry(), self.saveState())
        self.settings.sync()
        self.results.explainer.shutdown(5000)
        self.thumbnails.shutdown(2000)
        self.controller.wait(5000)
        self.edits.wait(60000)  # a rewrite finishes (or fails whole) before the app exits
        self.close_comparison()
        if self.source is not None:
            self.viewer.close_source()  # returns once no tile read uses the source
            self.source.close()
            self.source = self.source_path = None
        super().closeEvent(event)

    # ---------------------------------------------------------------- messages
    def warn(self, message: str, title: str = "HashView") -> None:
        """One line in the status bar and in a warning box; never a traceback."""
        self.statusBar().showMessage(message, 10000)
        QMessageBox.warning(self, title, message)

    def show_message(self, message: str, msecs: int = 6000) -> None:
        self.statusBar().showMessage(message, msecs)

    def _update_title(self) -> None:
        """"slide — library"; Qt adds " — HashView" itself (the application display name)."""
        parts = [Path(p).name for p in (self.source_path, self.library_path) if p]
        self.setWindowTitle(" — ".join(parts) or "HashView")

    # ---------------------------------------------------------------- opening things
    def open_path(self, path: str | Path) -> None:
        """A library (.h5), a folder (offer to index it) or a slide / image (open it)."""
        path = Path(path)
        if path.suffix.lower() in (".h5", ".hdf5"):
            self.open_library(path)
        elif path.is_dir():
            self.offer_to_add([str(path)])
        else:
            self.open_slide(path)

    def open_library(self, path: str | Path) -> bool:
        from hashview.library import Library

        path = str(Path(path).resolve())
        try:
            with Library.open(path, mode="r") as library:
                self.library_info = library.stats()
                labels, sources = library.label_names(), library.sources()
            self.library_panel.set_library(path)
        except HashViewError as exc:
            self.warn(exc.message, "Open library")
            return False
        if path != self.library_path:
            self.results.clear()  # hits of another library: not this one's
            self.results.marks.clear()  # their tile ids mean other tiles here
        self.results.refine.set_library(labels, sources, path)
        self.library_path = path
        self.settings.last_library = path
        self.settings.add_recent(path)
        self.controller.set_library(path, self.settings.device)
        info = self.library_info
        self.status_library.setText(f"Library: {Path(path).name}")
        self.status_library.setToolTip(path)
        self.status_tiles.setText(f"{info['n_tiles']:,} tiles")  # the index is added once loaded
        self.status_model.setText(f"model: {info['model']['name']}")
        self._update_title()
        if self.source is not None:
            self._apply_library_to_viewer()
        self.show_message(f"Opened library {Path(path).name}: {info['n_sources']} sources, "
                          f"{info['n_tiles']} tiles")
        self.refresh_similarity_map()
        return True

    def open_slide(self, path: str | Path, quiet: bool = False) -> bool:
        """Show the slide or image at ``path``; a failure is one line in a warning box, or in
        the status bar only when ``quiet`` (a slide the user did not just ask for)."""
        from hashview.slides import open_source

        path = str(Path(path).resolve())
        try:
            source = open_source(path)
        except HashViewError as exc:
            if quiet:
                self.show_message(f"Last slide not reopened: {exc.message}", 15000)
            else:
                self.warn(exc.message, "Open slide")
            return False
        old = self.source
        self.viewer.open_source(source)
        if old is not None:
            old.close()
        self.source, self.source_path = source, path
        self.sync.forget(0)
        self.settings.add_recent(path)
        self.settings.last_slide = path
        self._apply_library_to_viewer()
        self._update_title()
        width, height = source.dimensions
        mpp = f", {source.mpp:.3f} µm/px" if source.mpp else ", µm/px unknown"
        self.show_message(f"Opened {Path(path).name}: {width}x{height} px{mpp}")
        self.refresh_similarity_map()
        return True

    def tiling(self) -> tuple[int, float] | None:
        """(tile size, µm/px) of the open library; None without one."""
        if self.library_info:
            return int(self.library_info["tile_size"]), float(self.library_info["target_mpp"])
        return None

    def _apply_library_to_viewer(self) -> None:
        """The library's tile side as the "Find similar" square; its tiles as outlines."""
        from hashview.library import Library
        from hashview.tiling import TilingParams, plan_geometry

        tiling = self.tiling()
        side = None  # no library yet: the viewer's default square
        if tiling is not None:
            params = TilingParams(tile_size=tiling[0], target_mpp=tiling[1])
            side = plan_geometry(self.source, params).tile_level0
        self.viewer.set_query_tile_side(side)
        rects: list = []
        if self.library_path:
            try:
                with Library.open(self.library_path, mode="r") as library:
                    record = library.find_source(path=self.source_path)
                    if record is not None:
                        rects = [tuple(map(int, r)) for r in library.source_tiles(record.id)]
            except HashViewError as exc:
                self.show_message(exc.message)
        self.viewer.set_tile_outlines(rects)
        self.viewer.set_outlines_visible(self.actions_.outlines.isChecked())

    def set_outlines_visible(self, visible: bool) -> None:
        self.settings.tile_outlines = bool(visible)
        self.viewer.set_outlines_visible(bool(visible))

    def _on_library_loaded(self, info) -> None:
        state = "" if info.model_trained else " (untrained)"
        self.status_model.setText(f"model: {info.model_name}{state}")
        self.status_device.setText(f"device: {info.device}")
        from hashview.gui.search_controller import describe_index

        # the index is chosen by library size; say which one answers, and when it is building
        self.status_tiles.setText(f"{info.n_tiles:,} tiles · {describe_index(info.index)}")
        if info.notes:  # e.g. the index could not be saved next to the library
            self.show_message(info.notes[-1], 10000)

    # ---------------------------------------------------------------- file dialogs
    def ask_open_slide(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", "", SLIDE_FILTER)
        if path:
            self.open_slide(path)

    def ask_open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder")
        if folder:
            self.offer_to_add([folder])

    def ask_open_library(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open library", "", LIBRARY_FILTER)
        if path:
            self.open_library(path)

    def ask_new_library(self) -> Optional[str]:
        """File ▸ New library: where, with which model and tiling; the new path, or None."""
        folder = Path(self.library_path).parent if self.library_path else Path.home()
        dialog = NewLibraryDialog(self.settings, self, path=str(folder / "library.h5"))
        if not dialog.exec():
            return None
        choice = dialog.choice()
        if not choice["path"]:
            self.warn("Give the new library a file name", "New library")
            return None
        return choice["path"] if self.create_library(**choice) else None

    def create_library(self, path: str | Path, model: Optional[str] = None,
                       tile_size: Optional[int] = None,
                       target_mpp: Optional[float] = None, stain_reference: str = "") -> bool:
        """An empty library for ``model`` and tiling, then open it. ``None``: as chosen in
        Settings; a tile size or resolution of 0: the model's. ``stain_reference``: an image
        (or ``SLIDE@x,y,w,h``) every tile and query of the library is re-stained to."""
        from hashview.indexing import model_tiling
        from hashview.library import Library, ModelInfo
        from hashview.models import DEFAULT_MODEL, list_models, load_model

        name = model or self.settings.model or DEFAULT_MODEL
        card = next((c for c in list_models() if c.name == name), None)
        if card is None:
            self.warn(f"model {name!r} not found; choose another in Settings", "New library")
            return False
        if tile_size is None:
            tile_size = self.settings.tile_size
        if target_mpp is None:
            target_mpp = self.settings.target_mpp
        tiling = model_tiling(card, tile_size=tile_size or None,  # 0: the model's
                              target_mpp=target_mpp or None)
        try:
            load_model(name)  # a model whose weights fail to load must not get a library
            stain = self._fit_stain_reference(stain_reference) if stain_reference else None
            Library.create(path, ModelInfo.coerce(card, stain_reference=stain) if stain else card,
                           tile_size=tiling.tile_size, target_mpp=tiling.target_mpp).close()
        except HashViewError as exc:
            self.warn(exc.message, "New library")
            return False
        return self.open_library(path)

    def _fit_stain_reference(self, reference: str) -> str:
        """The reference's fitted stain (1-3 s for a 1000 px image): said in the status bar,
        with a busy cursor, as it runs on this thread once per new library."""
        from PySide6.QtGui import QGuiApplication

        from hashview.stain_reference import fit_reference_text

        self.show_message(f"Fitting the stain of {reference}…", 0)
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        QGuiApplication.processEvents()
        try:
            return fit_reference_text(reference)
        finally:
            QGuiApplication.restoreOverrideCursor()
            self.statusBar().clearMessage()

    # ---------------------------------------------------------------- settings & about
    def ask_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            dialog.apply()
            self.apply_settings()

    def apply_settings(self) -> None:
        self.results.set_options(self.settings.top_k, self.results.exclude_source())
        self.status_device.setText(f"device: {self.settings.device}")
        for viewer in (self.viewer, self.compare_viewer):
            viewer.set_cache_mb(self.settings.cache_mb)
        if self.library_path:
            self.controller.set_device(self.settings.device)

    def show_about(self) -> None:
        card = None
        if self.library_info:
            from hashview.models import list_models

            name = self.library_info["model"]["name"]
            card = next((c for c in list_models() if c.name == name), None)
        show_about(self, card)

    def _on_sync_toggled(self, enabled: bool) -> None:
        self.settings.sync_zoom = enabled
        self.sync.set_enabled(enabled)
