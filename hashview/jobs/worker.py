"""The background worker: ``python -m hashview.jobs.worker SPEC.json``.

Runs one job and prints one JSON event per line on stdout (see :mod:`hashview.jobs`). Exit code
0 done, 1 failed, 2 cancelled. Cancel with SIGTERM (or SIGINT), or by creating the file
:func:`cancel_file_for` ``(SPEC.json)`` (``SPEC.cancel``); either takes effect at the job's next
progress report, so a library keeps every source committed before it and nothing half-written.

This module is only imported as ``__main__``; :func:`run_job` lives in
:mod:`hashview.jobs.runner` (re-exported here and by :mod:`hashview.jobs`).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, TextIO

from hashview.errors import HashViewError
from hashview.jobs import EXIT_CODES, JobSpec, cancel_file_for, run_job
from hashview.jobs.recovery import hold_spec_lock

__all__ = ["main", "run_job", "cancel_file_for", "EXIT_CODES"]


class LineEmitter:
    """Writes events as JSON lines, flushed at once; thread-safe (warnings come from threads).

    If the reader has gone (broken pipe: the app died), :attr:`lost` turns true and the job is
    cancelled at its next progress report rather than holding the library open unattended.
    """

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()
        self.lost = False

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            if self.lost:
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                self.lost = True


class CancelRequest:
    """Set by SIGTERM/SIGINT, or by the cancel file appearing; polled by the progress callback."""

    def __init__(self, cancel_file: Optional[Path] = None):
        self.cancel_file = cancel_file
        self.requested = False

    def install_signal_handlers(self) -> None:
        for name in ("SIGTERM", "SIGINT"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True  # only a flag: the work stops at a safe point, never mid-write

    def __call__(self) -> bool:
        if not self.requested and self.cancel_file is not None and self.cancel_file.exists():
            self.requested = True
        return self.requested


def _take_stdout() -> TextIO:
    """Keep the real stdout for events; send everything else printed (even by C code) to stderr.

    A stray ``print`` in a library could otherwise break a JSON line in two.
    """
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)


BACKGROUND_NICENESS = 10


def _lower_priority() -> None:
    """Run below the app's priority: a CPU-bound job must never make the window stutter."""
    if hasattr(os, "nice"):
        try:
            os.nice(BACKGROUND_NICENESS)
        except OSError:  # not permitted here: run at normal priority
            pass


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cancel = CancelRequest()
    cancel.install_signal_handlers()  # first: a Cancel pressed during start-up must count
    # A crash in native code (OpenSlide, libtiff, HDF5) prints the Python stack on stderr, which
    # the app keeps in the job's log; the job itself is marked failed from the exit signal.
    faulthandler.enable()
    _lower_priority()
    emit = LineEmitter(_take_stdout())
    if len(argv) != 1:
        emit({"event": "error", "message": "usage: python -m hashview.jobs.worker SPEC.json"})
        return EXIT_CODES["failed"]
    spec_path = Path(argv[0])
    cancel.cancel_file = cancel_file_for(spec_path)
    # Held until this process ends, however it ends: the app tells a running job from an
    # interrupted one by this lock (see hashview.jobs.recovery).
    spec_lock = hold_spec_lock(spec_path)
    try:
        try:
            spec = JobSpec.load(spec_path)
        except HashViewError as exc:
            emit({"event": "error", "message": exc.message})
            return EXIT_CODES["failed"]
        status = run_job(spec, emit, lambda: cancel() or emit.lost)
    finally:
        if spec_lock is not None:
            spec_lock.close()
    return EXIT_CODES[status]


if __name__ == "__main__":
    sys.exit(main())
