"""Training hashing models (every architecture with an objective) on labelled patch folders.

``train(config, train_entries, out_dir, ...)`` is the core (see :mod:`hashview.training.loop`);
``train_from_folder`` is what the CLI calls: scan, split, train on the train part, and save the
split next to the model (``out_dir/split.json``, also embedded in the model card) so evaluation
can reproduce the test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hashview.errors import ModelError
from hashview.progress import ProgressCallback
from hashview.training.config import TrainConfig
from hashview.training.loop import TrainResult, check_resumable_folder, train

SPLIT_FILE = "split.json"

__all__ = ["TrainConfig", "TrainResult", "train", "train_from_folder", "SPLIT_FILE"]


def train_from_folder(data_folder, arch: str, bits: int, out_dir, epochs: int = 30,
                      batch_size: int = 64, lr: Optional[float] = None, seed: int = 0,
                      split_file=None, protocol: str = "hatdh",
                      progress: Optional[ProgressCallback] = None, resume: bool = False,
                      train_fraction: float = 0.7, **options) -> TrainResult:
    """Train ``arch``-``bits`` on the train part of a labelled patch folder.

    ``resume`` continues the run whose checkpoint is in ``out_dir`` (a ModelError when there is
    none). The split comes from ``split_file`` if given; else, when resuming, from
    ``out_dir/split.json`` of the interrupted run; else it is made with ``protocol`` ("hatdh":
    70/30 per class, image-level; "patient": patient-level, needs patient ids in labels.csv) and
    ``seed``.
    ``options`` are further :class:`TrainConfig` fields (``input_size``, ``device``,
    ``triplet_mode``, ``aux_ce_weight``, ...) or keys of the architecture's
    ``objective_options``; ``dataset`` defaults to the folder's name.
    """
    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.splits import Split

    out_dir = Path(out_dir)
    if resume:
        check_resumable_folder(out_dir)
    data = load_dataset(data_folder)
    saved = out_dir / SPLIT_FILE
    if split_file is None and resume and saved.is_file():
        split_file = saved
    if split_file is not None:
        split = Split.load(split_file)
    else:
        split = resolve_splits(data, None, protocol, [seed], train_fraction)[0]
    train_idx, _ = split.indices(data.paths)
    config = TrainConfig.from_options(arch=arch, bits=int(bits), epochs=int(epochs),
                                      batch_size=int(batch_size), lr=lr, seed=int(seed),
                                      **{"dataset": data.name, **options})
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(out_dir, f"cannot make the output folder ({exc.strerror or exc})") \
            from None
    split.save(saved)  # before training (atomically): a resumed run must find the same split
    return train(config, [data.entries[i] for i in train_idx], out_dir, progress=progress,
                 resume=resume, split=split.to_dict())
