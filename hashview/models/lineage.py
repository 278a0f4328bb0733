"""What a model has seen: the data folders of its training and of its ``init_from`` ancestors.

An evaluation tags each result by how the model met the data (:func:`exposure`): "in-set"
(held-out images of a set it was trained on), "new patients" (a patient-level split of such a
set) or "zero-shot" (a set it never saw, through its ancestors too). A start's file may be gone
where the model is used (a work folder, another machine), so a run records what its start had
seen in its own card (:func:`start_record`, under ``training.init_from.seen``); only a card
whose missing ancestor left no such record gives "unknown".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hashview.errors import HashViewError
from hashview.splits import Split

IN_SET, NEW_PATIENTS, ZERO_SHOT, UNKNOWN = "in-set", "new patients", "zero-shot", "unknown"


def _ancestor_card(reference: str):
    """The card of an ``init_from`` model (installed name or path), or None."""
    from hashview.models import list_models
    from hashview.models.cards import ModelCard
    for card in list_models():
        if card.name == reference:
            return card
    path = Path(reference)
    card_path = path.with_suffix(".json")
    if card_path.is_file():
        try:
            return ModelCard.read(card_path)
        except HashViewError:
            return None
    return None


def _training(card) -> dict:
    return card.training if isinstance(card.training, dict) else {}


def _init_from(card) -> Optional[str]:
    training = _training(card)
    config = training.get("config") if isinstance(training.get("config"), dict) else {}
    ancestor = config.get("init_from") or training.get("init_from")
    if isinstance(ancestor, dict):  # the run's summary of its start (hashview.training.init)
        ancestor = ancestor.get("model")
    return str(ancestor) if ancestor else None


def lineage(card) -> tuple[list, Optional[str]]:
    """The card and its ``init_from`` ancestors, nearest first, and the reference of an
    ancestor that cannot be found (None when the chain is complete)."""
    cards, seen = [card], {_identity(card)}
    while (reference := _init_from(cards[-1])) is not None:
        parent = _ancestor_card(reference)
        if parent is None:
            return cards, reference
        if _identity(parent) in seen:  # a loop in hand-edited cards: stop, it adds nothing new
            break
        cards.append(parent)
        seen.add(_identity(parent))
    return cards, None


def _identity(card) -> tuple:
    """Name and checksum: a model refitted from an earlier stage of itself keeps its name
    (a recipe's hash-layer refit, a retrain from the last version), and that stage's data
    still count."""
    return card.name, card.sha256


def _trained_on(card) -> set[str]:
    training = _training(card)
    names = {str(split["data_root"]) for split in recorded_splits(card)
             if split.get("data_root")}
    for key in ("config", "data"):
        source = training.get(key) if isinstance(training.get(key), dict) else {}
        for field in ("dataset", "data_root"):
            if source.get(field):
                names.add(Path(str(source[field])).name)
    return names


def recorded_splits(card) -> list[dict]:
    """The training splits a card records: its ``split`` and, for a model trained on several
    labelled sets at once (or an encoder that saw their images), each of
    ``training["splits"]``."""
    extra = _training(card).get("splits")
    extra = extra if isinstance(extra, list) else []
    return [s for s in [card.split, *extra] if isinstance(s, dict)]


def _saved_record(card) -> Optional[dict]:
    """What ``card``'s start had seen, as its run recorded it (:func:`start_record`), or None
    when the card has no such record or a malformed one (then its data are unknown)."""
    summary = _training(card).get("init_from")
    seen = summary.get("seen") if isinstance(summary, dict) else None
    if not isinstance(seen, dict):
        return None
    datasets, splits = seen.get("datasets"), seen.get("splits")
    if not (isinstance(datasets, list) and all(isinstance(d, str) for d in datasets)
            and isinstance(splits, list) and all(isinstance(s, dict) for s in splits)):
        return None
    return {"datasets": datasets, "splits": splits}


def _missing_record(cards: list, missing: Optional[str]) -> Optional[dict]:
    """For a chain cut at ``missing``, the record the last card found keeps of it."""
    return _saved_record(cards[-1]) if missing else None


def start_record(card) -> dict:
    """What a run started from ``card`` records of it (``training.init_from.seen``): the data
    folders it and its ancestors were trained on, and their recorded training splits, so that
    the new model's exposure and held-out queries stay right when the start's file is gone."""
    return {"datasets": sorted(seen_datasets(card)), "splits": _lineage_splits(card)}


def _lineage_splits(card) -> list[dict]:
    cards, missing = lineage(card)
    record = _missing_record(cards, missing)
    return [s for c in cards for s in recorded_splits(c)] + (record["splits"] if record else [])


def trained_files(card) -> set[str]:
    """"DATA_ROOT/relative/path" of every image the model and its ``init_from`` ancestors were
    trained on, as their cards' training splits record them (empty when none is recorded)."""
    return {f"{split['data_root']}/{path}" for split in _lineage_splits(card)
            if split.get("data_root") and isinstance(split.get("train"), list)
            for path in split["train"] if isinstance(path, str)}


def seen_datasets(card) -> set[str]:
    """Names of the data folders the model (or an ``init_from`` ancestor) was trained on.

    An ancestor that cannot be found, of which the card keeps no record, adds
    ``"?<reference>"``: its data are unknown.
    """
    cards, missing = lineage(card)
    names = set().union(*(_trained_on(c) for c in cards))
    if missing:
        record = _missing_record(cards, missing)
        names |= set(record["datasets"]) if record else {f"?{missing}"}
    return names


def lineage_split(card, dataset_name: str) -> Optional[Split]:
    """The training split recorded for ``dataset_name`` by the card or its nearest ancestor
    that has one: evaluating a fine-tuned model on it keeps the ancestor's training images
    (patients) out of the queries."""
    for split in _lineage_splits(card):
        if split.get("data_root") == dataset_name and split.get("train"):
            try:
                return Split.from_dict(split)
            except HashViewError:
                continue
    return None


def exposure(card, dataset_name: str, protocol: str = "hatdh") -> str:
    """"in-set", "new patients", "zero-shot" or "unknown" for ``card`` on ``dataset_name``."""
    if not getattr(card, "trained", True):
        return ZERO_SHOT
    seen = seen_datasets(card)
    if dataset_name in seen:
        return NEW_PATIENTS if protocol == "patient" else IN_SET
    return UNKNOWN if any(name.startswith("?") for name in seen) else ZERO_SHOT
