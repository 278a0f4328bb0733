"""Training hashing models (every architecture with an objective) on labelled patch folders.

``train(config, train_entries, out_dir, ...)`` is the core (see :mod:`hashview.training.loop`);
``train_from_folder`` is what the CLI and the app call (see
:mod:`hashview.training.folder_run`): start from a trained model of the architecture, a
held-out run and its report, then the final model on every patch. The split is saved next to
the model (``out_dir/split.json``) so evaluation can reproduce the held-out set.
"""

from __future__ import annotations

from hashview.training.config import TrainConfig
from hashview.training.folder_run import SPLIT_FILE, train_from_folder
from hashview.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train", "train_from_folder", "SPLIT_FILE"]
