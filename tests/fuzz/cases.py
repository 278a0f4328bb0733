"""Fuzz cases: the mutated copy of the seed files for one (kind, seed, index), and the job
that opens it the way HashView does.

Kinds:

- ``library``: a mutated ``library.h5``; the job runs ``hashview info LIB`` (with ``--json``
  in two cases of three) and ``hashview search LIB QUERY`` (exact search, as a library of this
  size gets); every third case first appends a new patch (``hashview index NEW --library
  LIB``), which opens the library for writing;
- ``sidecar``: the intact library with a mutated ``library.h5.hvindex``; the job runs
  ``hashview search LIB QUERY --index ivf``, which loads the sidecar;
- ``model``: a mutated ``NAME.json`` + ``NAME.safetensors``; the job runs ``hashview index
  QUERY --library NEW.h5 --model NAME.safetensors`` (load, encode one tile, store it) and then
  searches the new library with the same model.

A case's random generator is seeded from (seed, kind, index) alone, so any case can be made
again by itself. Structure-aware mutations (which parse the file) come first, byte-level ones
after them.
"""

from __future__ import annotations

import random
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tests.fuzz import mutate_model, mutate_sidecar
from tests.fuzz.mutate_bytes import lie_about_length, mutate_file
from tests.fuzz.mutate_hdf5 import mutate_hdf5
from tests.fuzz.seeds import Seeds

KINDS = ("library", "model", "sidecar")
SEARCH_OPTIONS = ("--json", "-k", "5", "--device", "cpu")
# Errors a structure-aware mutation meets when an earlier one left nothing for it to parse.
NOT_APPLICABLE = (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError,
                  OSError, struct.error)

Choice = tuple[Callable[[], str], float]


@dataclass
class Case:
    kind: str
    seed: int
    index: int
    folder: Path
    argv: list[list[str]]
    mutations: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    def job(self, timeout: float) -> dict:
        return {"argv": self.argv, "stderr": str(self.folder / "stderr.txt"), "timeout": timeout}


def case_rng(seed: int, kind: str, index: int) -> random.Random:
    return random.Random(f"hashview-fuzz/{seed}/{kind}/{index}")


def make_case(kind: str, seed: int, index: int, seeds: Seeds, folder: Path) -> Case:
    """Write case ``index`` of ``kind`` for ``seed`` into ``folder`` (emptied first)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = case_rng(seed, kind, index)
    case = Case(kind, seed, index, folder, [])
    {"library": _library_case, "model": _model_case, "sidecar": _sidecar_case}[kind](
        rng, seeds, case)
    return case


def _stages(rng: random.Random, structural_share: float) -> list[int]:
    """How many mutations of each stage, in order: 0 (structure-aware) before 1 (bytes)."""
    count = rng.choice((1, 1, 1, 2, 2, 3))
    return sorted(0 if rng.random() < structural_share else 1 for _ in range(count))


def _apply(rng: random.Random, choices: Sequence[Choice]) -> str:
    mutations, weights = zip(*choices)
    mutation = rng.choices(mutations, weights)[0]
    try:
        return mutation()
    except NOT_APPLICABLE as exc:
        return f"(a mutation found nothing to work on: {type(exc).__name__})"


def _mutate(rng: random.Random, case: Case, structural_share: float,
            structural: Sequence[Choice], byte_level: Sequence[Choice]) -> None:
    for stage in _stages(rng, structural_share):
        case.mutations.append(_apply(rng, structural if stage == 0 else byte_level))


def _library_case(rng: random.Random, seeds: Seeds, case: Case) -> None:
    library = case.folder / seeds.library.name
    shutil.copyfile(seeds.library, library)
    hot = seeds.hot_ranges(seeds.library.name)
    _mutate(rng, case, 0.6, [(lambda: mutate_hdf5(rng, library), 1)],
            [(lambda: mutate_file(rng, library, hot), 1)])
    info = ["info", str(library)] + (["--json"] if case.index % 3 != 1 else [])
    # no --json for index: its JSON report carries the failures on stdout, not stderr
    append = ["index", str(seeds.new_patch), "--library", str(library), "--device", "cpu"]
    case.argv = ([append] if case.index % 3 == 2 else []) + [
        info, ["search", str(library), str(seeds.query), *SEARCH_OPTIONS]]


def _sidecar_case(rng: random.Random, seeds: Seeds, case: Case) -> None:
    library = case.folder / seeds.library.name
    sidecar = case.folder / seeds.sidecar.name
    shutil.copyfile(seeds.library, library)
    shutil.copyfile(seeds.sidecar, sidecar)
    hot = seeds.hot_ranges(seeds.sidecar.name)
    _mutate(rng, case, 0.6, [
        (lambda: mutate_sidecar.edit_header(rng, sidecar), 3),
        (lambda: mutate_sidecar.corrupt_payload(rng, sidecar), 4),
        (lambda: mutate_sidecar.replace_payload(rng, sidecar, seeds.alternative_indexes), 1),
    ], [
        (lambda: mutate_file(rng, sidecar, hot), 3),
        (lambda: lie_about_length(rng, sidecar, mutate_sidecar.MAGIC_LENGTH), 1),
    ])
    case.argv = [["search", str(library), str(seeds.query), "--index", "ivf", *SEARCH_OPTIONS]]


def _model_case(rng: random.Random, seeds: Seeds, case: Case) -> None:
    model = case.folder / "model"
    model.mkdir()
    card, weights = model / seeds.card.name, model / seeds.weights.name
    shutil.copyfile(seeds.card, card)
    shutil.copyfile(seeds.weights, weights)
    signed = mutate_model.card_sha256(seeds.card)
    hot = seeds.hot_ranges(seeds.weights.name)
    _mutate(rng, case, 0.6, [
        (lambda: mutate_model.mutate_card(rng, card), 4),
        (lambda: mutate_model.mutate_header(rng, weights), 4),
        (lambda: mutate_model.special_values(rng, weights), 1),
    ], [
        (lambda: mutate_file(rng, weights, hot), 4),
        (lambda: mutate_file(rng, card), 2),
        (lambda: lie_about_length(rng, weights, 0), 1),
    ])
    if rng.random() < mutate_model.RESIGN_SHARE:
        resigned = mutate_model.resign(card, weights, signed)
        if resigned:
            case.mutations.append(resigned)
    library = case.folder / "indexed.h5"
    case.argv = [
        ["index", str(seeds.query), "--library", str(library), "--model", str(weights),
         "--device", "cpu"],
        ["search", str(library), str(seeds.query), "--model", str(weights), *SEARCH_OPTIONS]]

