"""The :class:`Objective` base class: everything architecture-specific about training one net.

The interface is documented in :mod:`hashview.training.objectives` (the package docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: config imports this package to resolve a config
    from hashview.training.config import TrainConfig


class Objective:
    """Training recipe of one architecture: config defaults, extra modules, stages, loss."""

    # -- class-level recipe (read by TrainConfig.resolved before any net exists)
    arch: ClassVar[str] = ""               # registry name, equal to the model's ``arch``
    title: ClassVar[str] = ""              # one line for the app's train dialog
    input_size: ClassVar[int] = 224        # default input side in px (cfg.input_size=None)
    optimizer: ClassVar[str] = "adam"      # what cfg.optimizer="auto" means
    # cfg.lr / cfg.weight_decay = None with that optimizer (lr None: the optimizer's default;
    # with another optimizer: its default rate and no decay)
    lr: ClassVar[Optional[float]] = None
    weight_decay: ClassVar[float] = 0.0
    sampler: ClassVar[str] = "balanced"    # what cfg.sampler="auto" means
    options: ClassVar[dict] = {}           # defaults of cfg.objective_options (all keys)

    @classmethod
    def resolve(cls, cfg: "TrainConfig") -> dict:
        """Further fields of the resolved config (e.g. DCH's ``pretrain_epochs``)."""
        return {}

    @classmethod
    def check(cls, cfg: "TrainConfig") -> Optional[str]:
        """Why the resolved ``cfg`` is invalid for this architecture, or None."""
        return None

    @classmethod
    def build_kwargs(cls, cfg: "TrainConfig", n_classes: int) -> dict:
        """Keyword arguments for ``build_model(cfg.arch, cfg.bits, input_size=..., **kw)``."""
        return dict(cfg.arch_kwargs)

    # -- per run
    def __init__(self, cfg: "TrainConfig", net: nn.Module, n_classes: int):
        """Called right after the net is built under ``torch.manual_seed(cfg.seed)``; create
        extra trainable modules here (in a fixed order: they draw from the same seed)."""
        self.cfg, self.net, self.n_classes = cfg, net, n_classes
        self.opts = dict(cfg.objective_options)
        # Trainable modules that are not part of the shipped net (classifier heads...), by
        # name; checkpoints store them as "<name>.<parameter>". Never saved in the model file.
        self.extra: dict[str, nn.Module] = {}

    def modules(self) -> list[nn.Module]:
        """The net and every extra module (for device moves, train mode, checkpoints)."""
        return [self.net, *self.extra.values()]

    def stages(self) -> list[tuple[str, int]]:
        """``[(stage name, epochs), ...]`` in order, epochs summing to ``cfg.epochs``; a stage
        may have 0 epochs (skipped). Each stage gets a fresh optimiser and LR schedule."""
        return [("hash", self.cfg.epochs)]

    def parameters(self, stage: str) -> list[nn.Parameter]:
        """Parameters the optimiser updates in ``stage`` (default: net, then extra modules)."""
        return [p for m in self.modules() for p in m.parameters()]

    def enter_stage(self, stage: str, generator: torch.Generator) -> None:
        """Called when training crosses into ``stage`` (not for the run's first stage, and not
        on resume: a checkpoint already holds the result). ``generator`` is seeded from
        ``(seed, epoch)`` for re-initialisations."""

    def loss(self, stage: str, x: torch.Tensor, y: torch.Tensor,
             generator: Optional[torch.Generator]) -> tuple[torch.Tensor, dict]:
        """``(scalar loss, parts for logging)`` of a normalised batch ``x`` with labels ``y``
        in ``stage``. ``generator`` is the seeded CPU stream for random choices (triplets);
        compute the loss in fp32 (the forward may run under fp16 autocast on CUDA)."""
        raise NotImplementedError

    def retrieval_map(self, db: np.ndarray, db_labels: np.ndarray, q: np.ndarray,
                      q_labels: np.ndarray) -> float:
        """Validation mAP of ``net(x)`` outputs (default: Hamming ranking of sign codes)."""
        from hashview.encode import pack_codes
        from hashview.metrics import hamming_ranking, mean_average_precision, relevance_matrix

        order, _ = hamming_ranking(pack_codes(q), pack_codes(db))
        return mean_average_precision(relevance_matrix(q_labels, db_labels, order))
