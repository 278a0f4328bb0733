"""Evaluate a hashing model (or a reference baseline) on a labelled patch folder.

Protocol: the folder is split (:mod:`hashview.splits`) into a database (train) and queries
(test), both encoded with the model, and :func:`hashview.metrics.evaluate_codes` scores the
Hamming ranking. With several seeds the result holds every split's metrics and their mean and
sample standard deviation (ddof=1; 0 for one split). Codes do not depend on the split, so every
image is encoded once and reused across seeds.

Split choice: an explicit ``split`` (a :class:`Split` or the path of its JSON) wins; else the
model card's own ``split`` when it names this data folder (reproduces the training-time test
set); else ``protocol`` x ``seeds``. Evaluating a trained model on other splits of its own
training data leaks training images into the queries; the result then carries a warning.

Float descriptors (``code_kind="float"`` models such as LGFFEM) are ranked by cosine distance
with the same tie rules; their result also scores the **binarised variant**, the sign of each
dimension packed to one bit (``bits`` dims -> ``bits`` bits, 32x less storage than float32), on
the same splits, as ``binarised_*`` keys. ``bytes_per_code`` gives the storage of each.

Ties: the database is put in a seeded random order before ranking, so the deterministic
tie-break of :mod:`hashview.metrics` (by database index) acts as a reproducible random tie-break
(as in the calibration runs), never as one favouring the class listed first. ``map_tie_averaged``
(the expectation over all tie orders) is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from hashview.code_kinds import BINARY, FLOAT, code_kind, kind_of_encoded
from hashview.errors import HashViewError
from hashview.metrics import evaluate_codes, is_float_codes
from hashview.progress import ProgressCallback, report
from hashview.slides.folders import PatchEntry, scan_patch_folder
from hashview.splits import PROTOCOLS, Split, make_split

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
BASELINES = ("lsh-pixels",)
LSH_PIXEL_SIZE = 32


@dataclass
class LabelledFolder:
    """A scanned, fully labelled patch folder."""

    root: Path
    entries: list[PatchEntry]
    paths: list[str]  # POSIX paths relative to root, in scan order
    labels: list[str]
    patients: list[Optional[str]]

    @property
    def name(self) -> str:
        return self.root.name


def load_dataset(data_folder: Union[str, Path]) -> LabelledFolder:
    """Scan ``data_folder``; every image must have a label (class subfolder or labels.csv)."""
    root = Path(data_folder)
    if not root.exists():
        raise HashViewError(root, "data folder not found")
    entries = scan_patch_folder(root)
    unlabelled = [e for e in entries if e.label is None]
    if unlabelled:
        raise HashViewError(unlabelled[0].path, f"no label ({len(unlabelled)} unlabelled images; "
                                                "put images in class subfolders or list them "
                                                "in labels.csv)")
    paths = [e.path.relative_to(root).as_posix() for e in entries]
    return LabelledFolder(root, entries, paths, [str(e.label) for e in entries],
                        [e.patient_id for e in entries])


def resolve_splits(dataset: LabelledFolder, split: Union[Split, str, Path, None] = None,
                   protocol: str = "hatdh", seeds: Sequence[int] = DEFAULT_SEEDS,
                   train_fraction: float = 0.7) -> list[Split]:
    """The splits to evaluate: ``split`` alone, or one per seed of ``protocol``."""
    if split is not None:
        return [split if isinstance(split, Split) else Split.load(split)]
    if protocol not in PROTOCOLS:
        raise HashViewError(None, f"unknown split protocol {protocol!r} "
                                  f"(use {' or '.join(PROTOCOLS)})")
    if protocol == "patient" and any(not p for p in dataset.patients):
        raise HashViewError(dataset.root, "the patient protocol needs a patient_id for every "
                                          "image (labels.csv column patient_id)")
    if not seeds:
        raise HashViewError(None, "no seeds given")
    return [make_split(dataset.paths, dataset.labels, dataset.name, protocol, int(seed),
                       train_fraction, dataset.patients) for seed in seeds]


def _load_patches(entries: Sequence[PatchEntry], size: int):
    from hashview.tiling import load_patch  # imported lazily: keeps metrics-only use light
    for entry in entries:
        yield load_patch(entry.path, size)


def encode_folder_split(loaded_model, entries: Sequence[PatchEntry], device="auto",
                        batch_size: Optional[int] = None,
                        progress: Optional[ProgressCallback] = None,
                        stain_normaliser=None) -> np.ndarray:
    """Packed codes ``(len(entries), bits // 8)`` (float32 ``(len(entries), bits)`` descriptors
    for a float model); each patch is one tile at the card's size."""
    return encode_patches(loaded_model, lambda size: _load_patches(entries, size), len(entries),
                          device, batch_size, progress, stain_normaliser)


def encode_patches(loaded_model, patches: Callable[[int], Iterable], count: int, device="auto",
                   batch_size: Optional[int] = None,
                   progress: Optional[ProgressCallback] = None,
                   stain_normaliser=None) -> np.ndarray:
    """Codes of ``count`` patches; ``patches(input_size)`` yields them as tiles of that side
    (so callers holding images in memory, e.g. re-stained ones, encode them like files).

    ``stain_normaliser`` (a :class:`hashview.stain.StainTransfer`) re-stains every tile, at the
    model's input size, to its reference before encoding."""
    from hashview.encode import Encoder
    encoder = Encoder(loaded_model, device=device, batch_size=batch_size,
                      stain_normaliser=stain_normaliser)
    parts = list(encoder.encode_batches(patches(encoder.input_size), progress=progress,
                                        total=count))
    if not parts:
        return code_kind(encoder.code_kind).empty_encoded(encoder.bits)
    return np.concatenate(parts, axis=0)


def _binarised_scores(db_codes: np.ndarray, db_labels: np.ndarray, query_codes: np.ndarray,
                      query_labels: np.ndarray, bits: int, metric_args: dict) -> dict:
    """Scalar metrics of the sign-binarised descriptors, keys prefixed ``binarised_``."""
    from hashview.encode import pack_codes
    scores = evaluate_codes(pack_codes(db_codes), db_labels, pack_codes(query_codes),
                            query_labels, bits, **metric_args)
    return {f"binarised_{k}": v for k, v in scores.items()
            if isinstance(v, float) and k != "curves"}


def score_ranking(db_codes: np.ndarray, db_labels: np.ndarray, query_codes: np.ndarray,
                  query_labels: np.ndarray, bits: int, metric_args: dict, seed: int) -> dict:
    """:func:`evaluate_codes` with the database in a ``seed``-ed random order: Hamming ties are
    then broken at random (but reproducibly), not in favour of whichever class the folder lists
    first. Float descriptors also get their binarised variant's metrics."""
    order = np.random.default_rng(seed).permutation(len(db_codes))
    db_codes, db_labels = db_codes[order], np.asarray(db_labels)[order]
    query_labels = np.asarray(query_labels)
    scores = evaluate_codes(db_codes, db_labels, query_codes, query_labels, bits, **metric_args)
    if is_float_codes(db_codes):
        scores.update(_binarised_scores(db_codes, db_labels, query_codes, query_labels, bits,
                                        metric_args))
    return scores


def summarise(per_split: Sequence[dict]) -> tuple[dict, dict]:
    """Mean and sample std (ddof=1; 0 for one split) of every numeric metric."""
    keys = [k for k, v in per_split[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("bits",
                                                                                     "seed")]
    mean, std = {}, {}
    for key in keys:
        values = np.array([float(s[key]) for s in per_split])
        mean[key] = float(values.mean())
        std[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def _mean_curves(per_split: Sequence[dict]) -> Optional[dict]:
    grids = [s["curves"]["n"] for s in per_split]
    if any(g != grids[0] for g in grids):
        return None  # different database sizes (patient splits): see each split's curves
    return {"n": grids[0],
            "precision": np.mean([s["curves"]["precision"] for s in per_split], 0).tolist(),
            "recall": np.mean([s["curves"]["recall"] for s in per_split], 0).tolist()}


def score_splits(codes: np.ndarray, dataset: LabelledFolder, splits: Sequence[Split], bits: int,
                 metric_args: dict, progress: Optional[ProgressCallback],
                 query_codes: Optional[np.ndarray] = None) -> dict:
    """Metrics per split: the train part of ``codes`` is the database, the test part of
    ``query_codes`` (default ``codes``; e.g. the same images re-stained) the queries."""
    labels = np.asarray(dataset.labels)
    query_codes = codes if query_codes is None else query_codes
    per_split = []
    report(progress, "evaluating", 0, len(splits))
    for number, split in enumerate(splits, 1):
        train, test = split.indices(dataset.paths)
        train, test = np.asarray(train), np.asarray(test)
        scores = score_ranking(codes[train], labels[train], query_codes[test], labels[test], bits,
                               metric_args, split.seed)
        per_split.append({"seed": split.seed, "protocol": split.protocol, **scores})
        report(progress, "evaluating", number, len(splits), f"seed {split.seed}")
    mean, std = summarise(per_split)
    kind = kind_of_encoded(codes)
    storage = {"code_kind": kind.name, "bytes_per_code": kind.encoded_bytes(bits)}
    if kind is FLOAT:  # descriptors are also scored binarised (see score_ranking)
        storage["binarised_bytes_per_code"] = BINARY.encoded_bytes(bits)
    return {"data_root": dataset.name, "data_folder": str(dataset.root),
            "n_images": len(dataset.paths), "n_classes": len(set(dataset.labels)),
            "protocol": splits[0].protocol, "seeds": [s.seed for s in splits], "bits": bits,
            **storage, "mean": mean, "std": std, "curves": _mean_curves(per_split),
            "splits": per_split}


def as_loaded_model(model):
    """A LoadedModel as it is, or a model name/path loaded."""
    from hashview.models import load_model
    from hashview.models.store import LoadedModel
    return model if isinstance(model, LoadedModel) else load_model(model)


def choose_splits(card, dataset: LabelledFolder, split: Union[Split, str, Path, None] = None,
                  protocol: str = "hatdh", seeds: Sequence[int] = DEFAULT_SEEDS,
                  train_fraction: float = 0.7) -> tuple[list[Split], str, list[str]]:
    """The splits for ``card`` on ``dataset`` (see the module notes), where they came from
    ("argument", "model card" or "protocol") and warnings."""
    warnings = []
    source = "argument" if split is not None else "protocol"
    card_split = card.split if isinstance(card.split, dict) and card.split.get("train") else None
    if split is None and card_split and card_split.get("data_root") == dataset.name:
        split, source = Split.from_dict(card_split), "model card"
    elif split is None and card.trained and card_split:
        warnings.append(f"model {card.name} was trained on {card_split.get('data_root')!r}; "
                        "if that is this data, queries may include training images")
    return resolve_splits(dataset, split, protocol, seeds, train_fraction), source, warnings


def evaluate_model(model, data_folder: Union[str, Path],
                   split: Union[Split, str, Path, None] = None, protocol: str = "hatdh",
                   seeds: Sequence[int] = DEFAULT_SEEDS, train_fraction: float = 0.7,
                   k_list: Sequence[int] = (10, 100), radius: int = 2, vote_k: int = 10,
                   device="auto", batch_size: Optional[int] = None,
                   progress: Optional[ProgressCallback] = None,
                   stain_normaliser=None) -> dict:
    """Retrieval metrics of ``model`` (a LoadedModel, or a name/path for load_model).

    Returns a JSON-able dict: ``mean``/``std`` over splits, ``splits`` (each split's metrics,
    see :func:`hashview.metrics.evaluate_codes`), ``curves``, the model's name/arch/bits,
    ``split_source`` ("argument", "model card" or "protocol") and ``warnings``.
    ``stain_normaliser`` (a :class:`hashview.stain.StainTransfer`) re-stains every image,
    database and queries alike, to one reference before encoding; ``stain_normalised`` then
    names it and counts how each image was treated.
    """
    loaded = as_loaded_model(model)
    card = loaded.card
    dataset = load_dataset(data_folder)
    splits, source, warnings = choose_splits(card, dataset, split, protocol, seeds,
                                             train_fraction)
    codes = encode_folder_split(loaded, dataset.entries, device, batch_size, progress,
                                stain_normaliser)
    result = score_splits(codes, dataset, splits, int(card.bits),
                           dict(k_list=tuple(k_list), radius=radius, vote_k=vote_k), progress)
    return {"kind": "model", "name": card.name, "arch": card.arch, "trained": bool(card.trained),
            "split_source": source, "warnings": warnings,
            **normalised_note(stain_normaliser), **result}


def normalised_note(stain_normaliser) -> dict:
    """``{"stain_normalised": summary}`` for a result made with a normaliser, else ``{}``."""
    return {} if stain_normaliser is None else {"stain_normalised": stain_normaliser.summary()}


def pixel_features(entries: Sequence[PatchEntry], size: int = LSH_PIXEL_SIZE,
                   progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """``(N, size*size*3)`` float32 raw RGB pixels in [0, 1] (each patch resized to size)."""
    features = np.empty((len(entries), size * size * 3), dtype=np.float32)
    for i, image in enumerate(_load_patches(entries, size)):
        features[i] = np.asarray(image, dtype=np.float32).reshape(-1) / 255.0
        if (i + 1) % 64 == 0 or i + 1 == len(entries):
            report(progress, "loading", i + 1, len(entries))
    return features


def lsh_codes(features: np.ndarray, center: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Sign random projections: bit j = 1 iff (x - center) . w_j > 0, w_j ~ N(0, I) seeded."""
    from hashview.encode import pack_codes
    planes = np.random.default_rng(seed).standard_normal((features.shape[1], bits))
    return pack_codes((features - center) @ planes.astype(np.float32))


def evaluate_baseline(name: str = "lsh-pixels", data_folder: Union[str, Path] = "",
                      bits: int = 64, split: Union[Split, str, Path, None] = None,
                      protocol: str = "hatdh", seeds: Sequence[int] = DEFAULT_SEEDS,
                      train_fraction: float = 0.7, k_list: Sequence[int] = (10, 100),
                      radius: int = 2, vote_k: int = 10, pixel_size: int = LSH_PIXEL_SIZE,
                      progress: Optional[ProgressCallback] = None) -> dict:
    """A reference row: ``"lsh-pixels"`` = LSH on raw ``pixel_size``^2 RGB pixels.

    Per split: pixels are centred on the database (train) mean, then hashed with ``bits``
    Gaussian random hyperplanes drawn from the split's seed. Same result layout as
    :func:`evaluate_model`.
    """
    if name not in BASELINES:
        raise HashViewError(None, f"unknown baseline {name!r} (available: {', '.join(BASELINES)})")
    if bits <= 0 or bits % 8:
        raise HashViewError(None, f"bits must be a positive multiple of 8, got {bits}")
    dataset = load_dataset(data_folder)
    splits = resolve_splits(dataset, split, protocol, seeds, train_fraction)
    features = pixel_features(dataset.entries, pixel_size, progress)
    per_split = []
    metric_args = dict(k_list=tuple(k_list), radius=radius, vote_k=vote_k)
    for split_ in splits:
        train, test = split_.indices(dataset.paths)
        codes = lsh_codes(features, features[train].mean(axis=0), bits, split_.seed)
        one = score_splits(codes, dataset, [split_], bits, metric_args, None)
        per_split.extend(one["splits"])
    mean, std = summarise(per_split)
    return {"kind": "baseline", "name": name, "arch": name, "trained": False,
            "split_source": "argument" if split is not None else "protocol", "warnings": [],
            "data_root": dataset.name, "data_folder": str(dataset.root),
            "n_images": len(dataset.paths), "n_classes": len(set(dataset.labels)),
            "protocol": splits[0].protocol, "seeds": [s.seed for s in splits], "bits": bits,
            "mean": mean, "std": std, "curves": _mean_curves(per_split), "splits": per_split}


def plot_curves(result: dict, out_png: Union[str, Path]) -> Path:
    """Precision@n and precision-recall plots of an evaluation result, as one PNG.

    Needs matplotlib, which HashView does not depend on; raises HashViewError when it is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HashViewError(out_png, "plotting needs matplotlib, which is not installed "
                                     "(pip install matplotlib); the numbers are in the result "
                                     "JSON") from None
    curves = result.get("curves") or result["splits"][0]["curves"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    unit = code_kind(result.get("code_kind") or BINARY.name).unit
    label = f"{result.get('name')} ({result.get('bits')} {unit})"
    left.plot(curves["n"], curves["precision"], label=label)
    left.set(xlabel="number of images retrieved", ylabel="precision", title="Precision@n")
    right.plot(curves["recall"], curves["precision"], marker=".", label=label)
    right.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    out_png = Path(out_png)
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return out_png
