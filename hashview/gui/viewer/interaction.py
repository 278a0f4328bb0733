"""Mouse, wheel, keyboard and context menu of the slide viewer (a mixin of :class:`SlideViewer`).

Left drag pans (middle drag too), and a left click with the similarity map shown searches from
there (once the double-click time has passed: a double-click only zooms); Shift+drag, or any
left drag in region mode (R), draws the rubber-band selection; a left drag in ruler mode (M)
measures; wheel zooms about the cursor; double-click zooms in. The keys are the table
``VIEWER_KEYS``, which also feeds the app's keyboard shortcut sheet, so the sheet cannot drift
from what the keys do.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QApplication, QMenu

from .ruler import line_length
from .zoom import MAGNIFICATION_PRESETS

WHEEL_STEP = 2 ** (1 / 3)      # zoom factor per wheel notch
CLICK_SLOP = 4                 # screen px a press may move and still be a click
K = Qt.Key


class ViewerKey(NamedTuple):
    keys: tuple[Qt.Key, ...]
    label: str                 # the key as the shortcut sheet names it
    description: str
    run: Callable              # run(viewer) -> False when the key does nothing now


def _pan(dx: int, dy: int) -> Callable:
    def run(viewer) -> None:
        step = 0.2 * viewer._ds  # a fifth of the view
        viewer._set_view(viewer._cx + dx * step * viewer.width(),
                         viewer._cy + dy * step * viewer.height(), viewer._ds)
    return run


def _escape(viewer) -> bool:
    """Esc undoes the latest thing: a ruler line, a selection, then the mode."""
    if viewer._ruler is not None or viewer._measuring:
        viewer._measuring = False
        viewer.set_ruler(None)
    elif viewer._selection is not None or viewer._band is not None:
        viewer._band = None
        viewer.set_selection(None)
    elif viewer._region_mode:
        viewer.set_region_mode(False)
    elif viewer._ruler_mode:
        viewer.set_ruler_mode(False)
    else:
        return False
    return True


def _search_selection(viewer) -> bool:
    return viewer.find_similar_selection() is not None


VIEWER_KEYS: tuple[ViewerKey, ...] = (
    ViewerKey((K.Key_Plus, K.Key_Equal), "+", "Zoom in", lambda v: v.zoom_in()),
    ViewerKey((K.Key_Minus, K.Key_Underscore), "-", "Zoom out", lambda v: v.zoom_out()),
    ViewerKey((K.Key_0,), "0", "Zoom to fit", lambda v: v.fit()),
    *(ViewerKey((getattr(K, f"Key_{number}"),), str(number), f"Magnification {mag}x",
                lambda v, m=mag: v.go_to_magnification(m))
      for number, mag in enumerate(MAGNIFICATION_PRESETS, start=1)),
    ViewerKey((K.Key_Left, K.Key_Right, K.Key_Up, K.Key_Down), "Arrow keys",
              "Pan by a fifth of the view", None),
    ViewerKey((K.Key_R,), "R", "Region selection mode (drag a rectangle)",
              lambda v: v.set_region_mode(not v.region_mode())),
    ViewerKey((K.Key_M,), "M", "Ruler: drag to measure in µm",
              lambda v: v.set_ruler_mode(not v.ruler_mode())),
    ViewerKey((K.Key_Return, K.Key_Enter), "Enter", "Find similar to the selected region",
              _search_selection),
    ViewerKey((K.Key_Escape,), "Esc", "Clear the ruler line or selection, then leave the mode",
              _escape),
)
ARROWS = {K.Key_Left: _pan(-1, 0), K.Key_Right: _pan(1, 0), K.Key_Up: _pan(0, -1),
          K.Key_Down: _pan(0, 1)}
_RUN_BY_KEY = {key: (ARROWS[key] if entry.run is None else entry.run)
               for entry in VIEWER_KEYS for key in entry.keys}

MOUSE_GESTURES = (
    ("Drag", "Pan (middle drag pans in every mode)"),
    ("Wheel", "Zoom about the cursor"),
    ("Double-click", "Zoom in"),
    ("Click (similarity map on, H)", "Search from there; the map follows"),
    ("Shift+drag", "Select a region"),
    ("Right-click", "Find similar region, copy coordinates, modes"),
    ("Overview click", "Jump there"),
)


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
        ruler = menu.addAction("Ruler (measure)\tM")
        ruler.setCheckable(True)
        ruler.setChecked(self._ruler_mode)
        ruler.toggled.connect(self.set_ruler_mode)
        if self._ruler is not None:
            menu.addAction("Clear ruler\tEsc").triggered.connect(lambda *_: self.set_ruler(None))
        menu.addAction("Zoom to fit\t0").triggered.connect(lambda *_: self.fit())
        return menu

    def _update_cursor(self) -> None:
        if self._source is None:
            self.unsetCursor()
        elif self._region_mode or self._ruler_mode:
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
        elif button == Qt.MouseButton.LeftButton and self._ruler_mode:
            self._measuring = True
            self.set_ruler(self.map_to_level0(pos) * 2)
        elif button in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag_last = pos
            self._press_pos = pos if button == Qt.MouseButton.LeftButton else None
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        if self._band is not None:
            self._band = (self._band[0], pos)
            self.update()
        elif self._measuring and self._ruler is not None:
            self.set_ruler(self._ruler[:2] + self.map_to_level0(pos))
        elif self._drag_last is not None:
            delta = pos - self._drag_last
            self._drag_last = pos
            self._set_view(self._cx - delta.x() * self._ds, self._cy - delta.y() * self._ds,
                           self._ds)
        elif self.similarity.shown():  # hovering: the distance of the tile under the cursor
            distance = self.similarity.distance_at(*self.map_to_level0(pos))
            self.setToolTip("" if distance is None else f"{distance} bits from the query")

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._band is not None:
            start, end = self._band[0], event.position()
            self._band = None
            self._finish_band(start, end)
        elif self._measuring:
            self._measuring = False
            if self._ruler is not None and line_length(self._ruler) / self._ds < 3:
                self.set_ruler(None)  # a click, not a measurement
        elif self._drag_last is not None:
            self._drag_last = None
            self._update_cursor()
            start, self._press_pos = self._press_pos, None
            moved = start is None or (event.position() - start).manhattanLength() > CLICK_SLOP
            if not moved and self.similarity.visible:
                self._click_at = event.position()  # searched from when no double-click follows
                self._click_timer.start(QApplication.doubleClickInterval())

    def _finish_band(self, start: QPointF, end: QPointF) -> None:
        width, height = self._source.dimensions
        (ax, ay), (bx, by) = self.map_to_level0(start), self.map_to_level0(end)
        x0, x1 = sorted((min(max(ax, 0), width), min(max(bx, 0), width)))
        y0, y1 = sorted((min(max(ay, 0), height), min(max(by, 0), height)))
        too_small = (x1 - x0) / self._ds < 4 or (y1 - y0) / self._ds < 4
        self._selection = None if too_small else (
            int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))
        self.update()

    def _on_single_click(self) -> None:
        if self._click_at is not None and self.similarity.visible:
            self.find_similar_at(self._click_at)  # the map follows the new search
        self._click_at = None

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        self._click_timer.stop()
        self._click_at = None
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
        run = _RUN_BY_KEY.get(event.key())
        modifiers = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        plain = modifiers in (Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.ShiftModifier)
        if self._source is None or run is None or not plain or run(self) is False:
            super().keyPressEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        if self._source is None:
            event.ignore()
            return
        menu = self.context_menu(event.pos())
        menu.exec(event.globalPos())
        menu.deleteLater()
