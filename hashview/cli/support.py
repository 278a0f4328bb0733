"""What every ``hashview`` sub-command shares: exit codes, argument types, printing, progress."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable, Optional

from hashview.errors import printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_WORSE_MODEL = 4  # hashview train: the model collapsed or is worse than its start


def progress_bar(enabled: bool):
    """A stderr progress bar (drawn only on a terminal; ``enabled=False`` for ``--json``)."""
    from hashview.progress import StderrBar

    return StderrBar(enabled=enabled)


# ---------------------------------------------------------------- printing

def say(text: str = "", err: bool = False) -> None:
    """Print one line that may hold names from files or libraries (file, source, label and
    model names), with control characters shown as escapes (:func:`hashview.errors.printable`)
    so that no name can move the cursor, recolour the terminal or fake a line of output."""
    print(printable(text), file=sys.stderr if err else sys.stdout)


def say_lines(text: str, err: bool = False) -> None:
    """:func:`say` for each line of a multi-line text."""
    for line in text.split("\n"):
        say(line, err=err)


def say_problems(warnings, failures) -> None:
    """Warnings (``warning: ...``) and one-line failures (``hashview: ...``) on stderr."""
    for warning in warnings:
        say(f"warning: {warning}", err=True)
    for failure in failures:
        say(f"hashview: {failure}", err=True)


def print_index_report(result, library: str, already: str, as_json: bool) -> int:
    """Print an indexing or merge report (``IndexReport``): JSON on stdout, or its warnings and
    failures on stderr and one summary line; returns the exit code (partial when some sources
    failed and others were stored or already there)."""
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        say_problems(result.warnings, result.failed)
        say(f"{library}: added {len(result.added)} source(s), {result.tiles_added} tiles; "
            f"{len(result.skipped)} {already}; {len(result.failed)} failed")
    if result.failed:
        return EXIT_PARTIAL if result.added or result.skipped else EXIT_FAILED
    return EXIT_OK


def usage_error(message: str) -> int:
    """Report a bad combination of arguments found after parsing; returns ``EXIT_USAGE``."""
    say(f"hashview: {message}", err=True)
    return EXIT_USAGE


# ---------------------------------------------------------------- argument types
# Used as argparse ``type=``: a value out of range is a usage error (exit 2) naming the option,
# before any work starts, instead of a traceback or a silent default later.

def int_in(low: int, high: Optional[int] = None, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound when None)."""
    span = f"from {low} to {high}" if high is not None else f">= {low}"
    what = f"a multiple of {multiple_of} " if multiple_of > 1 else "an integer "

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high) \
                or value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be {what}{span}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number_in(low: float, high: Optional[float] = None,
              low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (excluded when ``low_open``) to ``high``."""
    span = (f"{'above' if low_open else 'from'} {low:g}"
            + (f" {'and at most' if low_open else 'to'} {high:g}" if high is not None else ""))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (low_open and value == low) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def int_list(low: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers, each at least ``low`` (e.g. ``0,1,2``)."""
    one = int_in(low)

    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}")
        return tuple(one(p) for p in parts)

    parse.__name__ = "list"
    return parse


POSITIVE_INT = int_in(1)
NON_NEGATIVE_INT = int_in(0)
POSITIVE_NUMBER = number_in(0.0, low_open=True)
FRACTION = number_in(0.0, 1.0)
# Images a forward pass holds at once: beyond a few thousand a batch of tiles alone takes
# gigabytes, so a typing slip (an extra zero or three) is refused rather than run out of memory.
BATCH_SIZE_MAX = 4096
BATCH_SIZE = int_in(1, BATCH_SIZE_MAX)
TRAIN_BATCH_SIZE = int_in(2, BATCH_SIZE_MAX)  # a triplet or pairwise loss needs two images


# The bounds below live with the code they protect; importing it (torch, numpy) waits until an
# option is actually given, so building the parser stays instant.

def code_bits(text: str) -> int:
    """A code length a model card may hold (``BITS_RANGE``, whole bytes)."""
    from hashview.models.card_limits import BITS_RANGE

    return int_in(*BITS_RANGE, multiple_of=8)(text)


def model_input_size(text: str) -> int:
    """A model input side a model card may hold (the architecture may allow less)."""
    from hashview.models.card_limits import INPUT_SIZE_RANGE

    return int_in(*INPUT_SIZE_RANGE)(text)


def tile_size(text: str) -> int:
    """A tile side :class:`hashview.tiling.TilingParams` accepts."""
    from hashview.tiling import MAX_TILE_SIZE, MIN_TILE_SIZE

    return int_in(MIN_TILE_SIZE, MAX_TILE_SIZE)(text)


def target_mpp(text: str) -> float:
    """A resolution in µm/px :class:`hashview.tiling.TilingParams` accepts."""
    from hashview.tiling import MAX_TARGET_MPP, MIN_TARGET_MPP

    return number_in(MIN_TARGET_MPP, MAX_TARGET_MPP)(text)
