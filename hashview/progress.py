"""One progress type shared by CLI bars, the background worker and tests.

Long work takes an optional ``progress`` callable and calls it with :class:`Progress` events.
Returning ``False`` from the callback is never required; cancellation is signalled by raising
:class:`Cancelled` from the callback (the worker does this when the user presses Cancel).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from hashview.errors import printable


@dataclass
class Progress:
    stage: str  # e.g. "tiling", "encoding", "writing"
    done: int
    total: Optional[int] = None  # None when unknown
    message: str = ""  # e.g. the file being worked on

    def to_json(self) -> str:
        return json.dumps(asdict(self))


ProgressCallback = Callable[[Progress], None]


class Cancelled(Exception):
    """Raised from a progress callback to stop the work cleanly."""


def report(progress: Optional[ProgressCallback], stage: str, done: int,
           total: Optional[int] = None, message: str = "") -> None:
    """Call ``progress`` if given; the one place long work reports from."""
    if progress is not None:
        progress(Progress(stage, done, total, message))


class StderrBar:
    """A small progress bar on stderr for the CLI, redrawn at most ten times a second."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self._last = 0.0
        self._stage = None

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = p.total is not None and p.done >= p.total
        if not finished and p.stage == self._stage and now - self._last < 0.1:
            return
        self._last, self._stage = now, p.stage
        if p.total:
            width = 30
            filled = int(width * min(p.done, p.total) / p.total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{p.stage:<9} [{bar}] {p.done}/{p.total} {printable(p.message)[:40]}"
        else:
            text = f"\r{p.stage:<9} {p.done} {printable(p.message)[:40]}"
        self.stream.write(text.ljust(100)[:100])
        if finished:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._stage is not None:
            self.stream.write("\n")
            self.stream.flush()
