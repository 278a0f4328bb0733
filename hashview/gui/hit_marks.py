"""Good and bad marks on the hits of the results grid: what "Search again" refines with.

G marks the selected hits good, B bad, U (or the same key again) clears the mark; the grid's
right-click menu does the same, and offers "Relabel tile…" (``relabelRequested``, carried out by
:mod:`hashview.gui.library_edits`). A mark belongs to a library tile (its id), so it stays on that
tile when it shows up again after a refined search, until the marks are cleared or a new query
starts.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QMenu

GOOD, BAD = "good", "bad"
MARK_TEXT = {GOOD: "✓", BAD: "✗"}  # with the background colour; short: the rank stays
MARK_COLOUR = {GOOD: QColor(200, 235, 200), BAD: QColor(245, 205, 205)}
KEYS = {Qt.Key.Key_G: GOOD, Qt.Key.Key_B: BAD, Qt.Key.Key_U: None}


class HitMarks(QObject):
    """Marks of the hits shown in ``grid``; items carry their ``Hit`` as UserRole data and
    their unmarked caption as ``CAPTION_ROLE``."""

    changed = Signal()
    relabelRequested = Signal(list)  # the selected hits: give their library tiles a new label
    CAPTION_ROLE = Qt.ItemDataRole.UserRole + 1

    def __init__(self, grid: QListWidget):
        super().__init__(grid)
        self.grid = grid
        self.marks: dict[int, str] = {}  # library tile id -> GOOD / BAD
        self.enabled = True               # off for whole-slide results (their hits are slides)
        grid.installEventFilter(self)
        grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        grid.customContextMenuRequested.connect(self._context_menu)
        grid.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)

    def good(self) -> list[int]:
        return [tile for tile, mark in self.marks.items() if mark == GOOD]

    def bad(self) -> list[int]:
        return [tile for tile, mark in self.marks.items() if mark == BAD]

    def clear(self) -> None:
        if self.marks:
            self.marks.clear()
            self._restyle_all()
            self.changed.emit()

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def mark(self, items: list[QListWidgetItem], kind: str | None) -> int:
        """Mark the hits of ``items`` (query tiles are skipped); ``kind`` None unmarks. Marking a
        hit with the mark it has already clears it. Returns how many changed."""
        if not self.enabled:
            return 0
        hits = [item.data(Qt.ItemDataRole.UserRole) for item in items]
        tiles = [hit.tile_index for hit in hits if hit is not None]
        if kind is not None and tiles and all(self.marks.get(t) == kind for t in tiles):
            kind = None  # the same key again: a toggle
        for tile in tiles:
            if kind is None:
                self.marks.pop(tile, None)
            else:
                self.marks[tile] = kind
        self._restyle_all()
        if tiles:
            self.changed.emit()
        return len(tiles)

    def style(self, item: QListWidgetItem) -> None:
        """The item's caption and background as its mark says (called for new items too)."""
        hit = item.data(Qt.ItemDataRole.UserRole)
        caption = item.data(self.CAPTION_ROLE)
        if hit is None or caption is None:
            return
        mark = self.marks.get(hit.tile_index)
        item.setText(caption if mark is None else f"{MARK_TEXT[mark]}  {caption}")
        item.setBackground(QBrush(MARK_COLOUR[mark]) if mark else QBrush())

    def _restyle_all(self) -> None:
        for i in range(self.grid.count()):
            self.style(self.grid.item(i))

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt API)
        plain = not event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier \
            if event.type() == QEvent.Type.KeyPress else False
        if watched is self.grid and plain and event.key() in KEYS:
            if self.mark(self.grid.selectedItems(), KEYS[event.key()]):
                return True
        return super().eventFilter(watched, event)

    def _context_menu(self, pos) -> None:
        menu = self.context_menu_at(pos)
        if menu is not None:
            menu.exec(self.grid.viewport().mapToGlobal(pos))
            menu.deleteLater()

    def context_menu_at(self, pos) -> QMenu | None:
        """The right-click menu for the hit at ``pos`` (and the other selected hits)."""
        item = self.grid.itemAt(pos)
        if item is None or item.data(Qt.ItemDataRole.UserRole) is None or not self.enabled:
            return None
        if not item.isSelected():
            self.grid.setCurrentItem(item)
        items = self.grid.selectedItems()
        menu = QMenu(self.grid)
        menu.addAction("Mark good\tG").triggered.connect(lambda *_: self.mark(items, GOOD))
        menu.addAction("Mark bad\tB").triggered.connect(lambda *_: self.mark(items, BAD))
        menu.addAction("Clear mark\tU").triggered.connect(lambda *_: self.mark(items, None))
        menu.addSeparator()
        hits = [i.data(Qt.ItemDataRole.UserRole) for i in items
                if i.data(Qt.ItemDataRole.UserRole) is not None]
        menu.addAction("Relabel tile…" if len(hits) == 1 else f"Relabel {len(hits)} tiles…"
                       ).triggered.connect(lambda *_: self.relabelRequested.emit(hits))
        return menu
