"""How a model does beyond the patches it was tuned on: other stains, other folders, other sets.

Protocols (all rank Hamming codes like :mod:`hashview.evaluation`, same metric keys):

- **cross-stain** (:func:`evaluate_cross_stain`): for each split of one labelled folder the
  database is the unchanged train part and the queries are the test part re-stained to another
  lab's H&E (:mod:`hashview.stain`). The in-set numbers of the same splits (unchanged queries)
  come with it, and per target the gap, in-set minus cross-stain, of mAP and vote accuracy.
- **cross-folder** (:func:`evaluate_cross_folder`): the database is every image of one labelled
  folder, the queries every image of another; queries whose class the database lacks are
  dropped and counted.

Every result says how the model met the data (:func:`exposure`): "in-set" (held-out images of a
set it was trained on), "new patients" (a patient-level split of a set it was trained on) or
"zero-shot" (a set it never saw, through ``init_from`` ancestors too; see
:mod:`hashview.models.lineage`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from hashview.errors import HashViewError
from hashview.evaluation import (DEFAULT_SEEDS, LabelledFolder, score_splits, as_loaded_model,
                                 choose_splits, encode_folder_split, encode_patches,
                                 load_dataset, normalised_note, score_ranking, summarise)
from hashview.models.lineage import exposure
from hashview.progress import ProgressCallback
from hashview.splits import Split

GAP_KEYS = ("map", "vote_accuracy@{k}")


# ---------------------------------------------------------------- cross-stain

def restained_patches(dataset: LabelledFolder, transfer, cache: Optional[dict] = None):
    """Every image of ``dataset`` re-stained by ``transfer`` (uint8 arrays at full size) and
    the transfer's counts; kept in ``cache`` (a dict the caller holds, in memory) per target."""
    from hashview.slides.image_source import load_rgb_image
    key = (transfer.name, transfer.method, str(dataset.root))
    if cache is not None and key in cache:
        return cache[key]
    before = Counter(transfer.counts)
    images = [transfer.restain(np.asarray(load_rgb_image(entry.path)))
              for entry in dataset.entries]
    counts = {k: int(v) for k, v in (transfer.counts - before).items()}
    found = (images, counts)
    if cache is not None:
        cache[key] = found
    return found


def _tiles_of(images: Sequence[np.ndarray]):
    from PIL import Image

    from hashview.tiling import square_tile
    return lambda size: (square_tile(Image.fromarray(a), size) for a in images)


def _gap(in_set: dict, other: dict, vote_k: int) -> dict:
    keys = [key.format(k=vote_k) for key in GAP_KEYS]
    return {key: in_set[key] - other[key] for key in keys if key in in_set and key in other}


def fit_targets(targets: Mapping[str, Union[str, Path, object]], method: str = "macenko",
                sample: int = 16, seed: int = 0) -> dict:
    """``{name: StainTransfer}`` from ``{name: target path or StainTransfer}``."""
    from hashview.stain import StainTransfer, fit_stain_target
    return {name: t if isinstance(t, StainTransfer) else
            fit_stain_target(t, method, sample, seed, name=name) for name, t in targets.items()}


def evaluate_cross_stain(model, data_folder: Union[str, Path],
                         targets: Mapping[str, Union[str, Path, object]],
                         split: Union[Split, str, Path, None] = None, protocol: str = "hatdh",
                         seeds: Sequence[int] = DEFAULT_SEEDS, train_fraction: float = 0.7,
                         method: str = "macenko", k_list: Sequence[int] = (10, 100),
                         radius: int = 2, vote_k: int = 10, device="auto",
                         batch_size: Optional[int] = None,
                         progress: Optional[ProgressCallback] = None,
                         cache: Optional[dict] = None, stain_normaliser=None) -> dict:
    """In-set metrics and, per stain target, cross-stain metrics and the gap (see notes).

    ``targets`` maps a name to a target (image, ``SLIDE@x,y,w,h``, folder) or a fitted
    :class:`hashview.stain.StainTransfer`. Each image is encoded once as it is and once per
    target; ``cache`` (a dict) keeps the re-stained images between calls (e.g. across models).
    ``stain_normaliser`` (a fitted StainTransfer) re-stains every tile, database and
    (re-stained) queries alike, to its one reference before encoding.
    """
    if not targets:
        raise HashViewError(None, "no stain targets given")
    loaded = as_loaded_model(model)
    card, bits = loaded.card, int(loaded.card.bits)
    dataset = load_dataset(data_folder)
    splits, source, warnings = choose_splits(card, dataset, split, protocol, seeds,
                                             train_fraction)
    metric_args = dict(k_list=tuple(k_list), radius=radius, vote_k=vote_k)
    codes = encode_folder_split(loaded, dataset.entries, device, batch_size, progress,
                                stain_normaliser)
    in_set = score_splits(codes, dataset, splits, bits, metric_args, progress)
    per_target = {}
    for name, transfer in fit_targets(targets, method).items():
        images, counts = restained_patches(dataset, transfer, cache)
        query_codes = encode_patches(loaded, _tiles_of(images), len(images), device,
                                     batch_size, progress, stain_normaliser)
        scores = score_splits(codes, dataset, splits, bits, metric_args, progress, query_codes)
        per_target[name] = {"target": transfer.name, "method": transfer.method,
                            "restain": counts, "gap": _gap(in_set["mean"], scores["mean"], vote_k),
                            **scores}
    return {"kind": "cross-stain", "name": card.name, "arch": card.arch, "bits": bits,
            "trained": bool(card.trained), "exposure": exposure(card, dataset.name,
                                                                splits[0].protocol),
            "split_source": source, "warnings": warnings, "method": method,
            **normalised_note(stain_normaliser), "in_set": in_set, "targets": per_target}


# ---------------------------------------------------------------- cross-folder

def evaluate_cross_folder(model, database_folder: Union[str, Path],
                          query_folder: Union[str, Path], k_list: Sequence[int] = (10, 100),
                          radius: int = 2, vote_k: int = 10, seed: int = 0, device="auto",
                          batch_size: Optional[int] = None,
                          progress: Optional[ProgressCallback] = None,
                          stain_normaliser=None) -> dict:
    """Every image of ``query_folder`` whose class ``database_folder`` also has, ranked
    against every image of ``database_folder``; the others are dropped and counted.
    ``stain_normaliser`` re-stains both folders' images to its reference before encoding."""
    loaded = as_loaded_model(model)
    card, bits = loaded.card, int(loaded.card.bits)
    database, queries = load_dataset(database_folder), load_dataset(query_folder)
    shared = set(database.labels) & set(queries.labels)
    if not shared:
        classes = ", ".join(sorted(set(database.labels)))
        raise HashViewError(query_folder, "no class name in common with the database folder "
                                          f"{database.name} ({classes})")
    kept = [i for i, label in enumerate(queries.labels) if label in shared]
    dropped = Counter(label for label in queries.labels if label not in shared)
    metric_args = dict(k_list=tuple(k_list), radius=radius, vote_k=vote_k)
    db_codes = encode_folder_split(loaded, database.entries, device, batch_size, progress,
                                   stain_normaliser)
    query_codes = encode_folder_split(loaded, [queries.entries[i] for i in kept], device,
                                      batch_size, progress, stain_normaliser)
    scores = score_ranking(db_codes, database.labels, query_codes,
                           [queries.labels[i] for i in kept], bits, metric_args, seed)
    mean, std = summarise([scores])
    return {"kind": "cross-folder", "name": card.name, "arch": card.arch, "bits": bits,
            "trained": bool(card.trained),
            "database": {"data_root": database.name, "data_folder": str(database.root),
                         "n_images": len(database.paths),
                         "exposure": exposure(card, database.name)},
            "queries": {"data_root": queries.name, "data_folder": str(queries.root),
                        "n_images": len(queries.paths), "n_kept": len(kept),
                        "exposure": exposure(card, queries.name)},
            "shared_classes": sorted(shared), "dropped": dict(sorted(dropped.items())),
            "n_dropped": sum(dropped.values()), "seed": seed,
            **normalised_note(stain_normaliser),
            "mean": mean, "std": std, "splits": [scores]}
