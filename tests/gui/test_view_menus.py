"""The main window's View and Help additions: magnification keys, ruler, display adjustments,
a slide's scale, tile outlines that say why they are missing, the shortcut sheet."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QAction, QKeySequence  # noqa: E402
from PySide6.QtWidgets import QDialog  # noqa: E402

from conftest import SLIDE, STRIPED_TIFF  # noqa: E402
from hashview.gui.help import shortcut_sections  # noqa: E402
from hashview.gui.window_view import SlideScaleDialog  # noqa: E402
from hashview.slides import open_source  # noqa: E402


def menu_texts(menu) -> list[str]:
    return [a.text().replace("&", "") for a in menu.actions() if not a.isSeparator()]


def test_magnification_keys_and_menu_entries(qtbot, window):
    assert window.open_slide(SLIDE)
    menu = window.actions_.magnification_menu
    assert menu_texts(menu) == ["1x", "5x", "10x", "20x", "40x"]
    assert [a.shortcut().toString() for a in menu.actions()] == ["1", "2", "3", "4", "5"]
    window.viewer.setFocus()
    qtbot.keyClick(window.viewer, Qt.Key.Key_3)
    assert window.viewer.magnification() == "10x"
    menu.actions()[3].trigger()
    assert window.viewer.magnification() == "20x"
    assert window.statusBar().currentMessage() == "20x"


def test_digits_typed_in_a_text_field_stay_text(qtbot, window):
    assert window.open_slide(SLIDE)
    before = window.viewer.downsample()
    field = window.library_panel.filter
    field.setFocus()
    qtbot.keyClicks(field, "35")
    assert field.text() == "35" and window.viewer.downsample() == before
    field.clear()


def test_a_magnification_past_the_scan_says_so(qtbot, window, tmp_path):
    image = tmp_path / "scan.tif"
    shutil.copy(STRIPED_TIFF, image)
    assert window.open_slide(image)
    assert window.set_slide_scale(1.0)  # a 10x scan: 40x is past twice its pixels
    window.go_to_magnification(40)
    assert window.viewer.magnification() == "20x"
    assert "past the sharp limit" in window.statusBar().currentMessage()


def test_ruler_key_toggles_the_focused_viewer(qtbot, window):
    assert window.open_slide(SLIDE)
    assert window.actions_.ruler.shortcut().toString() == "M"
    window.viewer.setFocus()
    qtbot.keyClick(window.viewer, Qt.Key.Key_M)
    assert window.viewer.ruler_mode()
    assert window.statusBar().currentMessage().startswith("Ruler: drag")
    qtbot.keyClick(window.viewer, Qt.Key.Key_M)
    assert not window.viewer.ruler_mode()


def test_adjust_display_is_non_modal_and_reaches_both_viewers(qtbot, window):
    assert window.open_slide(SLIDE)
    window.actions_.adjust_display.trigger()
    dialog = window._display_dialog
    assert dialog.isVisible() and not dialog.isModal()
    dialog.brightness.setValue(30)
    for viewer in (window.viewer, window.compare_viewer):
        assert viewer.display_adjustment().brightness == 30
    dialog.reset()
    assert window.viewer.display_adjustment().is_identity
    dialog.close()


def test_slide_scale_is_entered_kept_and_forgotten(qtbot, window, tmp_path, monkeypatch):
    image = tmp_path / "uncalibrated.tif"
    shutil.copy(STRIPED_TIFF, image)
    assert window.open_slide(image)
    assert window.viewer.magnification().endswith("(assumed)")
    answers = iter([(QDialog.DialogCode.Accepted, 0.25), (SlideScaleDialog.FORGET, None)])

    def answer(dialog):
        result, value = next(answers)
        if value is not None:
            dialog.value.setValue(value)
        return result

    monkeypatch.setattr(SlideScaleDialog, "exec", answer)
    window.actions_.slide_scale.trigger()
    assert window.source.mpp == 0.25 and window.source.mpp_from_user
    assert not window.viewer.magnification().endswith("(assumed)")
    window.viewer.set_ruler((0, 0, 400, 0))
    assert window.viewer.ruler_text() == "100 µm"
    with open_source(image) as again:  # kept for the file: indexing opens it the same way
        assert again.mpp == 0.25
    window.actions_.slide_scale.trigger()  # Forget
    assert window.source.mpp is None
    with open_source(image) as again:
        assert again.mpp is None


def test_a_file_with_its_own_scale_is_not_asked(qtbot, window, monkeypatch):
    assert window.open_slide(SLIDE)
    monkeypatch.setattr(SlideScaleDialog, "exec", lambda self: pytest.fail("asked"))
    window.actions_.slide_scale.trigger()
    assert "records its own scale" in window.statusBar().currentMessage()


def test_tile_outlines_on_a_slide_outside_the_library_say_so(qtbot, window):
    window.actions_.outlines.setChecked(False)
    assert window.open_slide(STRIPED_TIFF)
    window.viewer.setFocus()
    qtbot.keyClick(window.viewer, Qt.Key.Key_T)
    assert window.actions_.outlines.isChecked()
    message = window.statusBar().currentMessage()
    assert "not in the library" in message and STRIPED_TIFF.name in message
    assert window.open_slide(SLIDE)  # indexed: its tiles show, nothing to explain
    window.statusBar().clearMessage()
    window.actions_.outlines.setChecked(False)
    window.actions_.outlines.setChecked(True)
    assert window.viewer.tile_outline_count() > 0
    assert window.statusBar().currentMessage() == ""


def test_shortcut_sheet_lists_every_shortcut_of_the_app(qtbot, window):
    shortcuts = window.actions_.shortcuts
    assert [s.toString() for s in shortcuts.shortcuts()] == ["F1", "?"]
    window.viewer.setFocus()
    qtbot.keyClick(window.viewer, Qt.Key.Key_F1)
    sheet = window._help_windows["Keyboard shortcuts"]
    assert sheet.isVisible()
    text = sheet.browser.toPlainText()
    sections = shortcut_sections(window)
    listed = {key for _title, rows in sections for keys, _what in rows
              for key in keys.split(" or ")}
    for action in window.findChildren(QAction):
        for sequence in action.shortcuts():
            native = sequence.toString(QKeySequence.SequenceFormat.NativeText)
            assert native in listed, action.text()
    for _title, rows in sections:
        for keys, what in rows:
            assert what in text
    assert ("5", "Magnification ▸ 40x") in dict(sections)["View"]  # submenus by their path
    sheet.close()
    qtbot.keyClick(window.viewer, "?")
    assert sheet.isVisible()
    for viewer_key in ("R", "Esc", "Enter", "Arrow keys", "Shift+drag"):
        assert viewer_key in text
    # keys the menus list are not listed twice under the viewer's own keys
    viewer_rows = dict(shortcut_sections(window))["Slide viewer (click the slide first)"]
    assert "M" not in [keys for keys, _ in viewer_rows]


def test_getting_started_names_the_five_steps(qtbot, window):
    window.actions_.getting_started.trigger()
    text = window._help_windows["Getting started"].browser.toPlainText()
    for step in ("Open a slide", "Find a similar region", "Build a library",
                 "Check the votes on your tissue", "Train a model"):
        assert step in text
    assert "Ctrl+O" in text  # read from the action, not written into the page
