"""Which model tells a library's labels apart best: a sample of its labelled tiles read again
from their files, encoded by each candidate model, and each model judged by the library check
(:mod:`hashview.search.self_check`) on a library of those tiles alone. Tiles any of the
compared models trained on (their cards' records) stay in that library but are queried for
none of them, so every model answers the same queries.

The library's own codes are not reused: its model is encoded from the same pixels as the
others, so every model is judged on the same tiles, with the same patients held out. A slide
tile is read once, at the library's tiling, for the largest model input among the candidates,
then resized to each model's input (a patch file likewise: read whole, resized to that size);
a library that stain-normalises its tiles re-stains them for every model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hashview.errors import HashViewError, printable
from hashview.progress import ProgressCallback, report
from hashview.search.self_check import (LibraryCheck, check_library, label_spread,
                                        source_groups, stratified_sample, trained_sources)

DEFAULT_TILES = 2000
SHOWN_WARNINGS = 3  # unreadable sources named one by one; the rest counted


@dataclass(frozen=True)
class ModelScore:
    model: str
    check: Optional[LibraryCheck] = None
    problem: str = ""  # why it was not judged (a model that cannot be loaded)


@dataclass(frozen=True)
class Comparison:
    library: str
    library_model: str
    tiles: int  # labelled tiles read and encoded by every model
    scores: tuple[ModelScore, ...]  # best first
    warnings: tuple[str, ...] = ()  # sources whose tiles could not be read

    def as_dict(self) -> dict:
        return {"library": self.library, "library_model": self.library_model,
                "tiles": self.tiles, "warnings": list(self.warnings),
                "models": [{"model": s.model, "problem": s.problem,
                            "check": s.check.as_dict() if s.check else None}
                           for s in self.scores]}

    def lines(self) -> list[str]:
        """A table of the models, best first, and which one made the library."""
        judged = [s.check for s in self.scores if s.check is not None and s.check.judged]
        chance = 1.0 / len(judged[0].judged) if judged else None
        head = (f"{self.tiles} labelled tiles of {Path(self.library).name} read again and "
                "encoded by each model, each query's patient (else its file) held out")
        if judged:
            head += (f"; balanced vote@{judged[0].k} (its range with the {judged[0].held_out_by}s "
                     f"resampled) against chance {chance:.2f}:")
        lines = [head]
        for score in self.scores:
            mark = " (this library's)" if score.model == self.library_model else ""
            lines.append(f"  {score.model}{mark}: {_score_text(score, chance)}")
        lines.extend(f"warning: {w}" for w in self.warnings[:SHOWN_WARNINGS])
        if len(self.warnings) > SHOWN_WARNINGS:  # a moved folder: not a line per file
            lines.append(f"warning: {len(self.warnings) - SHOWN_WARNINGS} more sources could "
                         "not be read (hashview relocate LIB.h5 OLD_DIR NEW_DIR if they moved)")
        return lines


def model_names(models: "str | Sequence[str]") -> list[str]:
    """Model names from "all" (every trained model installed), "a,b" or a list."""
    if isinstance(models, str):
        if models.strip() == "all":
            from hashview.models import list_models
            return [card.name for card in list_models() if card.trained]
        models = models.split(",")
    return [str(name).strip() for name in models if str(name).strip()]


def _score_text(score: ModelScore, chance: Optional[float]) -> str:
    check = score.check
    if check is None:
        return f"not judged: {score.problem}"
    if check.balanced_accuracy is None:
        return check.status
    own_chance = 1.0 / len(check.judged)
    spread = "" if check.interval is None else \
        f" ({check.interval[0]:.2f}-{check.interval[1]:.2f})"
    text = f"{check.balanced_accuracy:.2f}{spread}, {check.queries} queries"
    if chance is None or abs(own_chance - chance) > 1e-9:
        text += f", chance {own_chance:.2f}"
    return text + ("" if check.fine else f" ({check.status.upper()})")


def _sort_key(score: ModelScore):
    """Judged models by balanced vote, a collapsed one after them (its hits are arbitrary
    whatever its votes), then the ones that could not be judged."""
    check = score.check
    balanced = check.balanced_accuracy if check is not None else None
    return (balanced is None, check is not None and check.codes.collapsed, -(balanced or 0.0),
            score.model)


@dataclass(frozen=True)
class _Stored:
    """What the comparison needs of the library, read while it is open for a moment (an
    indexing job may want the file while tiles are read and encoded)."""
    path: Path
    model: str
    tile_size: int
    target_mpp: float
    stain_reference: str
    labels: list
    table: dict
    sources: dict


def _stored(path) -> _Stored:
    from hashview.library import Library

    with Library.open(path, mode="r") as library:
        return _Stored(Path(library.path), str(library.model_name), int(library.tile_size),
                       float(library.target_mpp), library.model.stain_reference,
                       library.label_names(), library.tile_table(),
                       {s.id: s for s in library.sources()})


def _read_tiles(stored: _Stored, rows: np.ndarray, size: int, warnings: list[str],
                progress: Optional[ProgressCallback] = None) -> dict[int, object]:
    """The pixels of the library's tiles ``rows`` at ``size`` px (patch files whole, slide
    tiles at the library's tiling), so that memory stays rows x size^2 x 3 bytes whatever the
    patches' size; a source that cannot be read is one warning and its tiles are left out."""
    from hashview.slides import open_source
    from hashview.tiling import Tile, TilingParams, load_patch, plan_geometry, read_tile

    table, sources = stored.table, stored.sources
    params = TilingParams(tile_size=stored.tile_size, target_mpp=stored.target_mpp)
    images = {}
    by_source: dict[int, list[int]] = {}
    for row in rows:
        by_source.setdefault(int(table["source_id"][row]), []).append(int(row))
    for source_id, tile_rows in by_source.items():
        record = sources[source_id]
        try:
            if record.kind == "patch":
                image = load_patch(record.path, size)
                images.update((row, image) for row in tile_rows)
                continue
            with open_source(record.path) as source:
                plan = plan_geometry(source, params, size)
                for row in tile_rows:
                    tile = Tile(int(table["x"][row]), int(table["y"][row]),
                                int(table["size"][row]))
                    images[row] = read_tile(source, tile, plan)
        except HashViewError as exc:
            warnings.append(exc.message)
        except OSError as exc:
            warnings.append(f"{printable(record.path)}: {exc.strerror or exc}")
        finally:
            report(progress, "reading tiles", len(images), len(rows))
    return images


def _sample_library(path: Path, stored: _Stored, model, rows: list[int], images: dict,
                    device: str) -> None:
    """A library at ``path`` of the tiles ``rows`` encoded by ``model`` (a LoadedModel), each
    under its own source's record (path, patient, fingerprint), with the tiles' labels."""
    from hashview.encode import Encoder
    from hashview.library import Library
    from hashview.library.records import ModelInfo
    from hashview.stain_reference import normaliser_of
    from hashview.tiling import square_tile

    stain, table, sources = stored.stain_reference, stored.table, stored.sources
    encoder = Encoder(model, device=device,
                      stain_normaliser=normaliser_of(stain, stored.path) if stain else None)
    codes = encoder.encode([square_tile(images[row], encoder.input_size) for row in rows])
    labels = stored.labels
    info = ModelInfo.coerce(model.card, tile_size=stored.tile_size,
                            target_mpp=stored.target_mpp, stain_reference=stain)
    by_source: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_source.setdefault(int(table["source_id"][row]), []).append(i)
    with Library.create(path, info) as sample:
        items = []
        for source_id, at in by_source.items():
            rec = sources[source_id]
            record = {"path": rec.path, "fingerprint": rec.fingerprint, "name": rec.name,
                      "kind": rec.kind, "patient_id": rec.patient_id, "mpp": rec.mpp,
                      "width": rec.width, "height": rec.height}
            picked = [rows[i] for i in at]
            items.append((record, codes[at], table["x"][picked], table["y"][picked],
                          table["size"][picked],
                          [labels[int(table["label_id"][row])] for row in picked]))
        sample.add_sources(items)


def compare_models(path, models: Sequence[str], k: int = 10, max_tiles: int = DEFAULT_TILES,
                   seed: int = 0, device: str = "auto",
                   progress: Optional[ProgressCallback] = None) -> Comparison:
    """Judge each of ``models`` (names or paths) on a seeded sample of the library's labelled
    tiles (up to ``max_tiles``, about as many per label), best first."""
    from hashview.models import load_model

    if int(k) < 1 or int(max_tiles) < 1:
        raise ValueError("k and the number of tiles must be at least 1")
    stored = _stored(path)
    sizes, problems = {}, {}  # each model is loaded here for its input size, then one by one
    trained: set[int] = set()  # sources any of them trained on: queried for none of them
    for name in dict.fromkeys(models):
        try:
            card = load_model(name).card
        except HashViewError as exc:
            problems[name] = exc.message
            continue
        sizes[name] = int(card.input_size)
        trained |= trained_sources(stored.sources.values(), card) or set()
    not_queried = {stored.sources[i].fingerprint for i in trained}
    _, group_of = source_groups(list(stored.sources.values()))
    tile_group = [group_of[int(s)] for s in stored.table["source_id"]]
    spread = label_spread(np.asarray(stored.table["label_id"]), tile_group)
    chosen = stratified_sample({lid: tiles for lid, (_, outside, tiles) in spread.items()
                                if outside >= k}, max_tiles, seed)
    rows = np.sort(np.concatenate(list(chosen.values()))) if chosen else np.zeros(0, int)
    warnings: list[str] = []
    report(progress, "reading tiles", 0, len(rows))
    images = _read_tiles(stored, rows, max(sizes.values(), default=224), warnings, progress)
    read_rows = [int(row) for row in rows if int(row) in images]
    scores = [ModelScore(name, problem=problem) for name, problem in problems.items()]
    with tempfile.TemporaryDirectory(prefix="hashview-compare-") as work:
        for number, name in enumerate(sizes, 1):
            report(progress, "encoding", number - 1, len(sizes), name)
            sample_path = Path(work) / f"{number}.h5"
            _sample_library(sample_path, stored, load_model(name), read_rows, images, device)
            scores.append(ModelScore(name, check_library(
                sample_path, k=k, max_queries=len(read_rows) or 1, seed=seed,
                not_queried=not_queried)))
    report(progress, "encoding", len(sizes), len(sizes))
    return Comparison(str(path), stored.model, len(read_rows),
                      tuple(sorted(scores, key=_sort_key)),
                      tuple(warnings))
