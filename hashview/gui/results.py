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
from hashview.gui.thumbnails import ThumbnailLoader, pil_to_qimage, qimage_to_pil

THUMB = 104
QUERY_BACKGROUND = QColor(214, 230, 250)
EXPLAIN_TIP = ("Grad-CAM: colour what in each hit matches the query (red = most), and what "
               "in the query matches the top hit")
EMPTY_TEXT = ("<p><b>No search yet</b></p><p>Drop an image here, paste one (Ctrl+V), "
              "or right-click the slide and choose <i>Find similar region</i>. "
              "Shift+drag on the slide selects a larger region; Enter searches it.</p>")


def vote_text(vote) -> str:
    if vote is None:
        return "No labelled hits"
    return f"{vote.count}/{vote.total} {vote.label} ({vote.share:.0%})"


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
        self._query_digest = ""
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
        self._query_digest = ""
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
        labelled = sum(1 for hit in result.hits if hit.label)
        details = [f"{len(result.hits)} hits ({labelled} labelled) in "
                   f"{outcome.seconds * 1000:.0f} ms"] + outcome.warnings
        self._set_header(f"Query: {request.describe()}"
                         + (f" — {n_query} tiles" if n_query > 1 else ""),
                         vote_text(result.vote), "; ".join(details))
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
        for hit in result.hits:
            key = f"hit:{hit.tile_index}"
            item = QListWidgetItem(QIcon(_placeholder()), self._caption(hit))
            item.setData(Qt.ItemDataRole.UserRole, hit)
            item.setToolTip(f"#{hit.rank + 1}, Hamming distance {hit.distance}\n"
                            f"label: {hit.label or '—'}\n{hit.source_path}\n"
                            f"x {hit.x}, y {hit.y}, {hit.size} px (level 0)\n"
                            "Click to open it beside the query")
            self.grid.addItem(item)
            self._items_by_key.setdefault(key, []).append(item)
            self.loader.request(key, hit.source_path, (hit.x, hit.y, hit.size, hit.size), THUMB)
        if outcome.query_images:
            import hashlib

            first = outcome.query_images[0]
            self._query_digest = hashlib.sha1(first.tobytes()
                                              + repr(first.size).encode()).hexdigest()
        self._request_explanations()
        self.export_button.setEnabled(bool(result.hits))
        self.stack.setCurrentWidget(self.grid)
        self.grid.scrollToTop()
        QTimer.singleShot(0, self.grid.scrollToTop)  # after the first layout of the new items

    @staticmethod
    def _caption(hit) -> str:
        return f"#{hit.rank + 1}  d={hit.distance}\n{hit.label or 'no label'}\n{hit.source_name}"

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
        """Ask for the maps not cached yet (only while Explain is checked)."""
        if not (self.explain.isChecked() and self.outcome and self._query_digest):
            return
        query = self.outcome.query_images[0]
        for hit in self.hits():
            key = f"hit:{hit.tile_index}"
            if (self._query_digest, key) not in self._maps:
                self.explainer.request(f"{self._query_digest}|{key}", self.outcome.library,
                                       query, hit.source_path,
                                       (hit.x, hit.y, hit.size, hit.size), THUMB)

    def _on_explain_toggled(self, checked: bool) -> None:
        if checked:
            self._request_explanations()
        else:
            self.explainer.cancel_pending()
        self._refresh_icons()

    def _on_explained(self, key: str, query_map, hit_map) -> None:
        digest, _, hit_key = key.partition("|")
        self._maps[(digest, hit_key)] = (query_map, hit_map)
        if digest == self._query_digest:
            self._refresh_icons()

    def _top_hit_key(self) -> Optional[str]:
        hits = self.hits()
        return f"hit:{hits[0].tile_index}" if hits else None

    def explained_count(self) -> int:
        """Hits of the current result whose overlay is ready."""
        return sum(1 for key in self._items_by_key if (self._query_digest, key) in self._maps)

    def _displayed(self, key: str, image: QImage) -> QImage:
        """``image`` with its Grad-CAM overlay when Explain is on and the map is ready."""
        if not self.explain.isChecked() or not self._query_digest:
            return image
        if key.startswith("query:"):
            top = self._top_hit_key()
            maps = self._maps.get((self._query_digest, top)) if key == "query:0" and top else None
            heat = None if maps is None else maps[0]
        else:
            maps = self._maps.get((self._query_digest, key))
            heat = None if maps is None else maps[1]
        if heat is None:
            return image
        from hashview.explain import overlay

        blended = overlay(qimage_to_pil(image), heat, self.explain_opacity.value() / 100.0)
        return pil_to_qimage(blended)

    def _refresh_icons(self) -> None:
        for i in range(self.grid.count()):
            item = self.grid.item(i)
            hit = item.data(Qt.ItemDataRole.UserRole)
            key = "query:0" if hit is None and i == 0 else (
                f"hit:{hit.tile_index}" if hit is not None else None)
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
                   [f"#{h.rank + 1}  d={h.distance}  {h.label or '—'}", h.source_name], False)
                  for h in self.hits()]
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
                         f"Vote: {self.vote_label.text()}")
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
