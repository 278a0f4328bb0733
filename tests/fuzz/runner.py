"""The parent's side of the fuzz worker: start it, hand it a case, wait with a timeout.

A worker that dies while running a case gives that case the outcome ``crash`` (with the signal,
and the first HashView frame of the Python stack ``faulthandler`` left in the case's stderr
file); one that does not answer in time is killed and the case is a ``hang``. Either way the next
case gets a fresh worker.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tests.fuzz.seeds import REPO

START_TIMEOUT_S = 180.0  # importing torch on a busy machine
_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"worker exited with status {returncode}"


def stack_hint(stderr_path: Path) -> str:
    """First line and first HashView frame of a ``faulthandler`` dump in the case's stderr."""
    try:
        text = stderr_path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = next((line for line in lines if line.startswith(("Fatal Python error", "Timeout ("))),
                "")
    frames = [m for m in map(_FRAME.search, lines) if m]
    ours = [m for m in frames if "/hashview/" in m.group(1)]
    frame = (ours or frames or [None])[0]
    where = ""
    if frame is not None:
        path = frame.group(1)
        short = path[path.rindex("/hashview/") + 1:] if "/hashview/" in path else path
        where = f"{short}:{frame.group(2)} in {frame.group(3)}"
    return "; ".join(part for part in (head, where) if part)


class Worker:
    """One ``python -m tests.fuzz.worker`` process, restarted when it dies or hangs."""

    def __init__(self, env: dict, log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self._buffer = b""
        self.starts = 0

    def _start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzz.worker"], cwd=REPO, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self._buffer = b""
        self.starts += 1
        if self._read_line(START_TIMEOUT_S) is None:
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start; see {self.log_path}")

    def _read_line(self, timeout: float) -> Optional[bytes]:
        """The next line from the worker; None on timeout or end of file."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def run(self, job: dict, timeout: float) -> dict:
        """Run one job; its outcome dict (``class``, ``detail``, ...)."""
        if self.proc is None:
            self._start()
        started = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
            line = self._read_line(timeout)
        except BrokenPipeError:
            line = None
        if line is not None:
            return json.loads(line)
        seconds = round(time.monotonic() - started, 3)
        hint = stack_hint(Path(job["stderr"]))
        if self.proc.poll() is None:
            try:  # end of file and exit can be a moment apart
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.stop()
                return {"class": "hang", "detail": f"no answer in {timeout:g} s; {hint}",
                        "seconds": seconds}
        returncode = self.proc.returncode
        self.stop()
        return {"class": "crash", "detail": f"{describe_exit(returncode)}; {hint}",
                "rc": returncode, "seconds": seconds}

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None
