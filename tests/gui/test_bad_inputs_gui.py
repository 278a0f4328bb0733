"""The bad-input corpus, a crashing worker and interrupted jobs in the app (offscreen Qt).

Every bad file is opened, dropped and indexed as a user would: one line in a warning box and the
status bar, or in the job's log; never a traceback in a dialog; the app keeps working. The CLI side
is tests/test_bad_inputs.py; the crash itself is explained in tests/test_worker_crash.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

import hashview.gui.jobs_panel as jobs_panel_module  # noqa: E402
from conftest import DATA, KATHER, SLIDE, TUMOUR_PATCH  # noqa: E402
from hashview.jobs import JobSpec, jobs_dir  # noqa: E402
from hashview.library import Library  # noqa: E402
from test_app import drop_files  # noqa: E402
from test_worker_crash import crashing_worker_command  # noqa: E402

BAD = DATA / "bad"
sys.path.insert(0, str(BAD))
from make_bad_inputs import MANIFEST, PICKLE_MARKER_ENV, make_runtime_inputs  # noqa: E402

JOB_MS = 120_000
SEARCH_MS = 60_000
IMAGES = {name: outcome for name, (_, outcome) in MANIFEST.items()
          if not name.endswith((".h5", ".pt", ".safetensors"))}
REFUSED = {name: outcome.removeprefix("refused: ") for name, outcome in IMAGES.items()
           if outcome.startswith("refused: ")}
ODD_BUT_VALID = sorted(name for name, outcome in IMAGES.items() if outcome == "indexed")


def assert_one_line(text: str, path: Path | str, reason: str = "") -> None:
    assert str(path) in text and reason in text, text
    assert "\n" not in text and "Traceback" not in text, text


def no_traceback_dialogs(message_boxes) -> None:
    assert not message_boxes.of("critical")
    for _, _, text in message_boxes.calls:
        assert "Traceback" not in text and "\n  File " not in text, text


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_names(library: str | Path) -> list[str]:
    with Library.open(library, "r") as lib:
        return sorted(s.name for s in lib.sources())


# ---------------------------------------------------------------------------- open and drop
def test_opening_bad_files_warns_in_one_line_and_the_app_keeps_working(qtbot, window,
                                                                       message_boxes):
    for name, reason in sorted(REFUSED.items()):
        before = len(message_boxes.of("warning"))
        assert not window.open_slide(BAD / name)
        calls = message_boxes.of("warning")[before:]
        assert len(calls) == 1, calls
        assert_one_line(calls[0][2], BAD / name, reason)
        assert calls[0][2] in window.statusBar().currentMessage()
    for name in ODD_BUT_VALID:  # 16-bit, RGBA, greyscale, CMYK, 1x1: shown, not refused
        assert window.open_slide(BAD / name), message_boxes.calls[-1:]
    assert window.open_slide(SLIDE) and window.viewer.current_source().dimensions == (2220, 2967)
    no_traceback_dialogs(message_boxes)


def test_dropping_bad_files_warns_and_searching_still_works(qtbot, window, message_boxes):
    for name, reason in sorted(REFUSED.items()):
        before = len(message_boxes.of("warning"))
        drop_files(window, [BAD / name])  # slides open in the viewer, images are searched
        qtbot.waitUntil(lambda: len(message_boxes.of("warning")) > before, timeout=SEARCH_MS)
        assert_one_line(message_boxes.of("warning")[-1][2], BAD / name)
    no_traceback_dialogs(message_boxes)
    window.handle_dropped_paths([str(TUMOUR_PATCH)])
    qtbot.waitUntil(lambda: window.results.outcome is not None
                    and len(window.results.outcome.result.hits) == 10, timeout=SEARCH_MS)


@pytest.mark.parametrize("name", ["foreign.h5", "future-schema.h5"])
def test_opening_a_bad_library_keeps_the_open_one(qtbot, window, message_boxes, tmp_path, name,
                                                  library_path):
    bad = tmp_path / name
    shutil.copy(BAD / name, bad)
    digest = sha256(bad)
    assert not window.open_library(bad)
    assert_one_line(message_boxes.of("warning")[-1][2], bad)
    assert window.library_path == str(library_path) and sha256(bad) == digest
    no_traceback_dialogs(message_boxes)


# ---------------------------------------------------------------------------- index jobs
@pytest.mark.slow
def test_indexing_a_folder_with_the_corpus_logs_each_bad_file_and_adds_the_rest(
        qtbot, window, message_boxes, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(BAD / name, folder / name)
    shutil.copy(TUMOUR_PATCH, folder / "good.tif")
    make_runtime_inputs(folder / "odd", sorted((KATHER / "02_STROMA").iterdir())[0])
    refused = {folder / name: reason for name, reason in REFUSED.items()}
    refused[folder / "odd" / "latin1-\\xe9chantillon.png"] = "file name is not valid UTF-8"
    indexed = ODD_BUT_VALID + ["good.tif"]
    if os.geteuid() == 0:
        indexed.append("unreadable.png")  # root reads it whatever its mode
    else:
        refused[folder / "odd" / "unreadable.png"] = "ermission denied"
    assert window.create_library(tmp_path / "new.h5")
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        window.add_to_library([str(folder)])
    spec, result, status = finished.args
    log = window.jobs.log_text(spec.id)
    assert status == "done", log
    for path, reason in refused.items():
        lines = [line for line in log.splitlines() if f"{path}:" in line]
        assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], log
    assert "Traceback" not in log
    assert source_names(window.library_path) == sorted(indexed)
    assert window.library_panel.visible_count() == len(indexed)  # refreshed
    assert f"{len(refused)} failed" in window.jobs.row(spec.id).stage.text()
    no_traceback_dialogs(message_boxes)


# ---------------------------------------------------------------------------- model picker
def test_a_pickle_model_in_the_picker_is_refused_and_never_runs(qtbot, window, message_boxes,
                                                                 tmp_path, monkeypatch):
    from hashview.gui.dialogs import SettingsDialog
    from hashview.models import user_models_dir

    marker = tmp_path / "pickle-payload-ran"
    monkeypatch.setenv(PICKLE_MARKER_ENV, str(marker))
    user_models_dir().mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors"):  # a user drops it among their models
        shutil.copy(BAD / f"pickle-payload{suffix}", user_models_dir())
    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    index = dialog.model.findData("pickle-payload")
    assert index >= 0  # listed from its card...
    dialog.model.setCurrentIndex(index)
    dialog.apply()

    assert not window.create_library(tmp_path / "new.h5")  # ...but refused when used
    assert_one_line(message_boxes.of("warning")[-1][2], "pickle-payload.safetensors",
                    "not a valid safetensors file")
    assert not (tmp_path / "new.h5").exists() and not marker.exists()
    no_traceback_dialogs(message_boxes)


def test_a_model_of_other_bits_in_the_picker_does_not_touch_an_open_library(window,
                                                                             library_path):
    window.settings.model = "dch-32"  # Settings ▸ Model applies to new libraries only
    spec = window.add_to_library([str(TUMOUR_PATCH)])
    window.jobs.cancel(spec.id)
    assert spec.args["model"] == window.library_info["model"]["name"] != "dch-32"


# ---------------------------------------------------------------------------- crashes, resuming
@pytest.mark.slow
def test_worker_crash_fails_the_job_with_the_signal_then_resume_adds_the_rest(
        qtbot, window, message_boxes, tmp_path, monkeypatch):
    """Slow by nature (~13 s idle, ~27 s at load 18 on 2 cores): two real worker processes,
    each importing torch and loading the model, one crashing and one resuming."""
    assert window.create_library(tmp_path / "new.h5")
    monkeypatch.setattr(jobs_panel_module, "worker_command",
                        lambda path: crashing_worker_command("SIGSEGV", path))
    folders = [str(KATHER / "01_TUMOR"), str(KATHER / "02_STROMA")]  # 6 patches
    spec = JobSpec("index", {"paths": folders, "library_path": window.library_path,
                             "batch_size": 2})  # three commits: the crash comes at the second
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        window.submit_job(spec)
    assert finished.args[2] == "failed"
    row = window.jobs.row(spec.id)
    assert row.stage.text() == "Failed: worker crashed: signal SIGSEGV (segmentation fault)"
    assert "Fatal Python error: Segmentation fault" in window.jobs.log_text(spec.id)
    assert not row.resume_button.isHidden() and row.discard_button.isHidden()
    no_traceback_dialogs(message_boxes)
    assert list(jobs_dir().iterdir()) == []  # no spec, cancel or temporary file left
    assert not [p for p in (tmp_path).iterdir() if p.name.endswith(".tmp")]
    stored = source_names(window.library_path)
    assert len(stored) == 2  # the first commit survived the crash
    assert window.library_panel.visible_count() == len(stored)  # and is shown

    assert window.open_slide(SLIDE)  # the app works on
    monkeypatch.undo()
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        row.resume_button.click()
    resumed, result, status = finished.args
    assert status == "done" and resumed.args == spec.args and resumed.id != spec.id
    assert (len(result["added"]), len(result["skipped"])) == (4, 2)
    assert window.library_panel.visible_count() == 6
    assert spec.id not in window.jobs.job_ids()


@pytest.mark.slow
def test_an_interrupted_job_is_offered_at_start_and_resumes(qtbot, library_path, tmp_path,
                                                            message_boxes):
    from hashview.gui.main_window import MainWindow

    library = tmp_path / "lib.h5"
    shutil.copy(library_path, library)
    # what a session killed while indexing leaves: the spec, and no worker holding it
    patches = sorted((KATHER / "01_TUMOR").iterdir())
    left = JobSpec("index", {"paths": [str(p) for p in patches], "library_path": str(library)})
    left.save(jobs_dir() / f"{left.id}.json")
    discarded = JobSpec("index", {"paths": [str(SLIDE)], "library_path": str(library)})
    discarded.save(jobs_dir() / f"{discarded.id}.json")

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    assert sorted(window.jobs.job_ids()) == sorted([left.id, discarded.id])
    assert window.docks[2].isVisible()
    assert "did not finish last time" in window.statusBar().currentMessage()
    row = window.jobs.row(left.id)
    assert window.jobs.status(left.id) == "interrupted" and row.stage.text().startswith(
        "Interrupted")
    assert not row.resume_button.isHidden() and not row.discard_button.isHidden()
    window.jobs.clear_finished()  # interrupted jobs wait for a choice
    assert len(window.jobs.job_ids()) == 2

    window.jobs.row(discarded.id).discard_button.click()
    assert discarded.id not in window.jobs.job_ids()
    assert not (jobs_dir() / f"{discarded.id}.json").exists()
    assert window.open_library(library)
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        row.resume_button.click()
    spec, result, status = finished.args
    assert status == "done" and spec.args == left.args
    assert len(result["skipped"]) == len(patches)  # the session library holds them already
    assert list(jobs_dir().iterdir()) == []
    no_traceback_dialogs(message_boxes)
    window.close()
