"""``hashview bench``: speed and size measurements, one module per section.

Every section module exposes ``run(mode, workdir, progress=None) -> Section`` where ``mode`` is
``"quick"`` (a smoke run of seconds, used by the unit tests) or ``"full"`` (the real numbers).
:mod:`hashview.bench.runner` runs them, prints the tables, writes JSON and updates the marked
blocks of ``docs/benchmarks.md``. Timings are reported, never asserted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

MODES = ("quick", "full")
DEFAULT_WORKDIR = Path("/tmp/hashview-bench")  # outputs never go inside the repository

# Section name -> module under hashview.bench, in the order they are run and printed.
SECTIONS = {
    "throughput": "throughput",
    "baseline": "baseline",
    "region": "region",
    "query": "query",
    "footprint": "footprint",
    "cases": "cases",
    "archive": "archive",
}
# Sections run only when named (``--only``): they take many minutes and GBs of memory and disk.
OPT_IN = ("archive",)


@dataclass
class Section:
    """One benchmark table: formatted ``rows`` for Markdown and the raw numbers in ``data``."""

    name: str
    title: str
    columns: list[str]
    rows: list[list]
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "columns": self.columns,
                "rows": self.rows, "notes": self.notes, "data": self.data}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"benchmark mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def prepare(mode: str, workdir) -> Path:
    """Every section's start: a valid ``mode`` and its scratch folder, created."""
    check_mode(mode)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


# Thread settings the latency sections measure under: the defaults (torch and FAISS use every
# core) and one thread, which wins for single queries on a busy machine (OpenMP workers spin).
THREADS = [("default", None), ("1", 1)]


@contextlib.contextmanager
def compute_threads(threads: Optional[int]):
    """Run with ``threads`` torch and FAISS (OpenMP) threads; ``None`` keeps the defaults."""
    import faiss
    import torch

    if threads is None:
        yield
        return
    saved = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        faiss.omp_set_num_threads(saved[1])
