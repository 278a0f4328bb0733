"""Run one :class:`JobSpec` in this process, reporting through ``emit(event_dict)``.

The worker process (:mod:`hashview.jobs.worker`) wraps this with JSON lines on stdout, signals
and exit codes; tests call :func:`run_job` directly with ``list.append`` as ``emit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

from hashview.errors import HashViewError
from hashview.jobs.spec import JobSpec
from hashview.progress import Cancelled, Progress

Emit = Callable[[dict], None]
EMIT_INTERVAL_S = 0.2  # ~5 progress events a second: enough for a bar, cheap for the app
COARSE_STEP_PARTS = 20  # a step of 5 % of the total or more is always sent (at most 20 a stage)


class ProgressEmitter:
    """The progress callback handed to the core: cancellation, ETA and throttling.

    A "segment" is a run of events with the same stage and total and a non-decreasing ``done``;
    its first event, a change of segment, completion (done >= total) and a coarse step (one
    call that advances by 1/:data:`COARSE_STEP_PARTS` of the total or more, e.g. a batch of 64
    of 264 patches) are always emitted: dropping a coarse step would leave the bar a whole
    batch behind what is stored until the next one.
    """

    def __init__(self, emit: Emit, should_cancel: Optional[Callable[[], bool]] = None,
                 interval: float = EMIT_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self._emit, self._should_cancel = emit, should_cancel
        self._interval, self._clock = interval, clock
        self._segment: Optional[tuple] = None
        self._t0 = self._done0 = self._last_done = 0
        self._last_emit = float("-inf")

    def __call__(self, p: Progress) -> None:
        # Checked on every call, emitted or not: this is where a cancel takes effect.
        if self._should_cancel is not None and self._should_cancel():
            raise Cancelled()
        now = self._clock()
        new_segment = (p.stage, p.total) != self._segment or p.done < self._last_done
        coarse = (not new_segment and p.total is not None
                  and (p.done - self._last_done) * COARSE_STEP_PARTS >= p.total)
        if new_segment:
            self._segment, self._t0, self._done0 = (p.stage, p.total), now, p.done
        self._last_done = p.done
        finished = p.total is not None and p.done >= p.total
        if not (new_segment or finished or coarse or now - self._last_emit >= self._interval):
            return
        self._last_emit = now
        self._emit({"event": "progress", "stage": p.stage, "done": p.done, "total": p.total,
                    "message": p.message, "eta_s": self._eta(p, now)})

    def _eta(self, p: Progress, now: float) -> Optional[float]:
        progressed, elapsed = p.done - self._done0, now - self._t0
        if p.total is None or progressed <= 0 or elapsed <= 0:
            return None
        return round(max(0.0, (p.total - p.done) * elapsed / progressed), 1)


def internal_error_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"internal error: {type(exc).__name__}: {first}".rstrip(": ")


def run_job(spec: JobSpec, emit: Emit,
            should_cancel: Optional[Callable[[], bool]] = None) -> str:
    """Run ``spec``; emit progress/log events and one final event; return the status.

    Returns "done" (emitted ``{"event": "done", "result": ...}``), "failed" (``error``) or
    "cancelled" (``cancelled``). Never raises for job failures; unexpected exceptions print their
    traceback on stderr and become ``"internal error: <ExcType>: <msg>"``.
    """
    progress = ProgressEmitter(emit, should_cancel)
    try:
        with _forward_warnings(emit):
            result = _RUNNERS[spec.kind](spec, progress, emit)
    except Cancelled:
        emit({"event": "cancelled"})
        return "cancelled"
    except HashViewError as exc:
        emit({"event": "error", "message": exc.message})
        return "failed"
    except Exception as exc:  # noqa: BLE001 - the job boundary: report, never crash the caller
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "message": internal_error_message(exc)})
        return "failed"
    emit({"event": "done", "result": result})
    return "done"


# ------------------------------------------------------------------------------ runners
def _check_args(spec: JobSpec, func: Callable, extra: set[str] = frozenset()) -> None:
    """Unknown keyword arguments become a one-line error, not an internal TypeError."""
    known = {name for name, p in inspect.signature(func).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} | set(extra)
    unknown = sorted(set(spec.args) - known - {"progress"})
    if unknown:
        raise HashViewError(f"job {spec.id}", f"unknown {spec.kind} argument(s): "
                                              f"{', '.join(unknown)}")


def _run_index(spec: JobSpec, progress: ProgressEmitter, emit: Emit) -> dict:
    from hashview.indexing import index_paths
    from hashview.tiling import TilingParams

    kwargs = dict(spec.args)
    engine = kwargs.pop("engine", "local")  # "ray": hashview.cluster.index_with_ray's args
    if engine not in ("local", "ray"):
        raise HashViewError(f"job {spec.id}", f"unknown engine {engine!r} (local or ray)")
    index = index_paths
    if engine == "ray":
        from hashview.cluster import index_with_ray as index
    _check_args(spec, index, extra={"engine"})
    if isinstance(kwargs.get("params"), dict):
        try:
            params = TilingParams(**kwargs["params"])
            params.validate()
        except (TypeError, ValueError) as exc:
            raise HashViewError(f"job {spec.id}", f"bad tiling parameters ({exc})") from None
        kwargs["params"] = params
    if isinstance(kwargs.get("annotations"), dict):
        kwargs["annotations"] = _annotation_options(spec, kwargs["annotations"])
    result = index(progress=progress, **kwargs)
    for message in result.warnings:
        emit({"event": "log", "level": "warning", "message": message})
    for message in result.failed:
        emit({"event": "log", "level": "error", "message": message})
    return {**result.to_dict(), "check": _check_after(spec, result, emit)}


def _check_after(spec: JobSpec, result, emit: Emit) -> Optional[dict]:
    """The library's model checked on its labels when the job added sources (None when there
    is nothing to judge); a check that cannot run is a warning, the job still succeeded."""
    if not result.added:
        return None
    from hashview.search.self_check import check_after_indexing

    try:
        check = check_after_indexing(spec.args["library_path"])
    except HashViewError as exc:
        emit({"event": "log", "level": "warning",
              "message": f"check on the library's labels not run: {exc.message}"})
        return None
    if check is None:
        return None
    from hashview.search.check_record import last_status

    before = last_status(spec.args["library_path"])
    _keep(check, emit)
    lines = check.lines()
    emit({"event": "log", "level": "info" if check.fine else "warning",
          "message": f"check on its labels: {lines[0]}"})
    return {"verdict": lines[0], "lines": lines, "fine": check.fine, "status": check.status,
            "status_before": before}


def _annotation_options(spec: JobSpec, given: dict):
    """``AnnotationOptions`` from a job's JSON ``annotations`` (``where`` null: beside each
    slide); bad values are one line."""
    from hashview.annotations.tiles import AnnotationOptions

    try:
        where = given.get("where")
        return AnnotationOptions(where=Path(where) if where else None,
                                 min_cover=float(given.get("min_cover", 0.5)),
                                 annotated_only=bool(given.get("annotated_only", False)))
    except (TypeError, ValueError) as exc:
        raise HashViewError(f"job {spec.id}", f"bad annotation options ({exc})") from None


def _train_annotated(spec: JobSpec, args: dict, progress: ProgressEmitter, emit: Emit):
    """Training on the annotated tiles of the slides under ``data_folder``."""
    from hashview.training.slide_run import train_from_annotated_slides

    options = _annotation_options(spec, args.pop("annotations"))
    result = train_from_annotated_slides([args.pop("data_folder")], annotations=options,
                                         progress=progress, **args)
    tiles = result.tiles
    for level, messages in (("warning", tiles.warnings), ("error", tiles.failed)):
        for message in messages:
            emit({"event": "log", "level": level, "message": message})
    counts = ", ".join(f"{label} {n}" for label, n in tiles.labels.items())
    emit({"event": "log", "level": "info", "message": f"trained on {tiles.tiles} annotated "
          f"tiles of {len(tiles.slides)} slide(s): {counts}"})
    return result


def _run_train(spec: JobSpec, progress: ProgressEmitter, emit: Emit) -> dict:
    from hashview.training import TrainConfig, train_from_folder
    from hashview.training.report import report_lines, warning_line

    # train_from_folder passes **options on to TrainConfig: its fields are valid too, and so
    # are the architecture's own objective options (e.g. MTH's eta), as on the command line.
    extra = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        from hashview.training.objectives import objective_class
        extra |= set(objective_class(str(spec.args.get("arch", ""))).options)
    except HashViewError:
        pass  # an unknown arch: train_from_folder says so in one line
    _check_args(spec, train_from_folder, extra | {"annotations"})
    if isinstance(spec.args.get("annotations"), dict):  # slides with QuPath annotations
        result = _train_annotated(spec, dict(spec.args), progress, emit)
    else:
        result = train_from_folder(progress=progress, **spec.args)
    card = result.card
    history = [float(x) for x in result.history]
    # The held-out report goes to the job's log (and the result); a collapsed or regressed
    # model is a warning, which the app shows instead of a success message.
    lines = report_lines(result.report, card.name)
    for line in lines:
        emit({"event": "log", "level": "info", "message": line})
    warning = warning_line(result.report, card.name)
    if warning:
        emit({"event": "log", "level": "warning", "message": warning})
    return {"model_path": str(result.model_path), "model_name": card.name, "arch": card.arch,
            "bits": card.bits, "seconds": round(float(result.seconds), 1),
            "final_loss": history[-1] if history else None, "history": history,
            "quality": result.report.get("quality"), "report": result.report,
            "report_lines": lines, "warning": warning}


def _keep(check, emit: Emit) -> None:
    """Keep the check beside its library, so that searches are cautioned by a bad one."""
    from hashview.search.check_record import remember

    problem = remember(check)
    if problem:
        emit({"event": "log", "level": "warning", "message": problem})


def _run_check(spec: JobSpec, progress: ProgressEmitter, emit: Emit) -> dict:
    """``hashview check``: the library's model on its labels, or with ``models`` (a list or
    "all") each of those models on the labelled tiles read again."""
    from hashview.search.model_comparison import compare_models, model_names
    from hashview.search.self_check import check_library

    kwargs = dict(spec.args)
    if "models" in kwargs:
        _check_args(spec, compare_models, extra={"library_path"})
        names = model_names(kwargs.pop("models"))
        if not names:
            raise HashViewError(f"job {spec.id}", "check job 'models' names no model")
        compared = compare_models(kwargs.pop("library_path"), names, progress=progress,
                                  **kwargs)
        lines = compared.lines()
        for line in lines:
            emit({"event": "log", "level": "info", "message": line})
        best = compared.scores[0].check if compared.scores else None
        return {"library_path": compared.library, "verdict": lines[0], "lines": lines,
                "fine": bool(best and best.fine),  # a warning box when no model serves
                "models": [score.model for score in compared.scores],
                "comparison": compared.as_dict()}
    _check_args(spec, check_library, extra={"library_path"})
    result = check_library(kwargs.pop("library_path"), progress=progress, **kwargs)
    lines = result.lines()
    for line in lines:
        emit({"event": "log", "level": "info", "message": line})
    _keep(result, emit)
    return {"library_path": result.library, "verdict": lines[0], "lines": lines,
            "fine": result.fine, "check": result.as_dict()}


_RUNNERS = {"index": _run_index, "train": _run_train, "check": _run_check}


# ------------------------------------------------------------------------------ warnings
class _LogHandler(logging.Handler):
    def __init__(self, emit: Emit):
        super().__init__(logging.WARNING)
        self._emit_event = emit

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._emit_event({"event": "log", "level": record.levelname.lower(),
                              "message": record.getMessage().strip().splitlines()[0]})


@contextlib.contextmanager
def _forward_warnings(emit: Emit):
    """Python warnings and logging warnings become ``log`` events while the job runs."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        emit({"event": "log", "level": "warning",
              "message": f"{category.__name__}: {text[0] if text else ''}"})

    handler = _LogHandler(emit)
    root = logging.getLogger()
    root.addHandler(handler)
    with warnings.catch_warnings():  # keeps the filters; only the display is redirected
        warnings.showwarning = show
        try:
            yield
        finally:
            root.removeHandler(handler)
