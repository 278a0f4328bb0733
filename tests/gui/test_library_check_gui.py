"""Search ▸ Check library on its labels: a background check job, its verdict in a box (a
warning when the model serves the library's tissue badly)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
from hashview.jobs import JobSpec  # noqa: E402


def test_the_action_submits_a_check_job_of_the_open_library(qtbot, window, library_path,
                                                            monkeypatch, message_boxes):
    submitted = []
    monkeypatch.setattr(window, "submit_job", submitted.append)
    action = window.actions_.check_library
    assert action in window.menuBar().actions()[2].menu().actions()  # the Search menu
    action.trigger()
    assert [(s.kind, s.args) for s in submitted] == [
        ("check", {"library_path": str(library_path)})]
    window.actions_.compare_models.trigger()
    assert submitted[-1].args == {"library_path": str(library_path), "models": "all"}
    assert submitted[-1].title == f"Compare models on {library_path.name}'s labels"
    window.library_path = None
    assert window.check_library_labels() is None and len(submitted) == 2
    assert message_boxes.of("warning")[-1][2] == "Open a library first (File ▸ Open library…)"


@pytest.mark.parametrize("fine, kind", [(True, "information"), (False, "warning")])
def test_the_verdict_shows_when_the_job_ends(qtbot, window, message_boxes, fine, kind):
    spec = JobSpec("check", {"library_path": "lib.h5"})
    lines = ["NEAR CHANCE: balanced vote@10 0.50 against chance 0.50", "codes: 3 distinct",
             "  a: 5 tiles"]
    window._on_job_finished(spec, {"lines": lines, "fine": fine}, "done")
    assert message_boxes.calls == [(kind, "Library check", "NEAR CHANCE: balanced vote@10 0.50 "
                                    "against chance 0.50\n\ncodes: 3 distinct\n  a: 5 tiles")]
    assert window.statusBar().currentMessage() == lines[0]
    window._on_job_finished(spec, None, "failed")  # a failed check: the Jobs panel says why
    assert len(message_boxes.calls) == 1


def test_the_jobs_panel_row_ends_with_the_verdict():
    from hashview.gui.jobs_panel import summarize_result

    spec = JobSpec("check", {"library_path": "lib.h5"})
    assert summarize_result(spec, {"verdict": "WEAK: balanced vote@10 0.56"}) == (
        "Done: WEAK: balanced vote@10 0.56")


def test_an_index_job_whose_check_is_bad_ends_in_a_warning(qtbot, window, library_path,
                                                           message_boxes):
    spec = JobSpec("index", {"paths": ["x.svs"], "library_path": str(library_path)})
    bad = {"verdict": "WEAK: balanced vote@10 0.56", "lines": ["WEAK: balanced vote@10 0.56",
                                                              "codes: 9 distinct"],
           "fine": False, "status": "weak"}
    window._on_job_finished(spec, {"added": [], "check": bad}, "done")
    assert message_boxes.calls == [("warning", "Library check",
                                    "WEAK: balanced vote@10 0.56\n\ncodes: 9 distinct")]
    window._on_job_finished(spec, {"added": [], "check": {**bad, "fine": True}}, "done")
    window._on_job_finished(spec, {"added": [], "check": None}, "done")
    # the same bad verdict as the kept check before: the header says it, no second box
    window._on_job_finished(spec, {"added": [], "check": {**bad, "status_before": "weak"}},
                            "done")
    assert len(message_boxes.calls) == 1  # a fine check, none, or an unchanged one: no box
    window._on_job_finished(spec, {"added": [], "check": {**bad, "status_before": "fine"}},
                            "done")
    assert len(message_boxes.calls) == 2


def test_the_library_header_shows_the_kept_check_in_red_when_bad(qtbot, window, library_path,
                                                                 monkeypatch):
    from hashview.search import check_record

    record = {"status": "near chance", "balanced_accuracy": 0.5, "chance": 0.5}
    monkeypatch.setattr(check_record, "of_library", lambda path, stats: record)
    spec = JobSpec("check", {"library_path": str(library_path)})
    window._on_job_finished(spec, {"lines": ["NEAR CHANCE"], "fine": False}, "done")
    header = window.library_panel.header.text()
    assert header.endswith('<br><span style="color: #b00020;">check: NEAR CHANCE, balanced '
                           '0.50, chance 0.50</span>')
    record.update(status="fine", balanced_accuracy=0.9)
    window.library_panel.update_header()
    assert window.library_panel.header.text().endswith(
        '<span style="color: #505050;">check: balanced 0.90, chance 0.50</span>')
    monkeypatch.setattr(check_record, "of_library", lambda path, stats: None)
    window.library_panel.update_header()
    assert "check:" not in window.library_panel.header.text()
