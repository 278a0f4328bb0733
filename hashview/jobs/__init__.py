"""Background jobs (Qt-free): indexing and training in a worker process.

A :class:`JobSpec` is written as JSON and run by ``python -m hashview.jobs.worker SPEC.json``
(:func:`worker_command`), which prints one JSON object per line on stdout:

- ``{"event": "progress", "stage", "done", "total", "message", "eta_s"}`` (``total``/``eta_s``
  may be null; at most ~5 a second, but every stage change and completion is sent)
- ``{"event": "log", "level": "warning"|"error"|..., "message"}``
- ``{"event": "done", "result": {...}}`` (``IndexReport.to_dict()`` or the training summary)
- ``{"event": "error", "message": "<one line>"}``
- ``{"event": "cancelled"}``

Exit code 0 done, 1 failed, 2 cancelled. Cancel with SIGTERM or the file
:func:`cancel_file_for` ``(spec_path)``. A worker that dies without a final event (a crash in
native code, an out-of-memory kill) is reported with :func:`describe_exit`; index jobs it leaves
behind are found again by :func:`find_interrupted_jobs` (see :mod:`hashview.jobs.recovery`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from hashview.jobs.recovery import (InterruptedJob, describe_exit, discard_job_files,
                                   find_interrupted_jobs)
from hashview.jobs.runner import run_job
from hashview.jobs.spec import KINDS, JobSpec, cancel_file_for

# Not importing hashview.jobs.worker here: ``python -m`` would then run a second copy of it.
EXIT_CODES = {"done": 0, "failed": 1, "cancelled": 2}
FINAL_EVENTS = ("done", "error", "cancelled")

__all__ = ["JobSpec", "KINDS", "EXIT_CODES", "FINAL_EVENTS", "parse_event", "run_job",
           "worker_command", "jobs_dir", "cancel_file_for", "InterruptedJob", "describe_exit",
           "discard_job_files", "find_interrupted_jobs"]


def parse_event(line: str | bytes) -> Optional[dict]:
    """One stdout line of the worker -> the event dict, or None for anything that is not one."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event


def worker_command(spec_path: str | Path) -> list[str]:
    """The argv that runs a spec file; ``sys.executable`` keeps the caller's environment."""
    return [sys.executable, "-m", "hashview.jobs.worker", str(spec_path)]


def jobs_dir() -> Path:
    """Where the app writes job specs: ``<user data dir>/jobs`` (created if missing)."""
    from hashview.fileio import user_data_dir

    path = user_data_dir() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path
