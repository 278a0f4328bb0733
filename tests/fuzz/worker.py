"""The fuzzer's child process: runs cases as the ``hashview`` command would, one per line.

Protocol: the parent writes one JSON job per line on stdin, ``{"argv": [[...], ...], "stderr":
PATH, "timeout": S}`` (or ``"call": "module:function"`` instead of ``argv``, for checking the
harness itself); the worker answers one JSON line per job. ``argv`` lists are run in-process
through ``hashview.cli.main``, one after the other until one exits non-zero. Everything the case
writes to the standard error stream, from Python or native code, goes to the job's ``stderr``
file (file descriptor 2 is pointed at it), and so does the Python stack of a crash
(``faulthandler``) or of a case about to time out. The product's stdout goes to /dev/null.

Outcomes (``class``): ``ok`` (exit 0, stderr only ``hashview: `` lines), ``refused`` (non-zero
exit and exactly one ``hashview: `` line), ``bad-message`` (any other stderr: several lines,
foreign text; ``warning: `` lines of ``hashview index`` are allowed anywhere), ``traceback`` (an exception escaped the command), ``memory`` (MemoryError, an
allocation failure, or resident memory grown by more than RSS_LIMIT_MB). ``crash`` and ``hang``
are decided by the parent (``runner.py``), which sees the worker die or fall silent.

Memory: the address space is capped at what the warm worker maps plus ADDRESS_SPACE_HEADROOM (an
absolute 2 GiB cap is impossible: importing torch alone maps more); the peak resident size of
each case is measured after resetting the kernel's high-water mark (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import json
import os
import re
import resource
import sys
import time
import traceback
from typing import Optional

ADDRESS_SPACE_HEADROOM = 2 << 30
RSS_LIMIT_MB = 500
MEMORY_WORDS = ("can't allocate memory", "cannot allocate memory", "bad_alloc",
                "unable to allocate", "out of memory", "memory allocation failed")
STDERR_KEPT = 20_000
FULL_COLLECTION_EVERY = 25  # cases; a full collection takes about 60 ms with torch loaded
_cases_run = 0


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the product's stdout
    faulthandler.enable(all_threads=True)  # to fd 2, wherever it points at the time
    _warm_up()
    _cap_address_space()
    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        protocol.write(json.dumps(run_job(json.loads(line))) + "\n")


def _warm_up() -> None:
    """Import what the cases use, so the first case is not slower than the rest."""
    import faiss
    import torch

    import hashview.cli  # noqa: F401
    import hashview.indexing  # noqa: F401
    import hashview.search.query  # noqa: F401
    from hashview.models import DEFAULT_MODEL, load_model

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    load_model(DEFAULT_MODEL)


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _cap_address_space() -> None:
    mapped = _status_kb("VmSize")
    if mapped is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped * 1024 + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _reset_peak_kb() -> int:
    """Reset the resident high-water mark; the resident size now (kB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS") or 0


def _peak_growth_mb(before_kb: int) -> float:
    peak = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0.0, (peak - before_kb) / 1024)


def _cli(argv: list[str]) -> int:
    from hashview.cli import main as hashview_main

    try:
        return hashview_main(argv)
    except SystemExit as exc:  # argparse: usage errors
        return exc.code if isinstance(exc.code, int) else 1


def _run(job: dict) -> int:
    if "call" in job:
        module, function = job["call"].split(":")
        return getattr(importlib.import_module(module), function)()
    for argv in job["argv"]:
        rc = _cli(argv)
        if rc != 0:
            return rc
    return 0


def run_job(job: dict) -> dict:
    fd = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    before = _reset_peak_kb()
    # the stack of a case that is about to be killed for taking too long
    nearly_hung = max(1.0, float(job.get("timeout", 20)) - 1)
    faulthandler.dump_traceback_later(nearly_hung, exit=False)
    started = time.monotonic()
    rc, error = None, None
    try:
        rc = _run(job)
    except BaseException as exc:  # anything but HashViewError escaping the command is a finding
        error = exc
        traceback.print_exc()
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.stdout.flush()
        sys.stderr.flush()
    seconds = time.monotonic() - started
    peak = _peak_growth_mb(before)
    with open(job["stderr"], errors="replace") as f:
        stderr = f.read(STDERR_KEPT)
    outcome, detail = classify(rc, stderr, error, peak)
    if seconds >= nearly_hung:  # finished, but only just within the limit
        outcome, detail = "hang", f"took {seconds:.1f} s, then: {outcome} {detail}"
    del error
    global _cases_run
    _cases_run += 1
    # the young generations hold what a case leaves in cycles (exception frames, h5py handles)
    gc.collect(2 if _cases_run % FULL_COLLECTION_EVERY == 0 else 1)
    return {"class": outcome, "detail": detail, "rc": rc, "peak_mb": round(peak, 1),
            "seconds": round(seconds, 3)}


def _where(exc: BaseException) -> str:
    """The innermost frame in HashView (else the innermost one) of an exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/hashview/" in f.filename.replace(os.sep, "/")]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return ""
    path = frame.filename.replace(os.sep, "/")
    short = path[path.rindex("/hashview/") + 1:] if "/hashview/" in path else path
    return f" at {short}:{frame.lineno}"


def first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:300] if lines else ""


def classify(rc: Optional[int], stderr: str, error: Optional[BaseException],
             peak_mb: float) -> tuple[str, str]:
    """(class, one-line detail) of a finished case; see the module docstring."""
    if error is not None:
        what = f"{type(error).__name__}: {first_line(str(error))}{_where(error)}"
        if isinstance(error, MemoryError) or any(w in str(error).lower() for w in MEMORY_WORDS):
            return "memory", what
        if peak_mb > RSS_LIMIT_MB:
            return "memory", f"resident memory grew by {peak_mb:.0f} MB; then {what}"
        return "traceback", what
    if peak_mb > RSS_LIMIT_MB:
        return "memory", f"resident memory grew by {peak_mb:.0f} MB (exit {rc})"
    # ``hashview index`` reports warnings on lines of their own, beside its one-line errors
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("warning: ")]
    if "Traceback (most recent call last)" in stderr:
        start = stderr.index("Traceback (most recent call last)")
        last = [line for line in stderr[start:].splitlines() if line and not line[0].isspace()]
        return "traceback", f"printed: {last[1] if len(last) > 1 else last[0]}"[:300]
    clean = all(line.startswith("hashview: ") for line in lines)
    if rc == 0:
        return ("ok", "") if clean else ("bad-message", f"exit 0 with: {lines[0][:300]}")
    if clean and len(lines) == 1:
        return "refused", lines[0][:300]
    shown = " | ".join(line[:150] for line in lines[:3]) or "(nothing)"
    return "bad-message", f"exit {rc}, {len(lines)} stderr line(s): {shown}"


if __name__ == "__main__":
    main()
