"""MTH training (reconstructed, see :class:`hashview.training.triplet_class_losses.MTHLoss`):
one stage, hierarchical triplet loss on codes and deep features plus two cross-entropies,
balanced P x K batches so every batch has triplets.

Extra (training-only) modules: ``class_layer`` (the paper's class layer, softmax on the deep
feature D) and ``projection`` (the semantic term's map from the k-bit codes to the classes).
``objective_options``: ``eta`` (code margin, 0.5), ``delta`` (feature margin, 0.3), ``alpha``
(L_h weight, 1.0), ``beta`` (L_c weight, 1.0); none is given in our copy of the paper.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from hashview.training.objectives import register_objective
from hashview.training.objectives.base import Objective
from hashview.training.triplet_class_losses import MTHLoss


@register_objective
class MTHObjective(Objective):
    arch = "mth"
    title = "MTH (multi-scale dense blocks + self-attention, hierarchical triplet loss)"
    input_size = 64
    options = {"eta": 0.5, "delta": 0.3, "alpha": 1.0, "beta": 1.0}

    def __init__(self, cfg, net, n_classes):
        super().__init__(cfg, net, n_classes)
        self.extra["class_layer"] = nn.Linear(net.feature_dim, n_classes)
        self.extra["projection"] = nn.Linear(cfg.bits, n_classes)
        o = self.opts
        self.mth_loss = MTHLoss(o["eta"], o["delta"], o["alpha"], o["beta"],
                                mode=cfg.triplet_mode)

    def loss(self, stage: str, x: torch.Tensor, y: torch.Tensor,
             generator: Optional[torch.Generator]) -> tuple[torch.Tensor, dict]:
        codes, features = self.net.codes_and_features(x)
        return self.mth_loss(codes, features, self.extra["projection"](codes.float()),
                             self.extra["class_layer"](features.float()), y, generator)
