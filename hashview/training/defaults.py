"""What ``hashview train`` starts from and with which recipe when the user says nothing.

A small folder of a user's own patches (100-200 tiles) is too little to train a hashing network
from random weights: measured runs from scratch collapsed to 1-29 distinct codes over 130 tiles.
So a run starts by default from a trained general model of its architecture (the table below,
the one place to change it) and takes that model's own training recipe (input size, batch size,
epochs, loss knobs, from its card's ``training.config``): the start's features apply only at
the input size it was trained at. Anything the user sets explicitly wins.
"""

from __future__ import annotations

from typing import Optional

# The trained model each architecture starts from (a bundled or installed model name).
# Architectures not listed train from scratch (and the run says so).
DEFAULT_START = {"mth": "mth-64-general", "hatdh": "hatdh-64-general", "dch": "dch-64-general"}

# Fine-tuning a trained start on a small folder: at most this many epochs unless told. The
# starts' own recipes (40-45 epochs over 184 Kather tiles) took 40 s an epoch for MTH on 90
# tiles on 2 shared CPU cores, ~25 min a run; a user's folder run must take minutes. The
# held-out report says whether the shorter run helped (benchmarks/own_folder.py measures it).
FINE_TUNE_MAX_EPOCHS = 10

# How a run fine-tunes a start on a small folder, over the start's own recipe (measured in
# docs/training.md, "Own folders"): see there for the routes tried and by how much. Refitting
# only the hash layer on the start's features (training.head_fit) is the one route that beat
# the bundled models as they are; whole-network recipes did not.
# A start whose codes do not come from one linear layer (HashingNet.hash_head is None: DAFH,
# LGFFEM) trains the whole network instead.
FINE_TUNE_RECIPE: dict = {"method": "head"}
# Whether a run picks its start among the bundled models of its architecture and code length
# by their retrieval as they are on an inner validation part of the training part
# (inner_val_fraction of it, else CHOOSE_START_FRACTION).
CHOOSE_START = False
CHOOSE_START_FRACTION = 0.3

# TrainConfig fields taken over from the start model's recipe. Not taken: what names the run
# (name, dataset, seed, device, bits), where the start itself started (init_from), and the
# step count of another folder's size (steps_per_epoch).
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
                 "augment", "augment_options", "sampler", "triplet_mode", "normalise_by_bits",
                 "lambda1", "lambda2", "lambda3", "beta", "aux_ce_weight", "label_smoothing",
                 "ema_decay", "gamma", "pretrain_epochs", "objective_options", "arch_kwargs")


def start_model_name(arch: str, init_from: Optional[str] = None,
                     from_scratch: bool = False) -> Optional[str]:
    """The model a run of ``arch`` starts from: ``init_from`` if given, none from scratch,
    else the architecture's default (None when it has none)."""
    if init_from:
        return str(init_from)
    if from_scratch:
        return None
    return DEFAULT_START.get(str(arch).lower())


def start_recipe(start) -> dict:
    """TrainConfig options of the start model's own training run (its card), and its input
    size (its features were learnt at that scale). ``start``: the loaded start model."""
    start_card = start.card
    config = (start_card.training or {}).get("config") or {}
    recipe = {k: config[k] for k in RECIPE_FIELDS if k in config}
    recipe["input_size"] = int(start_card.input_size)
    if recipe.get("epochs", 0) > FINE_TUNE_MAX_EPOCHS:
        recipe["epochs"] = FINE_TUNE_MAX_EPOCHS
        recipe.pop("pretrain_epochs", None)  # the start's stage split was for its own epochs
    has_head = start.net.hash_head() is not None
    tuned = {k: v for k, v in FINE_TUNE_RECIPE.items() if k != "method" or has_head}
    return {**recipe, **tuned}
