"""Run benchmark sections, render them as Markdown, write JSON, update ``docs/benchmarks.md``.

Each rendered table carries the command that produced it, the date, the machine (CPU count,
torch device and threads) and the load average at the start, because the numbers depend on them
and the machine is often shared.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.util
import json
import os
import platform
import re
import shlex
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from hashview.bench import OPT_IN, SECTIONS, Section, prepare
from hashview.progress import ProgressCallback, report

DOCS_BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def marker(name: str, end: bool = False) -> str:
    return f"<!-- bench:{name}:{'end' if end else 'start'} -->"


def available_sections(opt_in: bool = False) -> list[str]:
    """Sections whose module exists in this installation, in run order; those of
    :data:`OPT_IN` only with ``opt_in`` (they run when named)."""
    names = []
    for name, module in SECTIONS.items():
        if (opt_in or name not in OPT_IN) and \
                importlib.util.find_spec(f"hashview.bench.{module}") is not None:
            names.append(name)
    return names


def resolve_names(only: Optional[Sequence[str]]) -> list[str]:
    """``--only`` names (validated) or every available section but the opt-in ones."""
    if not only:
        return available_sections()
    unknown = [n for n in only if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark section(s): {', '.join(unknown)} "
                         f"(known: {', '.join(SECTIONS)})")
    missing = [n for n in only if n not in available_sections(opt_in=True)]
    if missing:
        raise ValueError(f"benchmark section(s) not available in this installation: "
                         f"{', '.join(missing)}")
    return list(only)


def machine_info() -> dict:
    """What the numbers depend on: CPUs, torch device and threads, and the load right now."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device)",
        "cuda_available": cuda,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def run_sections(names: Sequence[str], mode: str, workdir: Path,
                 progress: Optional[ProgressCallback] = None,
                 log: Callable[[str], None] = lambda _: None) -> list[tuple[Section, dict]]:
    """Run each section; returns ``(section, meta)`` with the machine state at its start."""
    workdir = prepare(mode, workdir)
    results = []
    for n, name in enumerate(names):
        report(progress, "bench", n, len(names), name)
        module = importlib.import_module(f"hashview.bench.{SECTIONS[name]}")
        meta = machine_info()
        meta["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta["mode"] = mode
        log(f"bench {name} ({mode}) … load {meta['loadavg']}")
        start = time.perf_counter()
        section = module.run(mode, workdir / name, progress=progress)
        meta["seconds"] = round(time.perf_counter() - start, 1)
        results.append((section, meta))
    report(progress, "bench", len(names), len(names))
    return results


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def render_markdown(section: Section, meta: dict, command: str) -> str:
    """A Markdown block for one section: heading, provenance line, table, notes."""
    load = ", ".join(f"{x:.2f}" for x in meta["loadavg"])
    lines = [
        f"### {section.title}",
        "",
        f"Measured {meta['date']} with `{command}` ({meta['mode']} mode, "
        f"{meta['seconds']} s): {meta['cpu_count']} CPU cores, torch {meta['torch']} "
        f"({meta['torch_threads']} threads), device {meta['torch_device']}; load average "
        f"{load} (1/5/15 min) at the start.",
        "",
        "| " + " | ".join(section.columns) + " |",
        "|" + "---|" * len(section.columns),
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in section.rows]
    if section.notes:
        lines.append("")
        lines += [f"- {note}" for note in section.notes]
    return "\n".join(lines)


def update_docs(doc_path: Path, blocks: dict[str, str]) -> None:
    """Replace each section's block between its markers; append the marker pair if missing."""
    text = doc_path.read_text(encoding="utf-8") if doc_path.exists() else "# Benchmarks\n"
    for name, body in blocks.items():
        start, end = marker(name), marker(name, end=True)
        block = f"{start}\n{body}\n{end}"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = doc_path.with_suffix(doc_path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, doc_path)


def bench_command(argv: Sequence[str]) -> str:
    return "hashview bench " + " ".join(shlex.quote(a) for a in argv)


def run_cli(mode: str, only: Optional[Sequence[str]], workdir: Path, json_out: Optional[Path],
            markdown_out: Optional[Path], docs: Optional[Path], command: str,
            log: Callable[[str], None], progress: Optional[ProgressCallback] = None) -> str:
    """What ``hashview bench`` does; returns the Markdown of every section run."""
    names = resolve_names(only)
    results = run_sections(names, mode, workdir, progress=progress, log=log)
    blocks = {section.name: render_markdown(section, meta, command)
              for section, meta in results}
    markdown = "\n\n".join(blocks.values()) + "\n"
    if json_out is not None:
        payload = {"command": command, "mode": mode,
                   "sections": [dict(section.to_dict(), meta=meta) for section, meta in results]}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    if markdown_out is not None:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(markdown, encoding="utf-8")
    if docs is not None:
        update_docs(docs, blocks)
    return markdown
