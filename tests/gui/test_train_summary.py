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
