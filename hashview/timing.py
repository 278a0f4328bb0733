"""Per-stage wall-clock accounting for the indexing pipeline (read, resize, forward, write...).

Off by default: code paths take ``times=NO_TIMES``, whose ``stage()`` returns one shared no-op
context manager, so an uninstrumented run pays one attribute lookup and call per tile (well under
a microsecond against milliseconds of work). Stages that run on worker threads are summed over
the threads, so a stage's seconds are CPU-thread seconds, not elapsed time: ``items / seconds``
is what one thread achieves on that stage alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import ContextManager

_NULL = contextlib.nullcontext()


class _Timed:
    __slots__ = ("_times", "_name", "_items", "_start")

    def __init__(self, times: "StageTimes", name: str, items: int):
        self._times, self._name, self._items = times, name, items

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._times.add(self._name, time.perf_counter() - self._start, self._items)


class StageTimes:
    """Seconds and items per named stage; thread-safe; stages keep their first-seen order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}
        self._lock = threading.Lock()

    def stage(self, name: str, items: int = 1) -> ContextManager:
        return _Timed(self, name, items)

    def add(self, name: str, seconds: float, items: int = 1) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.items[name] = self.items.get(name, 0) + items

    def rate(self, name: str) -> float | None:
        """Items per second of one thread on this stage (None if never timed)."""
        seconds = self.seconds.get(name)
        return self.items[name] / seconds if seconds else None

    def to_dict(self) -> dict:
        return {name: {"seconds": round(self.seconds[name], 4), "items": self.items[name],
                       "per_s": None if not self.seconds[name]
                       else round(self.items[name] / self.seconds[name], 1)}
                for name in self.seconds}


class _NoTimes:
    """The default: times nothing."""

    def stage(self, name: str, items: int = 1) -> ContextManager:
        return _NULL

    def add(self, name: str, seconds: float, items: int = 1) -> None:
        pass


NO_TIMES = _NoTimes()
