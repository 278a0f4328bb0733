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
