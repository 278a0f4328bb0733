"""HATDH training: one stage, triplet + pair + quantisation loss on the tanh codes
(:class:`hashview.training.losses.HATDHLoss`), balanced P x K batches, Adam."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hashview.training.losses import HATDHLoss, hatdh_params
from hashview.training.objectives import register_objective
from hashview.training.objectives.base import Objective


@register_objective
class HATDHObjective(Objective):
    arch = "hatdh"
    title = "HATDH (attention + triplet loss)"
    input_size = 224  # paper: BreakHis 224 (Kather 150)

    def __init__(self, cfg, net, n_classes):
        super().__init__(cfg, net, n_classes)
        if cfg.aux_ce_weight > 0:  # our addition, off by default: a classifier on the codes
            self.extra["head"] = nn.Linear(cfg.bits, n_classes)
        p = hatdh_params(cfg.dataset)  # None fields: the paper's values for the dataset
        self.hatdh_loss = HATDHLoss(
            p.lambda1 if cfg.lambda1 is None else cfg.lambda1,
            p.lambda2 if cfg.lambda2 is None else cfg.lambda2,
            p.lambda3 if cfg.lambda3 is None else cfg.lambda3,
            p.beta if cfg.beta is None else cfg.beta,
            normalise_by_bits=cfg.normalise_by_bits, mode=cfg.triplet_mode)

    def loss(self, stage: str, x: torch.Tensor, y: torch.Tensor,
             generator: Optional[torch.Generator]) -> tuple[torch.Tensor, dict]:
        codes = self.net(x)
        loss, parts = self.hatdh_loss(codes, y, generator)
        head = self.extra.get("head")
        if head is not None:
            ce = F.cross_entropy(head(codes.float()), y, label_smoothing=self.cfg.label_smoothing)
            loss = loss + self.cfg.aux_ce_weight * ce
            parts["aux_ce"] = float(ce.detach())
        return loss, parts
