"""The main window's similarity map: the last query's distances over the open slide.

A mixin of :class:`hashview.gui.main_window.MainWindow`. View ▸ Similarity map (H) turns it on:
the map follows every tile or region search (and a click on the slide searches from there), the
slide changing or tiles being added redraws it. A slide with no tiles in the library has no map:
the window offers to index it and draws the map when that job ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QToolBar

from hashview.gui.similarity_bar import SimilarityBar

CLICK_HINT = "Click the slide (or right-click ▸ Find similar region) to search: the map follows."


class SimilarityMapMixin:
    def _build_similarity_bar(self) -> None:
        self.similarity_bar = SimilarityBar()
        toolbar = QToolBar("Similarity map", self)
        toolbar.setObjectName("toolbar-similarity")  # saveState needs a stable name
        toolbar.setMovable(False)
        toolbar.addWidget(self.similarity_bar)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)
        toolbar.hide()
        self.similarity_toolbar = toolbar
        layer = self.viewer.similarity
        self.similarity_bar.thresholdChanged.connect(layer.set_threshold)
        self.similarity_bar.opacityChanged.connect(layer.set_opacity)
        layer.set_opacity(self.similarity_bar.current_opacity())
        self.controller.mapReady.connect(self._on_map_ready)
        self.controller.mapFailed.connect(self._on_map_failed)
        self._map_offered: set[str] = set()  # slides already offered for indexing
        self._map_waiting_for: Optional[str] = None  # a slide being indexed for its map

    def similarity_map_on(self) -> bool:
        return self.viewer.similarity.visible

    def toggle_similarity_map(self, on: bool) -> None:
        self.viewer.similarity.set_visible(on)
        self.similarity_toolbar.setVisible(bool(on))
        if self.actions_.similarity.isChecked() != bool(on):
            self.actions_.similarity.setChecked(bool(on))
        if on:
            self.refresh_similarity_map()

    def refresh_similarity_map(self) -> None:
        """Ask for the map of the last search over the open slide (when the map is on)."""
        if not self.similarity_map_on():
            return
        bar = self.similarity_bar
        request = self.controller.last_request
        if not self.source_path:
            bar.show_status("Open a slide to see where its tissue is like the query.")
        elif not self.library_path:
            bar.show_status("Open a library first: the map colours the library's tiles.")
        elif request is None or request.kind == "case":
            self.viewer.similarity.set_map(None)
            bar.show_status(CLICK_HINT)
        else:
            bar.show_status(f"Computing the map of {request.describe()}…")
            self.controller.similarity_map(request, self.source_path)

    def _on_map_ready(self, simmap) -> None:
        if simmap.slide_path != self.source_path or not self.similarity_map_on():
            return  # the slide changed (or the map was turned off) while it was computed
        request = self.controller.last_request
        what = request.describe() if request is not None else "the query"
        self.viewer.similarity.set_map(simmap, caption=f"Similarity to {what}")
        self.similarity_bar.set_scale(simmap.scale_max)
        nearest = min(t[3] for t in simmap.tiles)
        self.similarity_bar.show_status(
            f"{len(simmap.tiles)} tiles · nearest {nearest} of {simmap.bits} bits · query: "
            f"{what} · click the slide to search from there")

    def _on_map_failed(self, slide_path: str, message: str, not_in_library: bool) -> None:
        if slide_path != self.source_path:
            return
        self.viewer.similarity.set_map(None)
        if not not_in_library:
            self.similarity_bar.show_status(message)
            return
        self.similarity_bar.show_status("This slide is not in the library: index it to see "
                                        "the map (File ▸ Add current slide to library).")
        if self._map_waiting_for == slide_path or slide_path in self._map_offered:
            return  # asked once per slide: no dialog at every search
        self._map_offered.add(slide_path)
        answer = QMessageBox.question(
            self, "Similarity map", f"{Path(slide_path).name} is not in the library, so it has "
            "no tiles to colour.\n\nIndex it now? It runs in the background; the map appears "
            "when it is done.")
        if answer == QMessageBox.StandardButton.Yes and self.add_to_library([slide_path]):
            self._map_waiting_for = slide_path
            self.similarity_bar.show_status(f"Indexing {Path(slide_path).name}: the map "
                                            "appears when it is done (Jobs panel).")

    def _map_after_index(self, spec, status: str) -> None:
        """An index job into the open library ended (the window has reopened the library, which
        asked for the map again): stop waiting for the slide it indexed."""
        waiting = self._map_waiting_for
        if waiting and waiting in spec.args.get("paths", ()):
            self._map_waiting_for = None
            if status != "done":
                self.similarity_bar.show_status(f"Indexing {Path(waiting).name}: {status}.")
