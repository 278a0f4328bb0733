"""The status-bar line after a training job: held-out vote@10 and mAP beside the start's, and
whether only the hash layer was refitted."""

from __future__ import annotations

from hashview.gui.window_jobs import _held_out_summary

REPORT = {"held_out": {"vote_accuracy@10": 0.8, "map": 0.84, "n_queries": 45},
          "start_model": {"name": "mth-64-general", "vote_accuracy@10": 0.75, "map": 0.65}}


def test_summary_gives_vote_and_map_beside_the_start_and_the_method():
    text = _held_out_summary({**REPORT, "method": "head"})
    assert text.startswith("Held-out vote@10 0.800, mAP 0.840 (mth-64-general as it is: "
                           "0.750, 0.650) over 45 patches.")
    assert text.endswith("Only the hash layer of mth-64-general was refitted.")
    assert "refitted" not in _held_out_summary({**REPORT, "method": "network"})
    assert _held_out_summary({}) == ""


def test_summary_names_the_best_other_bundled_model():
    text = _held_out_summary({**REPORT, "best_bundled": {
        "name": "mth-64-idc", "vote_accuracy@10": 0.956, "map": 0.872, "of": 12}})
    assert text.endswith("Best other bundled model as it is: mth-64-idc (0.956, 0.872).")


def test_model_lists_mark_a_model_a_bundled_one_did_better_than(qtbot, tmp_path, monkeypatch):
    from PySide6.QtCore import QSettings

    import hashview.models as models
    from hashview.gui.dialogs import library_choice_widgets
    from hashview.gui.settings import AppSettings
    from hashview.models.cards import ModelCard

    cards = [ModelCard(name=name, arch="mth", bits=64, input_size=64, trained=True,
                       quality="ok", metrics=metrics)
             for name, metrics in (("plain", {}), ("mine", {"bundled_better": "mth-64-idc"}))]
    monkeypatch.setattr(models, "list_models", lambda: cards)
    settings = AppSettings(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    combo = library_choice_widgets(settings)[0]
    assert "DID BETTER" not in combo.itemText(0)
    assert combo.itemText(1).endswith("mth-64-idc DID BETTER ON ITS HELD-OUT PART)")
