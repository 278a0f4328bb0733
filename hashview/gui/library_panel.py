"""The library panel: the sources of the open library with thumbnails, labels and tile counts.

Thumbnails are asked for only when a row is first painted (the model's DecorationRole), so a
library of thousands of patches costs nothing until the user scrolls to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import (QAbstractListModel, QModelIndex, QSize, QSortFilterProxyModel, Qt,
                            Signal)
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (QLabel, QLineEdit, QListView, QVBoxLayout, QWidget)

from hashview.gui.thumbnails import ThumbnailLoader

ICON = 48
NAME_CHARS = 30  # long file names (Kather tiles) are shortened in the middle; tooltips show all


def elide_middle(text: str, limit: int = NAME_CHARS) -> str:
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]
SourceRole = Qt.ItemDataRole.UserRole + 1


class SourceListModel(QAbstractListModel):
    """Rows of :class:`hashview.library.SourceRecord`; thumbnails loaded on first display."""

    def __init__(self, loader: ThumbnailLoader, parent=None):
        super().__init__(parent)
        self.loader = loader
        self.records: list = []
        self._icons: dict[str, QIcon] = {}
        self._asked: set[str] = set()
        self._row_of: dict[str, int] = {}
        placeholder = QPixmap(ICON, ICON)
        placeholder.fill(QColor(230, 230, 230))
        self._placeholder = QIcon(placeholder)
        loader.loaded.connect(self._on_thumbnail)

    def set_records(self, records: list) -> None:
        self.beginResetModel()
        self.records = list(records)
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
            return f"{elide_middle(rec.name)}\n{rec.label or 'unlabelled'} · {kind}"
        if role == Qt.ItemDataRole.DecorationRole:
            icon = self._icons.get(rec.path)
            if icon is None and rec.path not in self._asked:
                self._asked.add(rec.path)
                self.loader.request(f"lib:{rec.path}", rec.path, None, ICON * 2)
            return icon or self._placeholder
        if role == Qt.ItemDataRole.ToolTipRole:
            mpp = f"{rec.mpp:.3f} µm/px" if rec.mpp else "µm/px unknown"
            return (f"{rec.path}\n{rec.kind}, {rec.width}x{rec.height} px, {mpp}\n"
                    f"label: {rec.label or '—'}, {rec.tile_count} tile(s)\n"
                    "Double-click to open")
        if role == SourceRole:
            return rec
        if role == Qt.ItemDataRole.UserRole:  # what the filter box matches
            return f"{rec.name} {rec.label or ''} {rec.kind}".lower()
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


class LibraryPanel(QWidget):
    """Signals ``sourceActivated(SourceRecord)`` on double-click / Enter."""

    sourceActivated = Signal(object)

    def __init__(self, parent: Optional[QWidget] = None,
                 loader: Optional[ThumbnailLoader] = None):
        super().__init__(parent)
        self.loader = loader or ThumbnailLoader(self)
        self.library_path: Optional[str] = None
        self.stats: dict = {}
        self.header = QLabel("No library open")
        self.header.setWordWrap(True)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name or label")
        self.filter.setClearButtonEnabled(True)
        self.model = SourceListModel(self.loader, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterRole(Qt.ItemDataRole.UserRole)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.view = QListView()
        self.view.setModel(self.proxy)
        self.view.setIconSize(QSize(ICON, ICON))
        self.view.setUniformItemSizes(True)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.setSpacing(1)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.view.activated.connect(self._on_activated)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.header)
        layout.addWidget(self.filter)
        layout.addWidget(self.view, 1)

    def set_library(self, path: Optional[str | Path]) -> None:
        """Show the sources of ``path`` (raises LibraryError when it cannot be read)."""
        from hashview.library import Library

        if path is None:
            self.library_path, self.stats = None, {}
            self.model.set_records([])
            self.header.setText("No library open")
            return
        with Library.open(path, mode="r") as library:
            records = library.sources()
            self.stats = library.stats()
        self.library_path = str(path)
        self.model.set_records(records)
        labels = len(self.stats.get("labels", {}))
        self.header.setText(f"<b>{Path(path).name}</b><br>{self.stats['n_sources']} sources, "
                            f"{self.stats['n_tiles']} tiles, {labels} labels")
        self.header.setToolTip(str(path))

    def refresh(self) -> None:
        if self.library_path:
            self.set_library(self.library_path)

    def records(self) -> list:
        return list(self.model.records)

    def visible_count(self) -> int:
        return self.proxy.rowCount()

    def _on_activated(self, index: QModelIndex) -> None:
        record = index.data(SourceRole)
        if record is not None:
            self.sourceActivated.emit(record)
