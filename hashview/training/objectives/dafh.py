"""DAFH training: one stage, focal loss on the classifier (x3 branches, lambda = 1/3) plus a
triplet hinge on the Ptanh codes (:class:`hashview.training.triplet_class_losses.DAFHLoss`),
balanced P x K batches so every batch has triplets.

``objective_options``: ``focal_gamma`` (1.5), ``focal_weight`` (lambda, 1/3), ``margin`` (0.5),
``triplet_weight`` (beta, 1.0: not in the paper; Algorithm 1 adds the terms unweighted).
Triplets are formed by ``cfg.triplet_mode`` (default "random": the paper does not say).
Optimiser: Adam at the config's lr (default 1e-3; the paper's 1e-4 is for a pre-trained B6,
ours starts from random weights); the recipes use the paper's weight decay 1e-4.
"""

from __future__ import annotations

from typing import Optional

import torch

from hashview.training.objectives import register_objective
from hashview.training.objectives.base import Objective
from hashview.training.triplet_class_losses import DAFHLoss


@register_objective
class DAFHObjective(Objective):
    arch = "dafh"
    title = "DAFH (EfficientNet + CBAM, focal + triplet loss)"
    input_size = 64
    options = {"focal_gamma": 1.5, "focal_weight": 1 / 3, "margin": 0.5, "triplet_weight": 1.0}

    @classmethod
    def build_kwargs(cls, cfg, n_classes: int) -> dict:
        return {**cfg.arch_kwargs, "n_classes": n_classes}  # classifier = the training classes

    def __init__(self, cfg, net, n_classes):
        super().__init__(cfg, net, n_classes)
        o = self.opts
        self.dafh_loss = DAFHLoss(o["focal_gamma"], o["focal_weight"], o["margin"],
                                  o["triplet_weight"], mode=cfg.triplet_mode)

    def loss(self, stage: str, x: torch.Tensor, y: torch.Tensor,
             generator: Optional[torch.Generator]) -> tuple[torch.Tensor, dict]:
        codes, logits = self.net.codes_and_class_logits(x)
        return self.dafh_loss(codes, logits, y, generator)
