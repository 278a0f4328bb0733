"""Seeded fuzzer of every file HashView opens: libraries, model files, index sidecars.

    python -m tests.fuzz.fuzz_inputs --cases 3000 --seed 1            # 1000 of each kind
    python -m tests.fuzz.fuzz_inputs --cases 500 --seed 1 --kind model
    python -m tests.fuzz.fuzz_inputs --seed 1 --kind library --case 17  # one case again

It makes real seed files once (``seeds.py``), then for each case a mutated copy (``cases.py``:
byte-level and structure-aware mutations, seeded by (seed, kind, index)), which a persistent
child process opens the way ``hashview`` does (``worker.py``) under a memory cap and a timeout
(``runner.py``). Every case ends ``ok``, ``refused`` (one ``hashview:`` line, non-zero exit),
``bad-message``, ``traceback``, ``memory``, ``crash`` or ``hang``; the counts are printed per
kind and class, and each failing case is listed with its mutations and kept (files and stderr)
under ``WORKDIR/failures/KIND-INDEX``. ``WORKDIR/report.json`` holds everything.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tests.fuzz.cases import KINDS, make_case
from tests.fuzz.runner import Worker
from tests.fuzz.seeds import make_seeds, subprocess_env

CLASSES = ("ok", "refused", "bad-message", "traceback", "memory", "crash", "hang")
PASSING = ("ok", "refused")
DEFAULT_TIMEOUT_S = 20.0
FRESH_WORKER_EVERY = 1000  # cases; so that leaks or state left by one case stay bounded
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "hashview-fuzz"


@dataclass
class Outcome:
    kind: str
    seed: int
    index: int
    outcome: str
    detail: str
    mutations: list[str]
    seconds: float = 0.0
    peak_mb: float = 0.0

    @property
    def passed(self) -> bool:
        return self.outcome in PASSING

    def reproduce(self) -> str:
        return (f"python -m tests.fuzz.fuzz_inputs --seed {self.seed} --kind {self.kind} "
                f"--case {self.index}")

    def describe(self) -> str:
        return (f"{self.kind} case {self.index} (seed {self.seed}): {self.outcome}: "
                f"{self.detail}\n    mutations: {'; '.join(self.mutations)}\n"
                f"    again: {self.reproduce()}")


@dataclass
class FuzzReport:
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    worker_starts: int = 0

    def counts(self) -> dict[str, Counter]:
        table: dict[str, Counter] = {}
        for o in self.outcomes:
            table.setdefault(o.kind, Counter())[o.outcome] += 1
        return table

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    def failure_classes(self) -> dict[str, list[Outcome]]:
        """Failures grouped by kind, outcome and detail with numbers and paths blurred."""
        groups: dict[str, list[Outcome]] = {}
        for o in self.failures:
            groups.setdefault(f"{o.kind} {o.outcome}: {signature(o.detail)}", []).append(o)
        return dict(sorted(groups.items(), key=lambda item: -len(item[1])))

    def summary(self) -> str:
        table = self.counts()
        width = max(len(c) for c in CLASSES)
        lines = [f"{'kind':<8} " + " ".join(f"{c:>{width}}" for c in CLASSES) + "    total"]
        for kind in sorted(table, key=KINDS.index):
            row = table[kind]
            lines.append(f"{kind:<8} " + " ".join(f"{row[c]:>{width}}" for c in CLASSES)
                         + f" {sum(row.values()):>8}")
        lines.append(f"{len(self.outcomes)} cases in {self.seconds:.0f} s, "
                     f"{len(self.failures)} failing, {self.worker_starts} worker start(s)")
        for name, members in self.failure_classes().items():
            lines.append(f"  {len(members):>4} x {name}")
            lines.append(f"         e.g. {members[0].reproduce()}  [{members[0].mutations[0]}"
                         + (" ..." if len(members[0].mutations) > 1 else "") + "]")
        return "\n".join(lines)

    def refusals(self, top: int = 20) -> dict[str, dict[str, int]]:
        """The most common refusal messages per kind: how deep the cases get."""
        table: dict[str, Counter] = {}
        for o in self.outcomes:
            if o.outcome == "refused":
                table.setdefault(o.kind, Counter())[signature(o.detail)] += 1
        return {kind: dict(c.most_common(top)) for kind, c in table.items()}

    def to_json(self) -> dict:
        return {"seed": self.seed, "seconds": round(self.seconds, 1),
                "counts": {k: dict(v) for k, v in self.counts().items()},
                "refusals": self.refusals(),
                "failure_classes": {name: [f"{o.kind}-{o.index}" for o in members]
                                    for name, members in self.failure_classes().items()},
                "failures": [asdict(o) for o in self.failures]}


def signature(detail: str) -> str:
    """A failure's detail without the parts that vary between cases of one cause."""
    text = re.sub(r"(?<![\w.])/[^\s:;'\"()]+", "PATH", detail)
    text = re.sub(r"0x[0-9a-fA-F]+|\b[0-9a-f]{6,}\b|\d+", "N", text)
    return text[:160]


def run_fuzz(counts: dict[str, int], seed: int, workdir: Path,
             timeout: float = DEFAULT_TIMEOUT_S, log: Callable[[str], None] = print,
             keep_failures: bool = True) -> FuzzReport:
    """Run ``counts[kind]`` cases of each kind for ``seed`` in ``workdir``; failing cases are
    kept under ``workdir/failures``."""
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = make_seeds(workdir / "seeds")
    cases_dir, failures_dir = workdir / "cases", workdir / "failures"
    for stale in (cases_dir, failures_dir):
        shutil.rmtree(stale, ignore_errors=True)
    env = subprocess_env()
    env["HASHVIEW_HOME"] = str(workdir / "home")
    worker = Worker(env, workdir / "worker.log")
    report = FuzzReport(seed)
    started = time.monotonic()
    try:
        for kind in KINDS:
            for index in range(counts.get(kind, 0)):
                if worker.starts and len(report.outcomes) % FRESH_WORKER_EVERY == 0:
                    worker.stop()
                case = make_case(kind, seed, index, seeds, cases_dir / f"{kind}-{index}")
                result = worker.run(case.job(timeout), timeout)
                outcome = Outcome(kind, seed, index, result["class"], result.get("detail", ""),
                                  case.mutations, result.get("seconds", 0.0),
                                  result.get("peak_mb", 0.0))
                report.outcomes.append(outcome)
                if outcome.passed or not keep_failures:
                    shutil.rmtree(case.folder, ignore_errors=True)
                else:
                    failures_dir.mkdir(exist_ok=True)
                    case.folder.rename(failures_dir / case.name)
                    log(outcome.describe())
            log(f"{kind}: {counts.get(kind, 0)} cases done "
                f"({time.monotonic() - started:.0f} s so far)")
    finally:
        worker.stop()
        report.seconds = time.monotonic() - started
        report.worker_starts = worker.starts
        (workdir / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    return report


def split_cases(total: int, kind: str) -> dict[str, int]:
    if kind != "all":
        return {kind: total}
    share, extra = divmod(total, len(KINDS))
    return {k: share + (i < extra) for i, k in enumerate(KINDS)}


def run_one(kind: str, seed: int, index: int, workdir: Path, timeout: float) -> int:
    """Make and run one case, keep its files, print all there is to know about it."""
    seeds = make_seeds(workdir / "seeds")
    case = make_case(kind, seed, index, seeds, workdir / "cases" / f"{kind}-{index}")
    print("mutations:\n  " + "\n  ".join(case.mutations))
    print("commands:\n  " + "\n  ".join("hashview " + " ".join(a) for a in case.argv))
    env = subprocess_env()
    env["HASHVIEW_HOME"] = str(workdir / "home")
    worker = Worker(env, workdir / "worker.log")
    try:
        result = worker.run(case.job(timeout), timeout)
    finally:
        worker.stop()
    print(f"outcome: {result['class']}: {result.get('detail', '')}")
    print(f"files: {case.folder}")
    stderr = (case.folder / "stderr.txt")
    if stderr.exists() and stderr.stat().st_size:
        print("stderr:\n" + stderr.read_text(errors="replace")[-4000:])
    return 0 if result["class"] in PASSING else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.fuzz_inputs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300, help="cases in all (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", default="all", choices=("all",) + KINDS)
    parser.add_argument("--case", type=int, default=None, metavar="INDEX",
                        help="make and run only this case of --kind, and keep its files")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds before a case is a hang (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"seed files, cases and the report (default {DEFAULT_WORKDIR})")
    parser.add_argument("--fresh-seeds", action="store_true",
                        help="rebuild the seed files (after a change of the library format)")
    args = parser.parse_args(argv)
    if args.fresh_seeds:
        shutil.rmtree(args.workdir / "seeds", ignore_errors=True)
    if args.case is not None:
        if args.kind == "all":
            parser.error("--case needs --kind")
        return run_one(args.kind, args.seed, args.case, args.workdir, args.timeout)
    report = run_fuzz(split_cases(args.cases, args.kind), args.seed, args.workdir,
                      args.timeout)
    print(report.summary())
    print(f"report: {args.workdir / 'report.json'}; failing cases: {args.workdir / 'failures'}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
