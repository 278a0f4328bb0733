"""Mouse, wheel, keyboard and context menu of the slide viewer (a mixin of :class:`SlideViewer`).

Left drag pans (middle drag too); Shift+drag, or any left drag in region mode (R), draws the
rubber-band selection; wheel zooms about the cursor; double-click zooms in; + / - / 0 zoom in,
out and fit; arrow keys pan by a fifth of the view; Enter searches the selection, Esc clears it.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QMenu

WHEEL_STEP = 2 ** (1 / 3)      # zoom factor per wheel notch


class ViewerInteraction:
    """Event handlers; rely on the view state and public API of :class:`SlideViewer`."""

    def context_menu(self, pos) -> QMenu:
        """The right-click menu for widget position ``pos`` (``contextMenuEvent`` shows it)."""
        pos = QPointF(pos)
        menu = QMenu(self)
        menu.addAction("Find similar region").triggered.connect(
            lambda *_: self.find_similar_at(pos))
        if self._selection is not None:
            menu.addAction("Find similar (selected region)\tEnter").triggered.connect(
                lambda *_: self.find_similar_selection())
            menu.addAction("Clear selection\tEsc").triggered.connect(
                lambda *_: self.set_selection(None))
        menu.addSeparator()
        menu.addAction("Copy coordinates").triggered.connect(
            lambda *_: self.copy_coordinates_at(pos))
        mode = menu.addAction("Select region mode\tR")
        mode.setCheckable(True)
        mode.setChecked(self._region_mode)
        mode.toggled.connect(self.set_region_mode)
        menu.addAction("Zoom to fit\t0").triggered.connect(lambda *_: self.fit())
        return menu

    def _update_cursor(self) -> None:
        if self._source is None:
            self.unsetCursor()
        elif self._region_mode:
            self.setCursor(Qt.CursorShape.CrossCursor)
        else:
            self.setCursor(Qt.CursorShape.OpenHandCursor)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        button, pos = event.button(), event.position()
        if self._source is None:
            super().mousePressEvent(event)
        elif button == Qt.MouseButton.LeftButton and (
                self._region_mode or event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self._band = (pos, pos)
            self._selection = None
            self.update()
        elif button in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag_last = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        if self._band is not None:
            self._band = (self._band[0], pos)
            self.update()
        elif self._drag_last is not None:
            delta = pos - self._drag_last
            self._drag_last = pos
            self._set_view(self._cx - delta.x() * self._ds, self._cy - delta.y() * self._ds,
                           self._ds)

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._band is not None:
            start, end = self._band[0], event.position()
            self._band = None
            self._finish_band(start, end)
        elif self._drag_last is not None:
            self._drag_last = None
            self._update_cursor()

    def _finish_band(self, start: QPointF, end: QPointF) -> None:
        width, height = self._source.dimensions
        (ax, ay), (bx, by) = self.map_to_level0(start), self.map_to_level0(end)
        x0, x1 = sorted((min(max(ax, 0), width), min(max(bx, 0), width)))
        y0, y1 = sorted((min(max(ay, 0), height), min(max(by, 0), height)))
        too_small = (x1 - x0) / self._ds < 4 or (y1 - y0) / self._ds < 4
        self._selection = None if too_small else (
            int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))
        self.update()

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        if self._source is not None and event.button() == Qt.MouseButton.LeftButton:
            self.zoom_at(event.position(), 2.0)

    def wheelEvent(self, event) -> None:  # noqa: N802
        delta = event.angleDelta().y()
        if self._source is None or delta == 0:
            event.ignore()
            return
        self.zoom_at(event.position(), WHEEL_STEP ** (delta / 120))
        event.accept()

    def keyPressEvent(self, event) -> None:  # noqa: N802
        key, k = event.key(), Qt.Key
        if self._source is None:
            super().keyPressEvent(event)
            return
        arrows = {k.Key_Left: (-1, 0), k.Key_Right: (1, 0), k.Key_Up: (0, -1), k.Key_Down: (0, 1)}
        if key in (k.Key_Plus, k.Key_Equal):
            self.zoom_in()
        elif key in (k.Key_Minus, k.Key_Underscore):
            self.zoom_out()
        elif key == k.Key_0:
            self.fit()
        elif key in arrows:
            dx, dy = arrows[key]
            step = 0.2 * self._ds
            self._set_view(self._cx + dx * step * self.width(),
                           self._cy + dy * step * self.height(), self._ds)
        elif key == k.Key_R:
            self.set_region_mode(not self._region_mode)
        elif key in (k.Key_Return, k.Key_Enter) and self._selection is not None:
            self.find_similar_selection()
        elif key == k.Key_Escape and (self._selection is not None or self._band is not None):
            self._band = None
            self.set_selection(None)
        elif key == k.Key_Escape and self._region_mode:
            self.set_region_mode(False)
        else:
            super().keyPressEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        if self._source is None:
            event.ignore()
            return
        menu = self.context_menu(event.pos())
        menu.exec(event.globalPos())
        menu.deleteLater()
