"""A worker process that dies in native code, and the interrupted jobs it leaves behind.

The crash is real: a wrapper runs the worker's own ``main`` after replacing
``Library.add_sources`` with one that dereferences address 0 (SIGSEGV) or calls ``abort()``
(SIGABRT) on the job's second commit. Nothing in the product knows about it. The app's side (the
job marked failed with the reason, the app still working) is in tests/gui/test_bad_inputs_gui.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KATHER
from hashview.jobs import (JobSpec, cancel_file_for, describe_exit, find_interrupted_jobs,
                           parse_event, run_job)
from hashview.library import Library

N_PATCHES = 12
BATCH = 4  # three commits of four patches; the crash comes instead of the second
CRASHES = {"SIGSEGV": "import ctypes; ctypes.string_at(0)", "SIGABRT": "import os; os.abort()"}

CRASHING_WORKER = """
import sys
from hashview.library import Library
from hashview.jobs.worker import main

original = Library.add_sources
commits = []

def add_sources_then_crash(self, items):
    if commits:
        {crash}
    commits.append(1)
    return original(self, items)

Library.add_sources = add_sources_then_crash
sys.exit(main(sys.argv[1:]))
"""


def crashing_worker_command(signal_name: str, spec_path: Path) -> list[str]:
    code = CRASHING_WORKER.format(crash=CRASHES[signal_name])
    return [sys.executable, "-c", code, str(spec_path)]


def index_spec(tmp_path: Path) -> tuple[JobSpec, Path, Path]:
    jobs = tmp_path / "jobs"
    library = tmp_path / "lib" / "library.h5"
    library.parent.mkdir()
    spec = JobSpec("index", {"paths": [KATHER], "library_path": library, "batch_size": BATCH,
                             "device": "cpu"})
    return spec, spec.save(jobs / f"{spec.id}.json"), library


def leftovers(folder: Path) -> list[str]:
    """Temporary and lock files HashView or HDF5 could leave next to a file."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith((".tmp", ".lock")) or ".tmp" in p.name)


def sources(library: Path) -> list[str]:
    with Library.open(library, "r") as lib:
        assert all(s.status == "complete" for s in lib.sources())
        return [s.fingerprint for s in lib.sources()]


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", sorted(CRASHES))
def test_native_crash_fails_the_job_with_the_signal_and_leaves_nothing(tmp_path, signal_name):
    spec, spec_path, library = index_spec(tmp_path)

    run = subprocess.run(crashing_worker_command(signal_name, spec_path), capture_output=True,
                         timeout=300)

    assert run.returncode == -getattr(signal, signal_name), run.stderr.decode()[-2000:]
    assert describe_exit(run.returncode).startswith(f"worker crashed: signal {signal_name} (")
    events = [e for e in map(parse_event, run.stdout.splitlines()) if e is not None]
    assert events and not [e for e in events if e["event"] in ("done", "error", "cancelled")]
    assert b"Fatal Python error" in run.stderr  # faulthandler: the stack, for the job's log
    # the first commit is stored whole, nothing of the second; nothing locked, nothing left over
    assert len(sources(library)) == BATCH
    with Library.open(library, "a"):
        pass  # a writer gets in at once: HDF5's lock died with the process
    assert leftovers(library.parent) == [] and leftovers(spec_path.parent) == []

    # the spec is still there and nobody holds it: the job is offered for resuming
    interrupted, problems = find_interrupted_jobs(spec_path.parent)
    assert [job.spec.id for job in interrupted] == [spec.id] and problems == []
    events = []
    assert run_job(interrupted[0].spec, events.append) == "done"
    result = events[-1]["result"]
    assert (len(result["added"]), len(result["skipped"])) == (N_PATCHES - BATCH, BATCH)
    assert len(set(sources(library))) == len(sources(library)) == N_PATCHES


def test_a_running_worker_is_not_offered_for_resuming(tmp_path):
    spec, spec_path, _ = index_spec(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hashview.jobs.recovery import "
         "hold_spec_lock; lock = hold_spec_lock(sys.argv[1]); print(lock is not None, "
         "flush=True); time.sleep(60)", str(spec_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert find_interrupted_jobs(spec_path.parent) == ([], [])
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process, no clean-up runs
        holder.wait(30)
    interrupted, _ = find_interrupted_jobs(spec_path.parent)
    assert [job.spec_path for job in interrupted] == [spec_path]


def test_interrupted_jobs_skip_training_and_report_broken_specs(tmp_path):
    _, spec_path, _ = index_spec(tmp_path)
    folder = spec_path.parent
    train = JobSpec("train", {"data_folder": KATHER, "arch": "dch", "bits": 16,
                              "out_dir": tmp_path / "out"})
    train.save(folder / f"{train.id}.json")
    (folder / "broken.json").write_text("{not json")
    cancel_file_for(spec_path).touch()

    interrupted, problems = find_interrupted_jobs(folder)

    assert [job.spec_path for job in interrupted] == [spec_path]
    assert len(problems) == 1 and problems[0].startswith(f"{folder / 'broken.json'}: ")
    assert find_interrupted_jobs(tmp_path / "missing") == ([], [])


def test_describe_exit():
    assert describe_exit(-signal.SIGSEGV) == "worker crashed: signal SIGSEGV (segmentation fault)"
    assert describe_exit(-signal.SIGKILL) == ("worker crashed: signal SIGKILL (killed, e.g. out "
                                              "of memory)")
    assert describe_exit(3) == "worker stopped unexpectedly (exit code 3)"
    assert describe_exit(-200) == "worker crashed: signal 200"
