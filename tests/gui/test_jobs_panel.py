"""JobsPanel: real worker processes driven through QProcess, offscreen."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

import hashview.gui.jobs_panel as jobs_panel_module  # noqa: E402
from conftest import KATHER, SLIDE, StallMeter  # noqa: E402
from hashview.gui.jobs_panel import JobsPanel, format_eta  # noqa: E402
from hashview.jobs import JobSpec, jobs_dir  # noqa: E402
from hashview.library import Library  # noqa: E402

JOB_TIMEOUT_MS = 120_000


@pytest.fixture
def panel(qtbot):
    widget = JobsPanel()
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.cancel_all()
    qtbot.waitUntil(lambda: widget.running_count() == 0, timeout=30_000)


def test_index_job_completes_and_ui_stays_responsive(qtbot, panel, tmp_path):
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "batch_size": 4})
    events = []
    panel.jobEvent.connect(lambda job_id, event: events.append(event))
    meter = StallMeter()
    ticks_at_finish = []
    panel.jobFinished.connect(lambda *_: ticks_at_finish.append(meter.ticks))
    with qtbot.waitSignal(panel.jobFinished, timeout=JOB_TIMEOUT_MS) as finished:
        panel.submit(spec)
        assert panel.running_count() == 1
        assert (jobs_dir() / f"{spec.id}.json").is_file()
        ticks_at_submit = meter.ticks  # counted while the worker runs (its start-up included)
    meter.stop()

    done_spec, result, status = finished.args
    assert status == "done" and done_spec is spec
    assert len(result["added"]) == 12 and not result["failed"]
    bar = panel.row(spec.id).progress
    assert bar.maximum() > 0 and bar.value() == bar.maximum()  # 100%
    assert any(e["event"] == "progress" and e["done"] == e["total"] == 12 for e in events)
    assert panel.running_count() == 0 and panel.status(spec.id) == "done"
    assert not (jobs_dir() / f"{spec.id}.json").exists()  # spec removed when the job ends
    assert "patches" in panel.log_text(spec.id) and "12 added" in panel.log_text(spec.id)
    assert "12 added" in panel.log_view.toPlainText()  # the selected job's log is shown
    print(f"max UI stall while the worker ran: {meter.max_gap * 1000:.0f} ms (not asserted)")
    assert ticks_at_finish[0] - ticks_at_submit >= 3  # the event loop turned while it worked


@pytest.mark.slow
def test_cancel_button_cancels_a_running_job(qtbot, panel, tmp_path):
    library_path = tmp_path / "lib.h5"
    spec = JobSpec("index", {"paths": [SLIDE], "library_path": library_path, "batch_size": 1})
    with qtbot.waitSignal(panel.jobEvent, timeout=JOB_TIMEOUT_MS,
                          check_params_cb=lambda _id, e: e.get("stage") == "encoding"):
        panel.submit(spec)
    with qtbot.waitSignal(panel.jobFinished, timeout=JOB_TIMEOUT_MS) as finished:
        qtbot.mouseClick(panel.row(spec.id).cancel_button, Qt.LeftButton)
    assert finished.args[1:] == [None, "cancelled"]
    assert panel.status(spec.id) == "cancelled" and panel.running_count() == 0
    assert "cancel requested" in panel.log_text(spec.id)
    assert not panel.row(spec.id).cancel_button.isVisible()
    with Library.open(library_path) as library:
        assert library.n_sources == 0  # the slide being encoded was not half-written


def test_worker_dying_without_an_event_is_a_failure(qtbot, panel, monkeypatch, tmp_path):
    monkeypatch.setattr(jobs_panel_module, "worker_command",
                        lambda path: [sys.executable, "-c", "import sys; sys.exit(3)"])
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5"})
    with qtbot.waitSignal(panel.jobFinished, timeout=JOB_TIMEOUT_MS) as finished:
        panel.submit(spec)
    assert finished.args[1:] == [None, "failed"]
    assert "worker stopped unexpectedly (exit code 3)" in panel.log_text(spec.id)


def test_worker_ignoring_sigterm_is_killed(qtbot, panel, monkeypatch, tmp_path):
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('{\"event\": \"progress\", \"stage\": \"x\", \"done\": 0, "
                "\"total\": null, \"message\": \"\", \"eta_s\": null}', flush=True); "
                "time.sleep(60)")
    monkeypatch.setattr(jobs_panel_module, "worker_command",
                        lambda path: [sys.executable, "-c", stubborn])
    monkeypatch.setattr(JobsPanel, "KILL_AFTER_MS", 300)
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5"})
    with qtbot.waitSignal(panel.jobEvent, timeout=JOB_TIMEOUT_MS):
        panel.submit(spec)
    assert panel.row(spec.id).progress.maximum() == 0  # unknown total: busy indicator
    with qtbot.waitSignal(panel.jobFinished, timeout=JOB_TIMEOUT_MS) as finished:
        panel.cancel(spec.id)
    assert finished.args[2] == "cancelled"
    assert "killing" in panel.log_text(spec.id)


def test_format_eta():
    assert format_eta(None) == ""
    assert format_eta(4.4) == "ETA 4 s"
    assert format_eta(125) == "ETA 2:05"
    assert format_eta(3 * 3600 + 120) == "ETA 3 h 02 min"
