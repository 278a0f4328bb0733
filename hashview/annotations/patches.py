"""Cut the annotated tiles of slides into a labelled patch folder, the input training takes.

Each slide's tissue tiles (the given tiling) that a class covers are written as PNG files under
``folder/NNN-SLIDE/`` and listed in ``folder/labels.csv`` with their class and patient (the
slide's name unless a patient id is given), so the patient split keeps a slide's tiles on one
side. A slide that cannot be read, or whose annotations cannot, is reported and the others go on.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from hashview.annotations.tiles import AnnotationOptions, label_counts, labelled_tiles
from hashview.errors import HashViewError
from hashview.fileio import atomic_write_bytes
from hashview.progress import ProgressCallback, report
from hashview.slides import LABELS_FILE, open_source
from hashview.tiling import TilingParams, plan_tiles, read_tile


class TileWriteError(HashViewError):
    """The output folder cannot take the tiles (full, read-only): no later slide could."""


@dataclass
class AnnotatedTiles:
    """What :func:`cut_annotated_tiles` wrote."""

    folder: Path
    labels: dict[str, int] = field(default_factory=dict)  # tiles per class, all slides
    slides: dict[str, int] = field(default_factory=dict)  # tiles per slide path
    patients: dict[str, str] = field(default_factory=dict)  # slide path -> patient id
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def tiles(self) -> int:
        return sum(self.slides.values())

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "tiles": self.tiles, "labels": self.labels,
                "slides": self.slides, "patients": self.patients, "failed": self.failed,
                "warnings": self.warnings}


def _folder_name(index: int, slide: Path) -> str:
    return f"{index:03d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", slide.stem)[:60] or "slide")


def _patient_of(slide: Path, patients: Mapping[str, str]) -> str:
    """The slide's patient: by the path as given, the full path or the file name; else the
    slide itself is the patient (its file stem)."""
    for key in (str(slide), os.path.abspath(slide), slide.name):
        if patients.get(key):
            return patients[key]
    return slide.stem


def cut_annotated_tiles(slides: Sequence[str | Path], folder: str | Path,
                        options: AnnotationOptions, params: TilingParams,
                        patients: Optional[Mapping[str, str]] = None,
                        progress: Optional[ProgressCallback] = None) -> AnnotatedTiles:
    """Write the class-covered tiles of ``slides`` to ``folder`` (replaced if it holds an
    earlier cut) with its ``labels.csv``. ``patients`` maps a slide (its path as given, full
    path or file name) to its patient id; a slide not in it is its own patient. Raises :class:`HashViewError` when no slide gave a tile."""
    folder = Path(folder)
    options = AnnotationOptions(options.where, options.min_cover, annotated_only=True)
    result = AnnotatedTiles(folder)
    if (folder / LABELS_FILE).is_file():
        shutil.rmtree(folder)  # an earlier cut: its tiles must not outlive its labels.csv
    rows = []
    for index, slide in enumerate(map(Path, slides)):
        report(progress, "cutting tiles", index, len(slides), slide.name)
        patient = _patient_of(slide, patients or {})
        try:
            written = _cut_slide(slide, folder / _folder_name(index, slide), options, params,
                                 result.warnings)
        except TileWriteError:
            raise
        except HashViewError as exc:
            result.failed.append(exc.message)
            continue
        rows.extend((path.relative_to(folder).as_posix(), label, patient)
                    for path, label in written)
        result.slides[str(slide)] = len(written)
        result.patients[str(slide)] = patient
    report(progress, "cutting tiles", len(slides), len(slides))
    if not rows:
        reason = result.failed[0] if result.failed else "no tile is covered by a class"
        raise HashViewError(None, f"no annotated tiles to train on ({reason})")
    result.labels = label_counts([label for _, label, _ in rows])
    _write_labels(folder / LABELS_FILE, rows)
    return result


def _cut_slide(slide: Path, out: Path, options: AnnotationOptions, params: TilingParams,
               warnings: list[str]) -> list[tuple[Path, str]]:
    with open_source(slide) as source:
        plan = plan_tiles(source, params)
        warnings.extend(f"{slide}: {w}" for w in plan.warnings)
        tiles, labels = labelled_tiles(slide, plan.tiles, options, warnings)
        written = []
        for tile, label in zip(tiles, labels):
            path = out / f"{tile.x}_{tile.y}.png"
            buffer = io.BytesIO()
            read_tile(source, tile, plan).save(buffer, format="PNG")
            _write(path, buffer.getvalue())
            written.append((path, label))
    return written


def _write(path: Path, data: bytes) -> None:
    # Plain writes: the folder is rebuilt on every run, and labels.csv (written last,
    # atomically) lists only the tiles that were written whole.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise TileWriteError(path, f"cannot write ({exc.strerror or exc})") from None


def _write_labels(path: Path, rows: list[tuple[str, str, str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "patient_id"])
    writer.writerows(rows)
    try:
        atomic_write_bytes(path, text.getvalue().encode("utf-8"))
    except OSError as exc:
        raise TileWriteError(path, f"cannot write ({exc.strerror or exc})") from None
