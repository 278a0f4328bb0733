"""``TrainConfig``: every knob of a training run, JSON-serialisable (stored in checkpoints and in
the model card's ``training.config``).

``None`` fields mean "the documented default for this architecture"; :meth:`TrainConfig.resolved`
fills them in from the architecture's objective (:mod:`hashview.training.objectives`), and the
resolved config is what gets recorded. HATDH and DCH knobs are top-level fields (older model
cards store them so); later architectures keep theirs in ``objective_options``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional, Union

from hashview.errors import ModelError
from hashview.models.card_limits import (PLAIN_NAME_RULE, architecture_problem, is_int,
                                         is_number, is_plain_name, plain_name, shown)
from hashview.training.losses import TRIPLET_MODES
from hashview.training.objectives import objective_class

OPTIMISERS = ("adam", "adamw", "adadelta")
# HATDH: Adam 1e-3; Keras Adadelta default 1.0; AdamW (LGFFEM's paper) at Adam's rate. AdamW
# applies `weight_decay` decoupled from the gradient; Adam adds it to the gradient (L2).
METHODS = ("network", "head")
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "adadelta": 1.0}


def default_model_name(arch: str, bits: int, dataset: str) -> str:
    """ARCH-BITS-DATASET as a plain name, with ``-own`` where a bundled model has that name
    (e.g. DCH 64 bits on a folder called idc)."""
    from hashview.models.store import unbundled_name

    return unbundled_name(plain_name(f"{arch}-{bits}-{dataset}"))


@dataclass
class TrainConfig:
    arch: str = "hatdh"
    bits: int = 64
    epochs: int = 30                      # total, DCH stages included
    batch_size: int = 64                  # images per batch (HATDH: P classes x K images)
    lr: Optional[float] = None            # None: 1e-3 for Adam, 1.0 for Adadelta
    seed: int = 0
    weight_decay: Optional[float] = None  # None: the objective's (0 for all but LGFFEM)
    input_size: Optional[int] = None      # None: the objective's (HATDH 224, DCH 128...)
    device: str = "auto"
    dataset: str = "kather"               # picks the paper's HATDH margins (kather | breakhis)
    name: Optional[str] = None            # model file stem; None: ARCH-BITS-DATASET
    optimizer: str = "auto"               # "auto": the objective's (Adam for every arch)
    schedule: str = "cosine"              # "cosine" (per step, to 0 per stage) | "constant"
    augment: bool = True
    augment_options: dict = field(default_factory=dict)  # AugmentConfig fields (colour, zoom)
    sampler: str = "auto"                 # "balanced" (P x K) | "shuffle"; auto: the objective's
    steps_per_epoch: Optional[int] = None  # None: ~one pass over the training images
    amp: bool = True                      # fp16 autocast + GradScaler on CUDA (ignored on CPU)
    arch_kwargs: dict = field(default_factory=dict)
    objective_options: dict = field(default_factory=dict)  # the objective's own knobs
    # A trained model (name or .safetensors path) of the same arch and bits to start from:
    # every weight whose name and shape match is copied (class heads of another label set
    # are not), see hashview.training.init.
    init_from: Optional[str] = None
    # HATDH loss (None: paper values for `dataset`)
    triplet_mode: str = "random"          # "random" (paper) | "batch-hard" | "semi-hard"
    normalise_by_bits: bool = False
    lambda1: Optional[float] = None
    lambda2: Optional[float] = None
    lambda3: Optional[float] = None
    beta: Optional[float] = None
    aux_ce_weight: float = 0.0            # our addition: CE of a linear head on the tanh codes
    # Regularisers for small data (our additions, off by default)
    label_smoothing: float = 0.0          # on every cross-entropy (DCH stages, HATDH aux CE)
    ema_decay: float = 0.0                # > 0: the saved model is an EMA of the weights
    # DCH
    gamma: float = 1e-4
    pretrain_epochs: Optional[int] = None  # stage 1 epochs (of `epochs`); None: epochs // 3
    # Fine-tuning a small folder (hashview.training.defaults): keep the epoch whose weights
    # score the best validation mAP, epoch 0 (the start as it is) included; train_from_folder
    # sets the validation part aside from the training part (`inner_val_fraction` of it).
    keep_best_epoch: bool = False
    inner_val_fraction: float = 0.0
    stop_epoch: Optional[int] = None      # end after this many epochs, the schedule unchanged
    freeze_children: int = 0              # the net's first N top-level modules are not trained
    # "network": train the net (every unfrozen layer) for `epochs`; "head": keep the net as
    # `init_from` made it and refit only its hash layer on its features (training.head_fit)
    method: str = "network"

    def model_name(self) -> str:
        return self.name or default_model_name(self.arch, self.bits, self.dataset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_options(cls, **options) -> "TrainConfig":
        """Fields by keyword; any other keyword is an ``objective_options`` key (so that
        ``--option margin=0.3`` works for every architecture)."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in options.items() if k in known}
        extra = {k: v for k, v in options.items() if k not in known}
        if extra:
            fields["objective_options"] = {**fields.get("objective_options", {}), **extra}
        return cls(**fields)

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None``/"auto" default filled in; raises ModelError if invalid."""
        problem = self._type_problem()  # before any value is used (options come as text/JSON)
        if problem:
            raise ModelError(None, f"invalid training config: {problem}")

        arch = self.arch.lower()
        objective = objective_class(arch)
        optimizer = objective.optimizer if self.optimizer == "auto" else self.optimizer
        if optimizer not in OPTIMISERS:
            raise ModelError(None, f"unknown optimizer {optimizer!r} (use {OPTIMISERS})")
        unknown = sorted(set(self.objective_options) - set(objective.options))
        if unknown:
            raise ModelError(None, f"invalid training config: {arch} has no option "
                                   f"{unknown[0]!r} (options: {sorted(objective.options)})")
        own = optimizer == objective.optimizer  # the objective's lr / decay go with its optimizer
        cfg = dataclasses.replace(
            self, arch=arch, optimizer=optimizer,
            sampler=objective.sampler if self.sampler == "auto" else self.sampler,
            lr=(float(self.lr) if self.lr is not None
                else objective.lr if own and objective.lr is not None
                else DEFAULT_LR[optimizer]),
            weight_decay=(float(self.weight_decay) if self.weight_decay is not None
                          else objective.weight_decay if own else 0.0),
            input_size=self.input_size or objective.input_size,
            arch_kwargs=dict(self.arch_kwargs),
            objective_options={**objective.options, **self.objective_options})
        # DCH's stage split is a top-level field (model cards store it); None for the others.
        cfg = dataclasses.replace(cfg, **{"pretrain_epochs": None, **objective.resolve(cfg)})
        cfg._validate()
        reason = objective.check(cfg)
        if reason:
            raise ModelError(None, f"invalid training config: {reason}")
        return cfg

    def _type_problem(self) -> Optional[str]:
        """The first field whose value is not of its annotated type, or None."""
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            value, hint = getattr(self, item.name), hints[item.name]
            allowed = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
            if not any(_is_of(value, kind) for kind in allowed):
                names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
                return f"{item.name} must be {names}, got {shown(value)}"
        return None

    def _validate(self) -> None:
        def bad(reason: str) -> ModelError:
            return ModelError(None, f"invalid training config: {reason}")
        if self.epochs < 1:
            raise bad("epochs must be >= 1")
        if self.batch_size < 2:
            raise bad("batch_size must be >= 2")
        if self.bits <= 0 or self.bits % 8:
            raise bad("bits must be a positive multiple of 8")
        # What a model card may hold (checked again when the model is read): refused here, not
        # after hours of training.
        problem = architecture_problem(self.arch, self.bits, self.input_size, self.arch_kwargs)
        if problem:
            raise bad(problem)
        if self.name is not None and not is_plain_name(self.name):
            raise bad(f"name must be a plain name ({PLAIN_NAME_RULE})")
        if not (is_number(self.lr) and self.lr > 0):
            raise bad(f"lr must be a positive number, got {self.lr!r}")
        if not (is_number(self.weight_decay) and self.weight_decay >= 0):
            raise bad(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.triplet_mode not in TRIPLET_MODES:
            raise bad(f"triplet_mode must be one of {TRIPLET_MODES}")
        problem = _augment_problem(self.augment_options)
        if problem:
            raise bad(problem)
        if self.schedule not in ("cosine", "constant"):
            raise bad("schedule must be 'cosine' or 'constant'")
        if self.sampler not in ("balanced", "shuffle"):
            raise bad("sampler must be 'balanced' or 'shuffle'")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay must be in [0, 1)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise bad("steps_per_epoch must be >= 1")
        if not 0.0 <= self.inner_val_fraction < 1.0:
            raise bad("inner_val_fraction must be in [0, 1)")
        if self.stop_epoch is not None and not 0 <= self.stop_epoch <= self.epochs:
            raise bad("stop_epoch must be between 0 and epochs")
        if self.freeze_children < 0:
            raise bad("freeze_children must be >= 0")
        if self.method not in METHODS:
            raise bad(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "head" and not self.init_from:
            raise bad("method 'head' refits the hash layer of a trained start: give init_from "
                      "(--init on the command line); a run from scratch trains the whole "
                      "network")
        if self.method == "head" and (self.keep_best_epoch or self.inner_val_fraction):
            # the head is fitted on the whole training part in one go: there is no epoch to
            # choose, and patches held back to choose one would only be lost to the fit
            raise bad("keep_best_epoch and inner_val_fraction choose an epoch of whole-network "
                      "training; method 'head' has none (--whole-network trains the network)")


def _is_of(value, kind) -> bool:
    """``isinstance`` as a config means it: a bool is no int, an int is a float."""
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value)
    return isinstance(value, kind)


def _augment_problem(options: dict) -> Optional[str]:
    """Why ``augment_options`` cannot configure the augmentation, or None."""
    from hashview.training.data import AugmentConfig

    try:
        config = AugmentConfig.from_options(options)
    except (TypeError, ValueError) as exc:
        return f"augment_options: {exc}"
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.name == "flips_rotations":
            if not isinstance(value, bool):
                return "augment_options: flips_rotations must be true or false"
        elif not (is_number(value) and value >= 0):
            return f"augment_options: {item.name} must be a number >= 0, got {shown(value)}"
    if config.max_zoom < 1.0 or config.hed_scale >= 1.0 or config.saturation > 1.0 \
            or config.grayscale > 1.0 or config.hue > 0.5:
        return ("augment_options: max_zoom must be >= 1, hed_scale < 1, saturation <= 1, "
                "grayscale <= 1 and hue <= 0.5")
    return None
