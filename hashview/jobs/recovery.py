"""When a worker does not end normally: why it died, and which jobs can be resumed.

- :func:`describe_exit` turns a worker's exit (a code, or the signal that killed it) into the
  one-line reason shown for the failed job, e.g. ``worker crashed: signal SIGSEGV
  (segmentation fault)``.
- A running worker holds a shared lock (``flock``) on its spec file (:func:`hold_spec_lock`); the
  lock dies with the process, whatever kills it. A spec file left in the jobs folder that nobody
  holds belongs to a job whose app went away before the job ended (the app deletes a spec as soon
  as its job ends): :func:`find_interrupted_jobs` lists those, and resuming one is running the
  same spec again: indexing skips every source already stored (they are keyed by content) and
  adds the rest.

Only index jobs are offered for resuming; a training run resumes from its checkpoints with
``hashview train --resume`` instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from hashview.errors import HashViewError
from hashview.jobs.spec import JobSpec, cancel_file_for

try:
    import fcntl
except ImportError:  # Windows: no flock; an orphaned spec is then offered once its app is gone
    fcntl = None

RESUMABLE_KINDS = ("index",)
_SIGNAL_MEANING = {
    "SIGSEGV": "segmentation fault", "SIGBUS": "bus error", "SIGABRT": "aborted",
    "SIGFPE": "floating-point exception", "SIGILL": "illegal instruction",
    "SIGKILL": "killed, e.g. out of memory", "SIGTERM": "terminated",
}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def describe_exit(returncode: int) -> str:
    """The reason a worker ended without a final event, from a ``subprocess``-style return
    code: negative is the signal that killed it (``-11`` -> SIGSEGV), positive an exit code."""
    if returncode < 0:
        name = signal_name(-returncode)
        meaning = _SIGNAL_MEANING.get(name)
        return f"worker crashed: signal {name}" + (f" ({meaning})" if meaning else "")
    return f"worker stopped unexpectedly (exit code {returncode})"


def hold_spec_lock(spec_path: str | Path) -> Optional[IO]:
    """Take a shared lock on the spec file for as long as the returned handle stays open (the
    worker keeps it for its lifetime). None where locks are not available."""
    if fcntl is None:
        return None
    try:
        handle = open(spec_path, "rb")  # noqa: SIM115 - kept open on purpose
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def worker_alive(spec_path: str | Path) -> bool:
    """Whether a live worker holds ``spec_path`` (see :func:`hold_spec_lock`)."""
    if fcntl is None:
        return False
    try:
        with open(spec_path, "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:
                return False
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class InterruptedJob:
    spec: JobSpec
    spec_path: Path


def find_interrupted_jobs(folder: str | Path) -> tuple[list[InterruptedJob], list[str]]:
    """Resumable jobs whose spec file was left in ``folder`` by an app that went away, oldest
    first, and one-line reasons for spec files that cannot be read (left in place)."""
    found: list[InterruptedJob] = []
    problems: list[str] = []
    try:
        candidates = sorted(Path(folder).glob("*.json"))
    except OSError:
        return [], []
    for path in candidates:
        if worker_alive(path):
            continue  # still running, e.g. started by another HashView window
        try:
            spec = JobSpec.load(path)
        except HashViewError as exc:
            problems.append(exc.message)
            continue
        if spec.kind in RESUMABLE_KINDS:
            found.append(InterruptedJob(spec, path))
    found.sort(key=lambda job: job.spec.created)
    return found, problems


def discard_job_files(spec_path: str | Path) -> None:
    """Remove a job's spec and cancel files (what the app does when a job ends)."""
    for path in (Path(spec_path), cancel_file_for(spec_path)):
        with contextlib.suppress(OSError):
            os.unlink(path)
