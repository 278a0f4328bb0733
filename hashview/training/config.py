"""``TrainConfig``: every knob of a training run, JSON-serialisable (stored in checkpoints and in
the model card's ``training.config``).

``None`` fields mean "the documented default for this architecture"; :meth:`TrainConfig.resolved`
fills them in, and the resolved config is what gets recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from hashview.errors import ModelError
from hashview.training.losses import TRIPLET_MODES

ARCH_INPUT_SIZE = {"hatdh": 224, "dch": 128}   # paper sizes (HATDH: BreakHis 224, Kather 150)
OPTIMISERS = ("adam", "adadelta")
DEFAULT_LR = {"adam": 1e-3, "adadelta": 1.0}   # HATDH: Adam 1e-3; Keras Adadelta default 1.0
# DCH default optimiser: Adam. benchmarks/train_quick.py (Kather subset, 64 bits, seed 0):
# mAP 0.680 vs 0.645 (10 epochs) and 0.738 vs 0.703 (25 epochs) for Adam 1e-3 vs the paper's
# Adadelta lr 1.0; docs/training.md has the table.
DCH_DEFAULT_OPTIMISER = "adam"


@dataclass
class TrainConfig:
    arch: str = "hatdh"
    bits: int = 64
    epochs: int = 30                      # total, DCH stages included
    batch_size: int = 64                  # images per batch (HATDH: P classes x K images)
    lr: Optional[float] = None            # None: 1e-3 for Adam, 1.0 for Adadelta
    seed: int = 0
    weight_decay: float = 0.0
    input_size: Optional[int] = None      # None: 224 (HATDH) / 128 (DCH)
    device: str = "auto"
    dataset: str = "kather"               # picks the paper's HATDH margins (kather | breakhis)
    name: Optional[str] = None            # model file stem; None: ARCH-BITS-DATASET
    optimizer: str = "auto"               # "auto": Adam (HATDH), DCH_DEFAULT_OPTIMISER (DCH)
    schedule: str = "cosine"              # "cosine" (per step, to 0 per stage) | "constant"
    augment: bool = True
    sampler: str = "auto"                 # "balanced" (P x K) | "shuffle"; auto: HATDH balanced
    steps_per_epoch: Optional[int] = None  # None: ~one pass over the training images
    amp: bool = True                      # fp16 autocast + GradScaler on CUDA (ignored on CPU)
    arch_kwargs: dict = field(default_factory=dict)
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

    def model_name(self) -> str:
        return self.name or f"{self.arch}-{self.bits}-{self.dataset}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resolved(self) -> "TrainConfig":
        """A copy with every ``None``/"auto" default filled in; raises ModelError if invalid."""
        arch = self.arch.lower()
        if arch not in ARCH_INPUT_SIZE:
            raise ModelError(None, f"training supports {sorted(ARCH_INPUT_SIZE)}, not {arch!r}")
        optimizer = self.optimizer
        if optimizer == "auto":
            optimizer = DCH_DEFAULT_OPTIMISER if arch == "dch" else "adam"
        if optimizer not in OPTIMISERS:
            raise ModelError(None, f"unknown optimizer {optimizer!r} (use {OPTIMISERS})")
        sampler = self.sampler
        if sampler == "auto":
            sampler = "shuffle" if arch == "dch" else "balanced"
        pretrain = self.pretrain_epochs
        if arch == "dch" and pretrain is None:
            pretrain = self.epochs // 3
        cfg = dataclasses.replace(
            self, arch=arch, optimizer=optimizer, sampler=sampler,
            lr=DEFAULT_LR[optimizer] if self.lr is None else float(self.lr),
            input_size=self.input_size or ARCH_INPUT_SIZE[arch],
            pretrain_epochs=pretrain if arch == "dch" else None,
            arch_kwargs=dict(self.arch_kwargs))
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        def bad(reason: str) -> ModelError:
            return ModelError(None, f"invalid training config: {reason}")
        if self.epochs < 1:
            raise bad("epochs must be >= 1")
        if self.batch_size < 2:
            raise bad("batch_size must be >= 2")
        if self.bits <= 0 or self.bits % 8:
            raise bad("bits must be a positive multiple of 8")
        if self.triplet_mode not in TRIPLET_MODES:
            raise bad(f"triplet_mode must be one of {TRIPLET_MODES}")
        if self.schedule not in ("cosine", "constant"):
            raise bad("schedule must be 'cosine' or 'constant'")
        if self.sampler not in ("balanced", "shuffle"):
            raise bad("sampler must be 'balanced' or 'shuffle'")
        if self.arch == "dch" and not 0 <= self.pretrain_epochs < self.epochs:
            raise bad("pretrain_epochs must be in [0, epochs)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay must be in [0, 1)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise bad("steps_per_epoch must be >= 1")
