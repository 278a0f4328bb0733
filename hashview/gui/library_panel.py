"""The library panel: the sources of the open library with thumbnails, labels, tile counts,
patient ids and case metadata.

Thumbnails are asked for only when a row is first painted (the model's DecorationRole), so a
library of thousands of patches costs nothing until the user scrolls to them. The filter box
takes free words (matched in names, labels, patient ids and metadata values) and ``key=value``
conditions (:mod:`hashview.gui.case_filter`). The right-click menu (and the Delete key) asks
for edits by signal; :mod:`hashview.gui.library_edits` carries them out.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from PySide6.QtCore import (QAbstractListModel, QModelIndex, QSize, QSortFilterProxyModel, Qt,
                            QTimer, Signal)
from PySide6.QtGui import QAction, QColor, QIcon, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QLabel, QLineEdit, QListView, QMenu,
                               QVBoxLayout, QWidget)

from hashview.errors import HashViewError
from hashview.gui.case_filter import sources_matching, split_filter
from hashview.gui.thumbnails import ThumbnailLoader

ICON = 48
CONDITION_DELAY_MS = 300  # a pause in typing before key=value conditions read the library
NAME_CHARS = 30  # long file names (Kather tiles) are shortened in the middle; tooltips show all


def elide_middle(text: str, limit: int = NAME_CHARS) -> str:
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]


SourceRole = Qt.ItemDataRole.UserRole + 1


def problem_note() -> QLabel:
    """A hidden red line under a filter field, for why its text cannot be applied."""
    note = QLabel()
    note.setWordWrap(True)
    note.setStyleSheet("color: #a01010;")
    note.hide()
    return note


class SourceListModel(QAbstractListModel):
    """Rows of :class:`hashview.library.SourceRecord`; thumbnails loaded on first display."""

    def __init__(self, loader: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.records: list = []
        self.metadata: dict[int, dict[str, str]] = {}  # source id -> {key: value}
        self._icons: dict[str, QIcon] = {}
        self._asked: set[str] = set()
        self._row_of: dict[str, int] = {}
        placeholder = QPixmap(ICON, ICON)
        placeholder.fill(QColor(230, 230, 230))
        self._placeholder = QIcon(placeholder)
        loader.loaded.connect(self._on_thumbnail)

    def set_records(self, records: list, metadata: Optional[dict] = None) -> None:
        self.beginResetModel()
        self.records = list(records)
        self.metadata = dict(metadata or {})
        self._row_of = {r.path: i for i, r in enumerate(self.records)}
        self._asked &= set(self._row_of)  # keep thumbnails of sources still listed
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 (Qt API)
        return 0 if parent.isValid() else len(self.records)

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        rec = self.records[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            kind = "patch" if rec.kind == "patch" else f"{rec.tile_count} tiles"
            patient = f" · {rec.patient_id}" if rec.patient_id else ""
            return f"{elide_middle(rec.name)}\n{rec.label or 'unlabelled'} · {kind}{patient}"
        if role == Qt.ItemDataRole.DecorationRole:
            icon = self._icons.get(rec.path)
            if icon is None and rec.path not in self._asked:
                self._asked.add(rec.path)
                self.loader.request(f"lib:{rec.path}", rec.path, None, ICON * 2)
            return icon or self._placeholder
        if role == Qt.ItemDataRole.ToolTipRole:
            mpp = f"{rec.mpp:.3f} µm/px" if rec.mpp else "µm/px unknown"
            case = "".join(f"\n{key}: {value}" for key, value in
                           self.metadata.get(rec.id, {}).items())
            return (f"{rec.path}\n{rec.kind}, {rec.width}x{rec.height} px, {mpp}\n"
                    f"label: {rec.label or '—'}, {rec.tile_count} tile(s)\n"
                    f"patient: {rec.patient_id or '—'}{case}\n"
                    "Double-click to open; right-click to relabel or remove")
        if role == SourceRole:
            return rec
        if role == Qt.ItemDataRole.UserRole:  # what the filter box's free words match
            values = " ".join(self.metadata.get(rec.id, {}).values())
            return (f"{rec.name} {rec.label or ''} {rec.kind} {rec.patient_id or ''} "
                    f"{values}").casefold()
        return None

    def _on_thumbnail(self, key: str, image: QImage) -> None:
        if not key.startswith("lib:"):
            return
        path = key[4:]
        row = self._row_of.get(path)
        if row is None:
            return
        self._icons[path] = QIcon(QPixmap.fromImage(image))
        index = self.index(row)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def thumbnails_loaded(self) -> int:
        return sum(1 for r in self.records if r.path in self._icons)


class SourceFilter(QSortFilterProxyModel):
    """Keeps the rows whose text holds every free word and whose id is among ``ids``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.words: list[str] = []
        self.ids: Optional[set[int]] = None  # None: no condition

    def set_filter(self, words: list[str], ids: Optional[set[int]]) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt 6.9+; invalidateFilter is deprecated
            self.beginFilterChange()
            self.words, self.ids = list(words), ids
            self.endFilterChange()
        else:
            self.words, self.ids = list(words), ids
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802 (Qt API)
        index = self.sourceModel().index(row, 0, parent)
        if self.ids is not None and index.data(SourceRole).id not in self.ids:
            return False
        text = index.data(Qt.ItemDataRole.UserRole)
        return all(word in text for word in self.words)


class LibraryPanel(QWidget):
    """Signals ``sourceActivated(SourceRecord)`` on double-click / Enter, and
    ``removeRequested`` / ``relabelRequested`` (a list of SourceRecords) from the right-click
    menu or the Delete key."""

    sourceActivated = Signal(object)
    removeRequested = Signal(list)
    relabelRequested = Signal(list)
    annotationsRequested = Signal(list)   # slides to relabel from QuPath annotations

    def __init__(self, parent: Optional[QWidget] = None,
                 loader: Optional[ThumbnailLoader] = None):
        super().__init__(parent)
        self.loader = loader or ThumbnailLoader(self)
        self.library_path: Optional[str] = None
        self.stats: dict = {}
        self.header = QLabel("No library open")
        self.header.setWordWrap(True)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter: words or key=value (stain=HE site=colon)")
        self.filter.setToolTip("Free words match names, labels, patient ids and case data; "
                               "key=value keeps sources with that value (label, patient or a "
                               "column of the imported case data); quote values with spaces")
        self.filter.setClearButtonEnabled(True)
        self.filter_note = problem_note()
        self._conditions: Optional[list] = None  # the conditions the ids below were found for
        self._condition_ids: Optional[set[int]] = None
        self.model = SourceListModel(self.loader, self)
        self.proxy = SourceFilter(self)
        self.proxy.setSourceModel(self.model)
        # key=value conditions read the library file: looked up after a pause in typing, not
        # on every keystroke; free words filter at once
        self._condition_timer = QTimer(self)
        self._condition_timer.setSingleShot(True)
        self._condition_timer.setInterval(CONDITION_DELAY_MS)
        self._condition_timer.timeout.connect(lambda: self._apply_filter(self.filter.text()))
        self.filter.textChanged.connect(self._on_filter_edited)
        self.view = QListView()
        self.view.setModel(self.proxy)
        self.view.setIconSize(QSize(ICON, ICON))
        self.view.setUniformItemSizes(True)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.setSpacing(1)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.activated.connect(self._on_activated)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.remove_action = QAction("Remove from library…", self.view)
        self.remove_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.remove_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.remove_action.triggered.connect(lambda *_: self._request(self.removeRequested))
        self.view.addAction(self.remove_action)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.header)
        layout.addWidget(self.filter)
        layout.addWidget(self.filter_note)
        layout.addWidget(self.view, 1)

    def set_library(self, path: Optional[str | Path]) -> None:
        """Show the sources of ``path`` (raises LibraryError when it cannot be read)."""
        from hashview.library import Library

        if path is None:
            self.library_path, self.stats = None, {}
            self._conditions, self._condition_ids = None, None
            self.model.set_records([])
            self.header.setText("No library open")
            return
        with Library.open(path, mode="r") as library:
            records = library.sources()
            self.stats = library.stats()
            table = library.metadata_table()
        self.library_path = str(path)
        self.model.set_records(records, {i: table.of(i) for i in range(len(table.rows))})
        self._conditions = None  # ids may have moved (a removal): find them again
        self._apply_filter(self.filter.text())
        self.header.setToolTip(str(path))

    def _show_header(self) -> None:
        """Name and size of the library; with a filter, how many of its sources it shows; its
        kept check on its labels."""
        if not self.library_path:
            return
        labels = len(self.stats.get("labels", {}))
        shown = self.proxy.rowCount()
        filtered = (f" · <b>{shown} of {self.stats['n_sources']} shown</b>"
                    if self.filter.text().strip() else "")
        self.header.setText(f"<b>{Path(self.library_path).name}</b><br>"
                            f"{self.stats['n_sources']} sources, {self.stats['n_tiles']} tiles, "
                            f"{labels} labels{filtered}{self._check_line()}")

    def _check_line(self) -> str:
        """The library's kept check on its labels (hashview check), red when it found the
        votes weak, near chance or collapsed; empty when none holds for the library now."""
        from hashview.search.check_record import CAUTION_STATUSES, headline, of_library

        record = of_library(self.library_path, self.stats)
        text = headline(record)
        if text is None:
            return ""
        colour = "#b00020" if record["status"] in CAUTION_STATUSES else "#505050"
        return f'<br><span style="color: {colour};">check: {html.escape(text)}</span>'


    def refresh(self) -> None:
        if self.library_path:
            self.set_library(self.library_path)

    def update_header(self) -> None:
        """Show the header again (a check of the library has been kept since)."""
        self._show_header()

    def records(self) -> list:
        return list(self.model.records)

    def visible_count(self) -> int:
        return self.proxy.rowCount()

    def selected_records(self) -> list:
        rows = sorted(self.view.selectionModel().selectedIndexes(), key=lambda i: i.row())
        return [index.data(SourceRole) for index in rows]

    def _on_filter_edited(self, text: str) -> None:
        try:
            conditions, _ = split_filter(text)
        except ValueError:  # maybe half typed: said after the pause
            self._condition_timer.start()
            return
        if conditions and conditions != self._conditions and self.library_path:
            self._condition_timer.start()
            return
        self._condition_timer.stop()
        self._apply_filter(text)

    def _apply_filter(self, text: str) -> None:
        """Free words and ``key=value`` conditions; a bad condition is one line under the box
        and shows no source."""
        problem = None
        try:
            conditions, words = split_filter(text)
            if conditions != self._conditions:
                self._conditions, self._condition_ids = conditions, None
                if conditions and self.library_path:
                    self._condition_ids = sources_matching(self.library_path, conditions)
        except (ValueError, HashViewError) as exc:
            problem = getattr(exc, "reason", None) or str(exc)
            words, self._conditions, self._condition_ids = [], None, set()
        self.filter_note.setText(problem or "")
        self.filter_note.setVisible(bool(problem))
        self.proxy.set_filter(words, self._condition_ids)
        self._show_header()

    def _request(self, signal) -> None:
        records = self.selected_records()
        if records:
            signal.emit(records)

    def _context_menu(self, pos) -> None:
        menu = self.context_menu_at(pos)
        if menu is not None:
            menu.exec(self.view.viewport().mapToGlobal(pos))
            menu.deleteLater()

    def context_menu_at(self, pos) -> Optional[QMenu]:
        """The right-click menu for the row at ``pos`` (and the other selected rows)."""
        index = self.view.indexAt(pos)
        if not index.isValid():
            return None
        if not self.view.selectionModel().isSelected(index):
            self.view.setCurrentIndex(index)
        records = self.selected_records()
        menu = QMenu(self.view)
        if len(records) == 1:
            menu.addAction("Open").triggered.connect(
                lambda *_: self.sourceActivated.emit(records[0]))
        menu.addAction("Relabel…").triggered.connect(
            lambda *_: self.relabelRequested.emit(records))
        if all(r.kind == "slide" for r in records):
            menu.addAction("Labels from QuPath annotations…").triggered.connect(
                lambda *_: self.annotationsRequested.emit(records))
        menu.addSeparator()
        menu.addAction(self.remove_action)
        return menu

    def _on_activated(self, index: QModelIndex) -> None:
        record = index.data(SourceRole)
        if record is not None:
            self.sourceActivated.emit(record)
