"""The results panel: the query tile(s) and the top-k hits as a grid, the label vote, export.

Hit thumbnails are read from their sources in the background (``ThumbnailLoader``), so a result
list of slides appears at once with grey placeholders that fill in as pixels arrive.

"Explain" blends Grad-CAM maps (:mod:`hashview.explain`) onto the thumbnails: each hit shows
what in it matches the query, and the query shows what in it matches the top hit. The maps are
computed in the background (``ExplainLoader``) after the grid is shown, cached per (query, hit),
and re-blended without recomputing when the opacity changes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QHBoxLayout, QLabel, QListView,
                               QListWidget, QListWidgetItem, QMenu, QSlider, QSpinBox,
                               QStackedWidget, QToolButton, QVBoxLayout, QWidget)

from hashview.gui.explain_overlays import ExplainLoader
from hashview.gui.hit_marks import HitMarks
from hashview.gui.refine_bar import RefineBar
from hashview.gui.thumbnails import ThumbnailLoader, pil_to_qimage, qimage_to_pil
from hashview.search.result_summary import TIE_RULE, per_source_line, rank_marks, tie_note

THUMB = 104
QUERY_BACKGROUND = QColor(214, 230, 250)
EXPLAIN_TIP = ("Grad-CAM: colour what in each hit matches the query (red = most), and what "
               "in each query tile matches its best hit")
EMPTY_TEXT = ("<p><b>No search yet</b></p><p>Drop an image here, paste one (Ctrl+V), "
              "or right-click the slide and choose <i>Find similar region</i>. "
              "Shift+drag on the slide selects a larger region; Enter searches it.</p>")


LEGEND_TIP = "Grad-CAM colours: blue = contributes least to the match, red = most"


def _legend_pixmap(width: int = 90, height: int = 10) -> QPixmap:
    """The Explain colour scale (the jet map the overlays use), low to high."""
    import numpy as np

    from hashview.explain import jet

    row = jet(np.linspace(0.0, 1.0, width, dtype=np.float32))
    rgb = np.ascontiguousarray(np.repeat(row[None], height, axis=0))
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


def _digest(image) -> str:
    """Identifies a query tile's pixels: explanations are cached per (query tile, hit)."""
    import hashlib

    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


def _placeholder(side: int = THUMB) -> QPixmap:
    pixmap = QPixmap(side, side)
    pixmap.fill(QColor(225, 225, 225))
    return pixmap


class ResultsPanel(QWidget):
    """Shows a :class:`~hashview.gui.search_controller.SearchOutcome`.

    Signals: ``hitActivated(Hit)`` when a hit is clicked; ``optionsChanged(k, exclude)`` when
    the top-k or "Exclude this slide" changes (the window re-runs the search).
    """

    hitActivated = Signal(object)
    optionsChanged = Signal(int, bool)
    explainToggled = Signal(bool)          # Grad-CAM overlays on / off
    explainOpacityChanged = Signal(int)    # 0..100, Grad-CAM overlay opacity
    qupathExportRequested = Signal()       # Export ▸ Hits for QuPath: the window asks where

    def __init__(self, parent: Optional[QWidget] = None,
                 loader: Optional[ThumbnailLoader] = None,
                 explainer: Optional[ExplainLoader] = None):
        super().__init__(parent)
        self.loader = loader or ThumbnailLoader(self)
        self.loader.loaded.connect(self._on_thumbnail)
        self.explainer = explainer or ExplainLoader(self, sources=self.loader.sources)
        self.explainer.ready.connect(self._on_explained)
        # (query digest, hit key) -> (query map, hit map); kept across searches (small arrays)
        self._maps: dict[tuple[str, str], tuple] = {}
        self._query_digests: list[str] = []  # one per query tile
        self.outcome = None
        self._items_by_key: dict[str, list[QListWidgetItem]] = {}
        self._images: dict[str, QImage] = {}
        self._build()
        self._set_header("")

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.vote_label = QLabel("")
        font = self.vote_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.vote_label.setFont(font)
        self.vote_label.setWordWrap(True)  # a long vote must not widen the panel
        self.detail_label = QLabel("")
        self.detail_label.setStyleSheet("color: #666;")
        self.detail_label.setWordWrap(True)

        self.top_k = QSpinBox()
        self.top_k.setRange(1, 500)
        self.top_k.setValue(10)
        self.top_k.setPrefix("Top ")
        self.top_k.setKeyboardTracking(False)  # re-run once, when the user is done typing
        self.top_k.setToolTip("Number of hits to show")
        self.exclude = QCheckBox("Exclude this slide")
        self.exclude.setToolTip("Leave out hits from the slide or image the query comes from")
        self.top_k.valueChanged.connect(self._emit_options)
        self.exclude.toggled.connect(self._emit_options)

        self.export_button = QToolButton()
        self.export_button.setText("Export")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.export_button)
        self.export_csv_action = menu.addAction("Results as CSV…", self._ask_export_csv)
        self.export_png_action = menu.addAction("Contact sheet as PNG…", self._ask_export_png)
        self.export_qupath_action = menu.addAction(
            "Hits for QuPath (GeoJSON)…", lambda: self.qupathExportRequested.emit())
        self.export_button.setMenu(menu)
        self.export_button.setEnabled(False)

        # Grad-CAM overlays (hashview.explain), computed in the background when checked.
        self.explain = QCheckBox("Explain")
        self.explain_opacity = QSlider(Qt.Orientation.Horizontal)
        self.explain_opacity.setRange(0, 100)
        self.explain_opacity.setValue(50)
        self.explain_opacity.setMaximumWidth(90)
        for widget in (self.explain, self.explain_opacity):
            widget.setToolTip(EXPLAIN_TIP)
        self.explain.toggled.connect(self.explainToggled)
        self.explain.toggled.connect(self._on_explain_toggled)
        self.explain_opacity.valueChanged.connect(self.explainOpacityChanged)
        self.explain_opacity.valueChanged.connect(lambda _v: self._refresh_icons())

        options = QHBoxLayout()
        options.addWidget(self.top_k)
        options.addWidget(self.exclude)
        options.addStretch(1)
        options.addWidget(self.export_button)
        opacity_label = QLabel("Opacity")
        opacity_label.setToolTip(EXPLAIN_TIP)
        explain_row = QHBoxLayout()
        explain_row.addWidget(self.explain)
        explain_row.addWidget(opacity_label)
        explain_row.addWidget(self.explain_opacity)
        self.legend = QLabel()
        self.legend.setPixmap(_legend_pixmap())
        self.legend.setToolTip(LEGEND_TIP)
        legend_low, legend_high = QLabel("low"), QLabel("high")
        for widget in (legend_low, legend_high):
            widget.setToolTip(LEGEND_TIP)
            widget.setStyleSheet("color: #666;")
        self._legend_parts = (legend_low, self.legend, legend_high)
        for widget in self._legend_parts:
            explain_row.addWidget(widget)
            widget.setVisible(False)  # shown with the overlays
        explain_row.addStretch(1)

        self.grid = QListWidget()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setIconSize(QSize(THUMB, THUMB))
        line = self.grid.fontMetrics().height()
        self.grid.setGridSize(QSize(THUMB + 14, THUMB + 3 * line + 14))  # icon + 3 caption lines
        self.grid.setDragEnabled(False)
        self.grid.setAcceptDrops(False)  # drops go to the main window (search)
        self.grid.setWordWrap(False)  # wrapping long names would push the icon out of its cell
        self.grid.setUniformItemSizes(True)
        self.grid.setSpacing(2)
        self.grid.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.grid.itemClicked.connect(self._on_item_clicked)
        self.grid.itemActivated.connect(self._on_item_clicked)
        self.marks = HitMarks(self.grid)  # good / bad, for Search again
        self.refine = RefineBar()
        self.marks.changed.connect(self._on_marks_changed)

        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setMargin(16)
        self.empty.setStyleSheet("color: #505050;")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.grid)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.title)
        layout.addWidget(self.vote_label)
        layout.addWidget(self.detail_label)
        layout.addLayout(options)
        layout.addLayout(explain_row)
        layout.addWidget(self.refine)
        layout.addWidget(self.stack, 1)

    def _set_header(self, title: str, vote: str = "", detail: str = "") -> None:
        """Empty lines are hidden, so the empty state has no gap at the top."""
        for label, text in ((self.title, title), (self.vote_label, vote),
                            (self.detail_label, detail)):
            label.setText(text)
            label.setVisible(bool(text))

    # ---------------------------------------------------------------- options
    def k(self) -> int:
        return self.top_k.value()

    def exclude_source(self) -> bool:
        return self.exclude.isChecked()

    def set_options(self, k: int, exclude: bool) -> None:
        """Set the controls without re-running anything."""
        for widget in (self.top_k, self.exclude):
            widget.blockSignals(True)
        self.top_k.setValue(int(k))
        self.exclude.setChecked(bool(exclude))
        for widget in (self.top_k, self.exclude):
            widget.blockSignals(False)

    def _emit_options(self, *_args) -> None:
        self.optionsChanged.emit(self.k(), self.exclude_source())

    # ---------------------------------------------------------------- states
    def show_pending(self, description: str) -> None:
        self._set_header(f"Searching: {description}…", self.vote_label.text())

    def show_error(self, message: str) -> None:
        self._set_header("Search failed", "", message)

    def clear(self) -> None:
        self.loader.cancel_pending()
        self.explainer.cancel_pending()
        self._query_digests = []
        self.outcome = None
        self.grid.clear()
        self._items_by_key.clear()
        self._images.clear()
        self._set_header("")
        self.export_button.setEnabled(False)
        self.stack.setCurrentWidget(self.empty)

    def show_outcome(self, outcome) -> None:
        """Fill the grid: query tile(s) first, then the hits."""
        self.clear()
        self.outcome = outcome
        result, request = outcome.result, outcome.request
        n_query = len(outcome.query_images)
        details = [f"{len(result.hits)} hits {per_source_line(result.hits)}".strip()
                   + f" in {outcome.seconds * 1000:.0f} ms"]
        if n_query > 1:
            details.append(f"each hit is the best match of one of the {n_query} query tiles")
        details += [note for note in (tie_note(result.hits),) if note]
        if result.cut_tie is not None:  # the cut fell inside a run of equal distances
            details.append(result.cut_tie.describe(len(result.hits)))
        details += outcome.warnings
        self._set_header(f"Query: {request.describe()}"
                         + (f" — {n_query} tiles" if n_query > 1 else ""),
                         result.summary, "; ".join(details))
        for i, image in enumerate(outcome.query_images):
            key = f"query:{i}"
            qimage = pil_to_qimage(image).scaled(
                THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation)
            self._images[key] = qimage
            caption = "Query" if n_query == 1 else f"Query {i + 1}/{n_query}"
            item = QListWidgetItem(QIcon(QPixmap.fromImage(qimage)), caption)
            item.setBackground(QUERY_BACKGROUND)
            item.setToolTip("The query tile, as it was encoded")
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.grid.addItem(item)
        found_by = result.found_by or [0] * len(result.hits)
        for mark, hit, tile in zip(rank_marks(result.hits), result.hits, found_by):
            key = f"hit:{hit.tile_index}"
            item = QListWidgetItem(QIcon(_placeholder()), self._caption(hit, mark))
            item.setData(Qt.ItemDataRole.UserRole, hit)
            item.setData(HitMarks.CAPTION_ROLE, item.text())
            self.marks.style(item)
            tie = f" (tied: {TIE_RULE})" if mark.endswith("=") else ""
            finder = f"\nfound by query tile {tile + 1}" if n_query > 1 else ""
            item.setToolTip(f"#{mark}, distance {hit.distance}{tie}\n"
                            f"label: {hit.label or '—'}\n{hit.source_path}\n"
                            f"x {hit.x}, y {hit.y}, {hit.size} px (level 0){finder}\n"
                            "Click to open it beside the query")
            self.grid.addItem(item)
            self._items_by_key.setdefault(key, []).append(item)
            self.loader.request(key, hit.source_path, (hit.x, hit.y, hit.size, hit.size), THUMB)
        self.marks.set_enabled(request.kind != "case")
        self._on_marks_changed()
        self._query_digests = [_digest(image) for image in outcome.query_images]
        self._request_explanations()
        self.export_button.setEnabled(bool(result.hits))
        self.stack.setCurrentWidget(self.grid)
        self.grid.scrollToTop()
        QTimer.singleShot(0, self.grid.scrollToTop)  # after the first layout of the new items

    def _on_marks_changed(self) -> None:
        self.refine.set_marks(len(self.marks.good()), len(self.marks.bad()), self.marks.enabled)

    @staticmethod
    def _caption(hit, mark: str) -> str:
        return f"#{mark}  d={hit.distance}\n{hit.label or 'no label'}\n{hit.source_name}"

    def hit_items(self) -> list[QListWidgetItem]:
        return [self.grid.item(i) for i in range(self.grid.count())
                if self.grid.item(i).data(Qt.ItemDataRole.UserRole) is not None]

    def hits(self) -> list:
        return list(self.outcome.result.hits) if self.outcome else []

    def thumbnails_loaded(self) -> int:
        return sum(1 for key in self._items_by_key if key in self._images)

    def _on_thumbnail(self, key: str, image: QImage) -> None:
        items = self._items_by_key.get(key)
        if not items:
            return  # from an older result
        self._images[key] = image
        for item in items:
            item.setIcon(QIcon(QPixmap.fromImage(self._displayed(key, image))))

    # ---------------------------------------------------------------- explanations
    def _request_explanations(self) -> None:
        """Ask for the maps not cached yet (only while Explain is checked): each hit against
        the query tile that found it."""
        if not (self.explain.isChecked() and self.outcome and self._query_digests):
            return
        for hit, tile in self._hits_with_finders():
            key = f"hit:{hit.tile_index}"
            digest = self._query_digests[tile]
            if (digest, key) not in self._maps:
                self.explainer.request(f"{digest}|{key}", self.outcome.library,
                                       self.outcome.query_images[tile], hit.source_path,
                                       (hit.x, hit.y, hit.size, hit.size), THUMB)

    def _hits_with_finders(self) -> list[tuple]:
        """(hit, index of the query tile that found it) for the shown hits."""
        hits = self.hits()
        found_by = self.outcome.result.found_by if self.outcome else []
        return list(zip(hits, found_by or [0] * len(hits)))

    def _on_explain_toggled(self, checked: bool) -> None:
        for widget in self._legend_parts:
            widget.setVisible(checked)
        if checked:
            self._request_explanations()
        else:
            self.explainer.cancel_pending()
        self._refresh_icons()

    def _on_explained(self, key: str, query_map, hit_map) -> None:
        digest, _, hit_key = key.partition("|")
        self._maps[(digest, hit_key)] = (query_map, hit_map)
        if digest in self._query_digests:
            self._refresh_icons()

    def _maps_of(self, hit, tile: int) -> Optional[tuple]:
        return self._maps.get((self._query_digests[tile], f"hit:{hit.tile_index}"))

    def explained_count(self) -> int:
        """Hits of the current result whose overlay is ready."""
        return sum(1 for hit, tile in self._hits_with_finders()
                   if self._maps_of(hit, tile) is not None)

    def _displayed(self, key: str, image: QImage) -> QImage:
        """``image`` with its Grad-CAM overlay when Explain is on and the map is ready."""
        if not self.explain.isChecked() or not self._query_digests:
            return image
        heat = None
        if key.startswith("query:"):  # what in the query tile matches its best hit
            tile = int(key.partition(":")[2])
            best = next((hit for hit, by in self._hits_with_finders() if by == tile), None)
            maps = None if best is None else self._maps_of(best, tile)
            heat = None if maps is None else maps[0]
        else:
            for hit, tile in self._hits_with_finders():
                if f"hit:{hit.tile_index}" == key:
                    maps = self._maps_of(hit, tile)
                    heat = None if maps is None else maps[1]
                    break
        if heat is None:
            return image
        from hashview.explain import overlay

        blended = overlay(qimage_to_pil(image), heat, self.explain_opacity.value() / 100.0)
        return pil_to_qimage(blended)

    def _refresh_icons(self) -> None:
        for i in range(self.grid.count()):
            item = self.grid.item(i)
            hit = item.data(Qt.ItemDataRole.UserRole)
            key = f"query:{i}" if hit is None else f"hit:{hit.tile_index}"
            if key is None or key not in self._images:
                continue
            item.setIcon(QIcon(QPixmap.fromImage(self._displayed(key, self._images[key]))))

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        hit = item.data(Qt.ItemDataRole.UserRole)
        if hit is not None:
            self.hitActivated.emit(hit)

    # ---------------------------------------------------------------- export
    def _ask_export_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export results", "results.csv",
                                              "CSV files (*.csv)")
        if path:
            self.export_csv(path)

    def _ask_export_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export contact sheet", "results.png",
                                              "PNG images (*.png)")
        if path:
            self.export_png(path)

    def export_csv(self, path: str | Path) -> None:
        """rank (1 = best), distance (bits), label, source path, x, y, size (level-0 px)."""
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rank", "distance", "label", "source_path", "x", "y", "size"])
            for hit in self.hits():
                writer.writerow([hit.rank + 1, hit.distance, hit.label or "", hit.source_path,
                                 hit.x, hit.y, hit.size])

    def render_sheet(self, columns: int = 5, cell: int = 160) -> QImage:
        """The query tile(s) and the hits with their captions, as one image."""
        cells = [(self._images.get(f"query:{i}"), ["Query" if i == 0 else f"Query {i + 1}"],
                  True) for i in range(len(self.outcome.query_images) if self.outcome else 0)]
        cells += [(self._images.get(f"hit:{h.tile_index}"),
                   [f"#{mark}  d={h.distance}  {h.label or '—'}", h.source_name], False)
                  for mark, h in zip(rank_marks(self.hits()), self.hits())]
        caption_h, header_h, pad = 40, 64, 10
        rows = max(1, -(-len(cells) // columns))
        width = pad + columns * (cell + pad)
        sheet = QImage(width, header_h + rows * (cell + caption_h + pad) + pad,
                       QImage.Format.Format_RGB32)
        sheet.fill(QColor("white"))
        painter = QPainter(sheet)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        title_font, small = QFont(), QFont()
        title_font.setPointSize(13)
        title_font.setBold(True)
        small.setPointSize(8)
        painter.setFont(title_font)
        painter.setPen(QColor(30, 30, 30))
        title = self.title.text() or "HashView results"
        painter.drawText(QRect(pad, 6, width - 2 * pad, 26), Qt.AlignmentFlag.AlignLeft, title)
        painter.drawText(QRect(pad, 32, width - 2 * pad, 26), Qt.AlignmentFlag.AlignLeft,
                         self.vote_label.text())
        painter.setFont(small)
        for n, (image, lines, is_query) in enumerate(cells):
            x = pad + (n % columns) * (cell + pad)
            y = header_h + (n // columns) * (cell + caption_h + pad)
            box = QRect(x, y, cell, cell)
            if is_query:
                painter.fillRect(box.adjusted(-4, -4, 4, caption_h), QUERY_BACKGROUND)
            if image is not None:
                scaled = image.scaled(cell, cell, Qt.AspectRatioMode.KeepAspectRatio,
                                      Qt.TransformationMode.SmoothTransformation)
                painter.drawImage(x + (cell - scaled.width()) // 2,
                                  y + (cell - scaled.height()) // 2, scaled)
            else:
                painter.fillRect(box, QColor(225, 225, 225))
            metrics = painter.fontMetrics()
            for i, line in enumerate(lines):
                text = metrics.elidedText(line, Qt.TextElideMode.ElideMiddle, cell)
                painter.drawText(QRect(x, y + cell + 4 + i * 16, cell, 16),
                                 Qt.AlignmentFlag.AlignLeft, text)
        painter.end()
        return sheet

    def export_png(self, path: str | Path) -> bool:
        return self.render_sheet().save(str(path), "PNG")
