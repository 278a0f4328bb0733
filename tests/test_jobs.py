"""Background jobs: the spec, the event protocol, the worker process and cancellation."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from hashview.errors import HashViewError
from hashview.jobs import (JobSpec, cancel_file_for, jobs_dir, parse_event, run_job,
                           worker_command)
from hashview.jobs.runner import ProgressEmitter
from hashview.library import Library
from hashview.progress import Cancelled, Progress
from hashview.tiling import TilingParams

from _patch_folders import turned_patches
from conftest import KATHER, SLIDE

WORKER_TIMEOUT_S = 300  # generous: the machine is shared with CPU-heavy training


def _events(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    events = [parse_event(line) for line in lines]
    assert all(e is not None for e in events), stdout  # the worker prints nothing but events
    return events


def _assert_library_consistent(path: Path) -> Library:
    library = Library.open(path)
    sources = library.sources()
    assert sum(s.tile_count for s in sources) == library.n_tiles
    assert len({s.fingerprint for s in sources}) == len(sources)  # no duplicates
    assert library.codes().shape[0] == library.n_tiles
    return library


# ------------------------------------------------------------------------------ JobSpec
def test_spec_json_roundtrip_and_file(tmp_path):
    spec = JobSpec("index", {"paths": [SLIDE, KATHER], "library_path": tmp_path / "lib.h5",
                             "params": TilingParams(max_tiles=5), "batch_size": 4})
    assert len(spec.id) == 12 and int(spec.id, 16) >= 0
    datetime.fromisoformat(spec.created)
    assert spec.args["paths"] == [str(SLIDE), str(KATHER)]  # Paths become strings
    assert spec.args["params"]["max_tiles"] == 5  # dataclasses become dicts
    assert spec.title == "Index 2 inputs into lib.h5"
    assert JobSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path / "jobs" / f"{spec.id}.json")
    assert JobSpec.load(path) == spec
    assert cancel_file_for(path) == path.with_suffix(".cancel")
    assert worker_command(path) == [sys.executable, "-m", "hashview.jobs.worker", str(path)]
    assert jobs_dir().is_dir()


@pytest.mark.parametrize("kind, args, expected", [
    ("export", {}, "unknown job kind"),
    ("index", [], "must be a JSON object"),
    ("index", {"paths": []}, "needs argument(s): paths, library_path"),
    ("train", {"data_folder": "x", "arch": "hatdh"}, "needs argument(s): bits, out_dir"),
    ("index", {"paths": ["a"], "library_path": "l.h5", "x": object()}, "cannot be written"),
    ("index", {"paths": [1], "library_path": "l.h5"}, "must be a list of"),
    ("check", {}, "needs argument(s): library_path"),
])
def test_spec_validation_errors_are_one_line(kind, args, expected):
    with pytest.raises(HashViewError) as info:
        JobSpec(kind, args)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_spec_load_errors(tmp_path):
    with pytest.raises(HashViewError, match="no such job spec"):
        JobSpec.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HashViewError, match="not valid JSON"):
        JobSpec.load(bad)
    bad.write_text(json.dumps({"kind": "index", "args": {"paths": ["a"], "library_path": "l"},
                               "id": "../../etc"}))
    with pytest.raises(HashViewError, match="job id"):
        JobSpec.load(bad)


def test_parse_event_ignores_other_lines():
    assert parse_event('{"event": "done", "result": {}}') == {"event": "done", "result": {}}
    assert parse_event(b'{"event": "cancelled"}\n') == {"event": "cancelled"}
    for line in ("", "hello", "{broken", "[1, 2]", '{"no_event": 1}', '{"event": 3}'):
        assert parse_event(line) is None


# ------------------------------------------------------------------------------ progress
def test_progress_emitter_throttles_and_estimates():
    now = [0.0]
    events: list[dict] = []
    emitter = ProgressEmitter(events.append, clock=lambda: now[0], interval=0.2)
    for done in range(0, 101):  # 100 steps, 0.01 s apart: 1 s in all
        emitter(Progress("encoding", done, 100, "a.svs"))
        now[0] += 0.01
    assert events[0]["done"] == 0 and events[-1]["done"] == 100  # first and completion
    assert 5 <= len(events) <= 8  # ~5 a second
    middle = next(e for e in events if e["done"] >= 50)
    assert middle["eta_s"] == pytest.approx((100 - middle["done"]) * 0.01, abs=0.05)
    emitter(Progress("slides", 1, 1))  # a stage change is always sent, ETA unknown then
    assert events[-1]["stage"] == "slides" and events[-1]["eta_s"] is None
    emitter(Progress("writing", 0, None))
    assert events[-1]["total"] is None and events[-1]["eta_s"] is None


def test_a_coarse_step_is_never_held_back_by_the_throttle():
    """Batches of 64 of 264 patches, 0.05 s apart: each one is on the bar at once (it showed
    128 when 192 were stored)."""
    now = [0.0]
    events: list[dict] = []
    emitter = ProgressEmitter(events.append, clock=lambda: now[0], interval=0.2)
    for done in (0, 64, 128, 192, 256, 264):
        emitter(Progress("patches", done, 264))
        now[0] += 0.05
        assert events[-1]["done"] == done

    cancel = [False]
    emitter = ProgressEmitter(events.append, should_cancel=lambda: cancel[0])
    emitter(Progress("encoding", 1, 10))
    cancel[0] = True
    with pytest.raises(Cancelled):
        emitter(Progress("encoding", 2, 10))


# ------------------------------------------------------------------------------ run_job
def test_run_job_indexes_kather_in_process(tmp_path):
    events: list[dict] = []
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "batch_size": 4})
    assert run_job(spec, events.append) == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and {"stage", "done", "total", "message", "eta_s"} <= set(progress[0])
    assert progress[-1]["done"] == progress[-1]["total"] == 12
    assert events[-1]["event"] == "done"
    result = events[-1]["result"]
    assert len(result["added"]) == 12 and result["tiles_added"] == 12 and not result["failed"]
    json.dumps(events)  # the whole stream is JSON


def test_run_job_checks_a_library_on_its_labels(tmp_path):
    events: list[dict] = []
    library = tmp_path / "lib.h5"
    assert run_job(JobSpec("index", {"paths": [KATHER], "library_path": library}),
                   events.append) == "done"
    assert events[-1]["result"]["check"] is None  # 2 tiles a label outside one: not judged
    events.clear()
    turned = JobSpec("index", {"paths": [turned_patches(tmp_path / "turned")],
                               "library_path": tmp_path / "turned.h5"})
    assert run_job(turned, events.append) == "done"
    check = events[-1]["result"]["check"]
    assert check["status_before"] is None  # the first check of this library
    assert "(24 queries from 24 sources, each held out; " in check["verdict"]
    assert check["lines"][0] == check["verdict"] and check["fine"] == (check["status"] == "fine")
    assert {"event": "log", "level": "info" if check["fine"] else "warning",
            "message": f"check on its labels: {check['verdict']}"} in events
    events.clear()
    kept = Path(str(tmp_path / "turned.h5") + ".hvcheck")
    assert kept.is_file()  # the check after indexing is kept for searches
    kept.unlink()
    spec = JobSpec("check", {"library_path": tmp_path / "turned.h5", "k": 3})
    assert spec.title == "Check on turned.h5's labels"
    assert run_job(spec, events.append) == "done", events[-1]
    result = events[-1]["result"]
    logged = [e["message"] for e in events if e["event"] == "log"]
    assert logged == result["lines"] and result["verdict"] == result["lines"][0]
    assert result["check"]["k"] == 3 and result["check"]["queries"] == 24
    assert result["check"]["status"] == "fine" and result["fine"]
    assert kept.is_file()
    events.clear()
    compare = JobSpec("check", {"library_path": tmp_path / "turned.h5", "k": 3,
                                "models": ["dch-16", "mth-64-general"], "max_tiles": 10})
    assert compare.title == "Compare models on turned.h5's labels"
    assert run_job(compare, events.append) == "done", events[-1]
    result = events[-1]["result"]
    assert sorted(result["models"]) == ["dch-16", "mth-64-general"]
    assert result["lines"][0].startswith("10 labelled tiles of turned.h5 read again")
    assert [e["message"] for e in events if e["event"] == "log"] == result["lines"]
    assert result["comparison"]["models"][0]["model"] == result["models"][0]
    assert result["fine"] == (result["comparison"]["models"][0]["check"]["status"] == "fine")
    assert run_job(JobSpec("check", {"library_path": library, "models": " "}),
                   events.append) == "failed"
    assert events[-1]["message"].endswith("check job 'models' names no model")
    events.clear()
    assert run_job(JobSpec("check", {"library_path": library, "bogus": 1}),
                   events.append) == "failed"
    assert events[-1]["message"].endswith("unknown check argument(s): bogus")
    assert run_job(JobSpec("check", {"library_path": tmp_path / "none.h5"}),
                   events.append) == "failed"
    assert events[-1]["message"] == f"{tmp_path / 'none.h5'}: no such file"


def test_run_job_failures_are_one_line_errors(tmp_path):
    events: list[dict] = []
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "bogus": 1})
    assert run_job(spec, events.append) == "failed"
    assert events[-1] == {"event": "error",
                          "message": f"job {spec.id}: unknown index argument(s): bogus"}
    events.clear()
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "model": "no-such-model"})
    assert run_job(spec, events.append) == "failed"
    assert events[-1]["event"] == "error" and "no-such-model" in events[-1]["message"]
    assert "\n" not in events[-1]["message"]


def test_run_job_cancel_during_a_slide_stores_nothing_of_it(tmp_path):
    events: list[dict] = []
    library_path = tmp_path / "lib.h5"
    spec = JobSpec("index", {"paths": [SLIDE], "library_path": library_path, "batch_size": 4})
    encoding_seen = lambda: any(e.get("stage") == "encoding" for e in events)  # noqa: E731
    assert run_job(spec, events.append, should_cancel=encoding_seen) == "cancelled"
    assert events[-1] == {"event": "cancelled"}
    with _assert_library_consistent(library_path) as library:
        assert library.n_sources == 0  # the half-encoded slide was never appended


def test_run_job_trains_a_tiny_model_in_process(tmp_path):
    events: list[dict] = []
    spec = JobSpec("train", {"data_folder": KATHER, "arch": "dch", "bits": 8,
                             "out_dir": tmp_path / "model", "epochs": 1, "batch_size": 8,
                             "input_size": 64, "steps_per_epoch": 1, "device": "cpu",
                             "method": "network"})
    assert spec.title == "Train dch-8 on kather"
    assert run_job(spec, events.append) == "done", events[-1]
    assert any(e["event"] == "progress" and e["stage"] == "training" for e in events)
    result = events[-1]["result"]
    assert Path(result["model_path"]).is_file() and (result["arch"], result["bits"]) == ("dch", 8)
    assert len(result["history"]) == 1 and result["final_loss"] == result["history"][-1]
    json.dumps(result)

    events.clear()
    bad = JobSpec("train", {**spec.args, "no_such_option": 1})
    assert run_job(bad, events.append) == "failed"
    assert "unknown train argument(s): no_such_option" in events[-1]["message"]

    # an architecture's own objective options are accepted, as on the command line
    events.clear()
    mth = JobSpec("train", {**spec.args, "arch": "mth", "out_dir": tmp_path / "mth",
                            "eta": 0.4})
    assert run_job(mth, events.append) == "done", events[-1]
    card = json.loads(Path(events[-1]["result"]["model_path"]).with_suffix(".json").read_text())
    assert card["training"]["config"]["objective_options"]["eta"] == 0.4
    events.clear()
    assert run_job(JobSpec("train", {**spec.args, "eta": 0.4}), events.append) == "failed"
    assert "unknown train argument(s): eta" in events[-1]["message"]  # not a DCH option


# ------------------------------------------------------------------------------ the worker
def _run_worker(spec: JobSpec, tmp_path: Path) -> subprocess.CompletedProcess:
    path = spec.save(tmp_path / f"{spec.id}.json")
    return subprocess.run(worker_command(path), capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S)


def test_worker_subprocess_indexes_the_cmu_slide(tmp_path):
    spec = JobSpec("index", {"paths": [SLIDE], "library_path": tmp_path / "lib.h5"})
    proc = _run_worker(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    assert events[-1]["event"] == "done"
    assert any(e["event"] == "progress" and e["stage"] == "encoding" for e in events)
    (added,) = events[-1]["result"]["added"]
    assert added["tiles"] > 0 and Path(added["path"]).name == SLIDE.name


@pytest.mark.slow
def test_worker_missing_input_is_reported_in_one_line(tmp_path):
    missing = tmp_path / "no-such-slide.svs"
    spec = JobSpec("index", {"paths": [missing], "library_path": tmp_path / "lib.h5"})
    proc = _run_worker(spec, tmp_path)
    final = _events(proc.stdout)[-1]
    # index_paths goes on past bad files: a run with only bad inputs is "done" with failures.
    assert proc.returncode == 0 and final["event"] == "done"
    (reason,) = final["result"]["failed"]
    assert str(missing) in reason and "\n" not in reason


def test_worker_bad_spec_exits_1_with_one_line_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"kind": "index"}')
    proc = subprocess.run(worker_command(path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert _events(proc.stdout) == [{"event": "error",
                                     "message": f"{path}: job spec lacks args"}]


@pytest.mark.slow
def test_worker_sigterm_cancels_keeping_complete_sources(tmp_path, slide_library):
    library_path = tmp_path / "lib.h5"
    spec = JobSpec("index", {"paths": [SLIDE, KATHER], "library_path": library_path,
                             "batch_size": 4})
    spec_path = spec.save(tmp_path / f"{spec.id}.json")
    proc = subprocess.Popen(worker_command(spec_path), stdout=subprocess.PIPE, text=True)
    events = []
    try:
        # Wait for the first patch batch: by then the slide and 4 patches are committed, so the
        # cancel has both something to keep and something to abandon.
        for line in proc.stdout:
            events.append(parse_event(line))
            if events[-1]["event"] == "progress" and events[-1]["stage"] == "patches":
                proc.send_signal(signal.SIGTERM)
                break
        events += [parse_event(line) for line in proc.stdout]
        returncode = proc.wait(timeout=WORKER_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert returncode == 2 and events[-1] == {"event": "cancelled"}
    assert not any(e["event"] == "done" for e in events)
    with _assert_library_consistent(library_path) as library:
        kinds = [s.kind for s in library.sources()]
        assert kinds.count("slide") == 1 and kinds.count("patch") in (4, 8, 12)
        kept = library.n_sources

    rerun: list[dict] = []
    assert run_job(spec, rerun.append) == "done"
    result = rerun[-1]["result"]
    assert len(result["skipped"]) == kept and len(result["added"]) == 13 - kept
    with Library.open(slide_library[0]) as clean, \
            _assert_library_consistent(library_path) as library:
        assert library.n_sources == 13
        assert library.n_tiles == clean.n_tiles


@pytest.mark.slow
def test_worker_cancel_file_stops_it(tmp_path):
    spec = JobSpec("index", {"paths": [KATHER], "library_path": tmp_path / "lib.h5",
                             "batch_size": 1})
    spec_path = spec.save(tmp_path / f"{spec.id}.json")
    cancel_file_for(spec_path).touch()  # present from the start: stops at the first report
    proc = subprocess.run(worker_command(spec_path), capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    assert _events(proc.stdout)[-1] == {"event": "cancelled"}
    with _assert_library_consistent(tmp_path / "lib.h5") as library:
        # patches report after each committed batch (here 1 patch): at most that one is kept
        assert library.n_sources <= 1
