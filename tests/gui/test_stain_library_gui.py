"""File ▸ New library with a stain reference: stored in the library; a bad one is one line."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from conftest import SLIDE  # noqa: E402
from hashview.library import Library  # noqa: E402
from hashview.library.stain_attribute import parse_reference  # noqa: E402


def _choose(monkeypatch, path, stain):
    from hashview.gui import dialogs

    def choose(dialog):
        dialog.path.setText(str(path))
        dialog.stain.setText(str(stain))
        return True
    monkeypatch.setattr(dialogs.NewLibraryDialog, "exec", choose)


def test_new_library_stain_normalised_to_the_chosen_reference(window, tmp_path, monkeypatch):
    _choose(monkeypatch, tmp_path / "normalised.h5", SLIDE)
    assert window.ask_new_library() == str(tmp_path / "normalised.h5")
    with Library.open(tmp_path / "normalised.h5") as library:
        reference = parse_reference(library.model.stain_reference)
    assert reference["method"] == "macenko" and reference["name"] == str(SLIDE)


def test_an_unreadable_stain_reference_is_one_line_and_makes_no_library(window, tmp_path,
                                                                        monkeypatch,
                                                                        message_boxes):
    _choose(monkeypatch, tmp_path / "never.h5", tmp_path / "missing.png")
    assert window.ask_new_library() is None
    text = message_boxes.of("warning")[-1][2]
    assert "missing.png" in text and "\n" not in text.strip()
    assert not (tmp_path / "never.h5").exists()


def test_fitting_the_reference_shows_a_busy_cursor_and_restores_it(window, tmp_path,
                                                                   monkeypatch):
    import hashview.stain_reference as stain_reference
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication

    from hashview.errors import HashViewError

    seen = {}

    def fit(reference):
        cursor = QGuiApplication.overrideCursor()
        seen["cursor"] = cursor.shape() if cursor is not None else None
        seen["status"] = window.statusBar().currentMessage()
        raise HashViewError(reference, "no tissue to fit a stain on")

    monkeypatch.setattr(stain_reference, "fit_reference_text", fit)
    warnings = []
    monkeypatch.setattr(window, "warn", lambda message, title="": warnings.append(message))
    assert not window.create_library(tmp_path / "new.h5", stain_reference="ref.png")
    assert seen == {"cursor": Qt.CursorShape.WaitCursor,
                    "status": "Fitting the stain of ref.png…"}
    assert QGuiApplication.overrideCursor() is None and warnings
    assert not (tmp_path / "new.h5").exists()
