"""The View and Help menus' behaviour (a mixin of :class:`~hashview.gui.main_window.MainWindow`):
magnification presets, the ruler, display adjustments, a slide's scale, tile outlines that say
why they are missing, the shortcut sheet and Getting started.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QDoubleSpinBox, QLabel, QVBoxLayout,
                               QWidget)

from hashview.errors import HashViewError
from hashview.gui.help import HelpWindow, getting_started_html, shortcuts_html
from hashview.gui.viewer.adjust_dialog import DisplayAdjustDialog
from hashview.gui.viewer.overview import format_magnification
from hashview.gui.viewer.zoom import (MAX_ZOOM_OVER_SCAN, max_magnification,
                                      scan_magnification)
from hashview.slides.scale_overrides import MAX_USER_MPP, MIN_USER_MPP, store_mpp


class SlideScaleDialog(QDialog):
    """µm per level-0 pixel for a slide whose file records none; Forget drops a stored one."""

    FORGET = 2  # exec() result

    def __init__(self, name: str, current: float | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Set slide scale")
        self.value = QDoubleSpinBox()
        self.value.setRange(MIN_USER_MPP, MAX_USER_MPP)
        self.value.setDecimals(4)
        self.value.setSingleStep(0.05)
        self.value.setSuffix(" µm/px")
        self.value.setValue(current or 0.5)
        hint = QLabel(f"<b>{name}</b> does not record its scale. Enter the size of one pixel "
                      "at full resolution: 0.25 µm/px is a 40x scan, 0.5 a 20x scan, 1.0 a 10x "
                      "scan. It is kept for this file and used by the viewer and by indexing.")
        hint.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        if current is not None:
            forget = buttons.addButton("Forget", QDialogButtonBox.ButtonRole.DestructiveRole)
            forget.setToolTip("Back to an unknown scale (20x is assumed)")
            forget.clicked.connect(lambda: self.done(self.FORGET))
        layout = QVBoxLayout(self)
        layout.addWidget(hint)
        layout.addWidget(self.value)
        layout.addWidget(buttons)
        self.setMinimumWidth(380)


class ViewMixin:
    """Slots of the View and Help menus; rely on MainWindow's viewers, source and library."""

    def focused_viewer(self):
        """The viewer the keys act on: the comparison one when it has the focus."""
        if self.compare.isVisible() and self.compare_viewer.hasFocus():
            return self.compare_viewer
        return self.viewer

    def go_to_magnification(self, magnification: float) -> None:
        viewer = self.focused_viewer()
        source = viewer.current_source()
        if source is None:
            self.show_message("Open a slide first (File ▸ Open slide)")
            return
        reached = viewer.go_to_magnification(magnification)
        shown = format_magnification(reached)
        if source.mpp is None:
            self.show_message(f"{shown}, assuming a 20x scan: the file records no scale "
                              "(View ▸ Set slide scale…)", 8000)
        elif reached >= magnification * 0.99:
            self.show_message(shown, 2000)
        elif reached >= max_magnification(source.mpp) * 0.99:
            scan = format_magnification(scan_magnification(source.mpp))
            self.show_message(f"{magnification}x is past the sharp limit of this {scan} scan "
                              f"({MAX_ZOOM_OVER_SCAN:g}x its pixels): showing {shown}", 8000)
        else:
            self.show_message(f"{shown}: the whole slide fits in the view", 4000)

    def toggle_ruler(self) -> None:
        viewer = self.focused_viewer()
        if viewer.current_source() is None:
            self.show_message("Open a slide first (File ▸ Open slide)")
            return
        viewer.set_ruler_mode(not viewer.ruler_mode())
        if viewer.ruler_mode():
            unit = "µm" if viewer.current_source().mpp else "pixels (scale unknown)"
            self.show_message(f"Ruler: drag on the slide to measure in {unit}; Esc clears, "
                              "M goes back to panning", 8000)
        else:
            self.show_message("Ruler off", 2000)

    # ---------------------------------------------------------------- display adjustments
    def ask_display_adjustment(self) -> None:
        dialog = getattr(self, "_display_dialog", None)
        if dialog is None:
            dialog = self._display_dialog = DisplayAdjustDialog(self)
            dialog.adjustmentChanged.connect(self.set_display_adjustment)
        dialog.set_adjustment(self.viewer.display_adjustment())
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()

    def set_display_adjustment(self, adjustment) -> None:
        """Both viewers, so that a query and its hit are compared under the same display."""
        for viewer in (self.viewer, self.compare_viewer):
            viewer.set_display_adjustment(adjustment)

    # ---------------------------------------------------------------- slide scale
    def ask_slide_scale(self) -> None:
        source = self.source
        if source is None:
            self.show_message("Open a slide first (File ▸ Open slide)")
            return
        name = Path(self.source_path).name
        if source.mpp is not None and not source.mpp_from_user:
            self.show_message(f"{name} records its own scale, {source.mpp:.4g} µm/px "
                              f"({format_magnification(scan_magnification(source.mpp))})", 8000)
            return
        dialog = SlideScaleDialog(name, source.mpp, self)
        result = dialog.exec()
        if result == QDialog.DialogCode.Rejected:
            return
        self.set_slide_scale(None if result == SlideScaleDialog.FORGET else dialog.value.value())

    def set_slide_scale(self, mpp: float | None) -> bool:
        """Keep ``mpp`` (``None``: forget it) for the open slide and show it with that scale."""
        try:
            store_mpp(self.source_path, mpp)
        except (HashViewError, ValueError, OSError) as exc:
            self.warn(f"Cannot keep the scale: {getattr(exc, 'message', exc)}", "Slide scale")
            return False
        self.source.set_user_mpp(mpp)
        self._apply_library_to_viewer()  # the "Find similar" square is sized in µm
        self.viewer.update()
        name = Path(self.source_path).name
        if mpp is None:
            self.show_message(f"{name}: scale forgotten (20x assumed)")
        else:
            self.show_message(f"{name}: {mpp:g} µm/px "
                              f"({format_magnification(scan_magnification(mpp))} scan), "
                              "kept for this file and used when it is indexed", 8000)
        return True

    # ---------------------------------------------------------------- tile outlines
    def show_tile_outlines(self, visible: bool) -> None:
        self.set_outlines_visible(visible)
        reason = self.why_no_tile_outlines() if visible else None
        if reason:
            self.show_message(reason, 10000)

    def why_no_tile_outlines(self) -> str | None:
        """Why the open slide shows no tile outlines, or ``None`` when it shows some."""
        if self.source is None or self.viewer.tile_outline_count():
            return None
        from hashview.library import Library, fingerprint_file

        name = Path(self.source_path).name
        if not self.library_path:
            return "No tile outlines: no library is open (File ▸ Open library)"
        library_name = Path(self.library_path).name
        try:
            with Library.open(self.library_path, mode="r") as library:
                record = library.find_source(path=self.source_path)
                if record is None:
                    record = library.find_source(fingerprint=fingerprint_file(self.source_path))
                    if record is not None:
                        return (f"No tile outlines: {name} is in {library_name} under another "
                                f"path, {record.path}")
        except HashViewError as exc:
            return exc.message
        if record is None:
            return (f"No tile outlines: {name} is not in the library {library_name} "
                    "(File ▸ Add current slide to library indexes it)")
        return f"No tile outlines: {name} has no tiles in {library_name} (no tissue found)"

    # ---------------------------------------------------------------- help
    def show_shortcuts(self) -> None:
        self._show_help("Keyboard shortcuts", shortcuts_html(self))

    def show_getting_started(self) -> None:
        self._show_help("Getting started", getting_started_html(self.actions_))

    def _show_help(self, title: str, page_html: str) -> HelpWindow:
        if getattr(self, "_help_windows", None) is None:
            self._help_windows = {}
        windows = self._help_windows
        window = windows.get(title)
        if window is None:
            window = windows[title] = HelpWindow(title, page_html, self)
        else:
            window.set_page(page_html)  # rebuilt: shortcuts may have changed
        window.show()
        window.raise_()
        window.activateWindow()
        return window
