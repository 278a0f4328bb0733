"""Train/test splits for training and evaluation (database = train, queries = test).

Protocols:

- ``"hatdh"`` (:func:`stratified_split`): image-level, per class: each class's images are
  shuffled with the seed and the first ``round(n * train_fraction)`` go to train (at least one
  image on each side when a class has two or more). HATDH: 70/30 per class, 5 seeds.
- ``"patient"`` (:func:`patient_split`): patient-level, so no patient is on both sides (DCH
  style). Each patient is put in the stratum of its majority label (ties: the smallest label);
  within a stratum patients are shuffled with the seed and taken for train until the stratum's
  train image count is closest to ``train_fraction`` of its images (at least one patient on each
  side when the stratum has two or more). Class balance is therefore approximate.

A :class:`Split` records the chosen file paths (POSIX, relative to the data root), protocol,
seed and root name; it is saved with each trained model (the model card's ``split``) so that
evaluation can reproduce its numbers on exactly the same images.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hashview.errors import HashViewError
from hashview.fileio import atomic_write_bytes, read_regular_file

# A split lists every image's path: 1 GiB would hold about ten million of them.
MAX_SPLIT_BYTES = 2**30

PROTOCOLS = ("hatdh", "patient")
SPLIT_FORMAT = 1


def _reason(error: OSError) -> str:
    text = error.strerror or str(error) or type(error).__name__
    return text[0].lower() + text[1:]


def _check_fraction(train_fraction: float) -> None:
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")


def _take_count(n: int, train_fraction: float) -> int:
    count = int(round(n * train_fraction))
    return min(max(count, 1), n - 1) if n >= 2 else count


def stratified_split(labels: Sequence, train_fraction: float = 0.7,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-class random split: sorted ``(train_idx, test_idx)`` index arrays."""
    _check_fraction(train_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):  # sorted: the draw order does not depend on input order
        members = rng.permutation(np.flatnonzero(labels == label))
        count = _take_count(len(members), train_fraction)
        train.append(members[:count])
        test.append(members[count:])
    return (np.sort(np.concatenate(train)).astype(np.int64) if train else np.zeros(0, np.int64),
            np.sort(np.concatenate(test)).astype(np.int64) if test else np.zeros(0, np.int64))


def patient_split(labels: Sequence, patients: Sequence, train_fraction: float = 0.7,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patient-level split stratified by each patient's majority label (see module notes)."""
    _check_fraction(train_fraction)
    labels = [str(label) for label in labels]
    patients = [None if p is None else str(p) for p in patients]
    if len(labels) != len(patients):
        raise ValueError("labels and patients must have the same length")
    if any(p is None or p == "" for p in patients):
        raise ValueError("every image needs a patient id for a patient-level split")
    images = defaultdict(list)
    for index, patient in enumerate(patients):
        images[patient].append(index)
    strata = defaultdict(list)
    for patient in sorted(images):
        counts = Counter(labels[i] for i in images[patient])
        top = max(counts.values())
        strata[min(label for label, n in counts.items() if n == top)].append(patient)
    rng = np.random.default_rng(seed)
    train_patients = set()
    for stratum in sorted(strata):
        members = [strata[stratum][i] for i in rng.permutation(len(strata[stratum]))]
        sizes = np.cumsum([len(images[p]) for p in members])
        target = sizes[-1] * train_fraction
        count = int(np.argmin(np.abs(sizes - target))) + 1  # patients taken for train
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        train_patients.update(members[:count])
    in_train = np.array([p in train_patients for p in patients], dtype=bool)
    return np.flatnonzero(in_train).astype(np.int64), np.flatnonzero(~in_train).astype(np.int64)


@dataclass
class Split:
    """The images of one train/test split, by path relative to the data root."""

    protocol: str
    seed: int
    data_root: str  # the data folder's name (not its full path), e.g. "kather2016_subset"
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    train_fraction: float = 0.7
    format: int = SPLIT_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Split":
        try:
            return cls(protocol=str(data["protocol"]), seed=int(data["seed"]),
                       data_root=str(data["data_root"]),
                       train=[str(p) for p in data["train"]],
                       test=[str(p) for p in data["test"]],
                       train_fraction=float(data.get("train_fraction", 0.7)),
                       format=int(data.get("format", SPLIT_FORMAT)))
        except (KeyError, TypeError, ValueError) as error:
            raise HashViewError(None, f"not a split description ({error!r})") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "Split":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise HashViewError(None, f"not a split file (invalid JSON: {error.msg})") from None
        except UnicodeDecodeError:
            raise HashViewError(None, "not a split file (not UTF-8 text)") from None
        except RecursionError:
            raise HashViewError(None, "not a split file (JSON nested too deeply)") from None
        if not isinstance(data, dict):
            raise HashViewError(None, "not a split file (expected a JSON object)")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the split as JSON, atomically: a failed write (disk full...) leaves the file
        that was there, never an empty or cut one; the error is one line naming the file."""
        try:
            atomic_write_bytes(path, self.to_json().encode("utf-8"))
        except OSError as error:
            raise HashViewError(path, f"cannot write split ({_reason(error)})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        try:
            text = read_regular_file(path, MAX_SPLIT_BYTES)
        except OSError as error:
            raise HashViewError(path, f"cannot read split: {error.strerror or error}") from None
        try:
            return cls.from_json(text)
        except HashViewError as error:
            raise HashViewError(path, error.reason) from None

    def indices(self, relative_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(train_idx, test_idx)`` into ``relative_paths`` (a scanned data folder).

        Raises HashViewError naming the first split file missing from the folder.
        """
        position = {path: i for i, path in enumerate(relative_paths)}
        result = []
        for names in (self.train, self.test):
            missing = [name for name in names if name not in position]
            if missing:
                raise HashViewError(missing[0], f"listed in the {self.protocol} split (seed "
                                                f"{self.seed}) but not found in the data folder "
                                                f"({len(missing)} missing)")
            result.append(np.array(sorted(position[name] for name in names), dtype=np.int64))
        return result[0], result[1]


def make_split(relative_paths: Sequence[str], labels: Sequence, data_root: str,
               protocol: str = "hatdh", seed: int = 0, train_fraction: float = 0.7,
               patients: Optional[Sequence] = None) -> Split:
    """Build a :class:`Split` of the given files with ``protocol`` ("hatdh" or "patient")."""
    if protocol == "hatdh":
        train, test = stratified_split(labels, train_fraction, seed)
    elif protocol == "patient":
        if patients is None:
            raise ValueError("the patient protocol needs patient ids")
        train, test = patient_split(labels, patients, train_fraction, seed)
    else:
        raise ValueError(f"unknown split protocol {protocol!r} (use {' or '.join(PROTOCOLS)})")
    return Split(protocol=protocol, seed=int(seed), data_root=data_root,
                 train=[relative_paths[i] for i in train], test=[relative_paths[i] for i in test],
                 train_fraction=float(train_fraction))
