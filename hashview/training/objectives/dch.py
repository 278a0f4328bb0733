"""DCH training in the paper's two stages.

- ``"pretrain"`` (``cfg.pretrain_epochs``, default ``epochs // 3``): conv -> FC2048 -> a stage-1
  softmax head, cross-entropy; the LBE layer and the net's classifier are not in the graph.
- ``"finetune"``: the LBE is inserted; the classifier on the relaxed codes is re-initialised
  (seeded) and the whole net trains on softmax + quantisation (:class:`DCHLoss`).
Default optimiser Adam (:data:`DEFAULT_OPTIMISER`), plain shuffled batches.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hashview.training.losses import DCHLoss
from hashview.training.objectives import register_objective
from hashview.training.objectives.base import Objective

STAGE1_WIDTH = 2048  # FC2048, the input of the stage-1 softmax
# Adam 1e-3 rather than the paper's Adadelta lr 1.0: benchmarks/train_quick.py (Kather subset,
# 64 bits, seed 0) gives mAP 0.680 vs 0.645 (10 epochs) and 0.738 vs 0.703 (25 epochs);
# docs/training.md has the table.
DEFAULT_OPTIMISER = "adam"


@register_objective
class DCHObjective(Objective):
    arch = "dch"
    title = "DCH (deep convolutional hashing)"
    input_size = 128
    optimizer = DEFAULT_OPTIMISER
    sampler = "shuffle"

    @classmethod
    def resolve(cls, cfg) -> dict:
        return {"pretrain_epochs": cfg.epochs // 3 if cfg.pretrain_epochs is None
                else cfg.pretrain_epochs}

    @classmethod
    def check(cls, cfg) -> Optional[str]:
        if not 0 <= cfg.pretrain_epochs < cfg.epochs:
            return "pretrain_epochs must be in [0, epochs)"
        return None

    @classmethod
    def build_kwargs(cls, cfg, n_classes: int) -> dict:
        return {**cfg.arch_kwargs, "n_classes": n_classes}  # softmax = the training classes

    def __init__(self, cfg, net, n_classes):
        super().__init__(cfg, net, n_classes)
        # Stage-1 head (paper: conv -> FC2048 -> softmax, before the LBE is inserted).
        self.extra["head"] = nn.Linear(STAGE1_WIDTH, n_classes)
        self.dch_loss = DCHLoss(cfg.gamma, cfg.label_smoothing)

    def stages(self) -> list[tuple[str, int]]:
        pretrain = self.cfg.pretrain_epochs
        return [("pretrain", pretrain), ("finetune", self.cfg.epochs - pretrain)]

    def parameters(self, stage: str) -> list[nn.Parameter]:
        if stage == "pretrain":  # LBE and softmax are not in the stage-1 graph
            mods = [self.net.features, self.net.fc, self.extra["head"]]
            return [p for m in mods for p in m.parameters()]
        return list(self.net.parameters())  # the stage-1 head is done

    def enter_stage(self, stage: str, generator: torch.Generator) -> None:
        if stage != "finetune":
            return
        layer = self.net.classifier
        bound = math.sqrt(6.0 / layer.in_features)  # kaiming-uniform (ReLU gain), as DCH init
        weight = (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.zero_()

    def loss(self, stage: str, x: torch.Tensor, y: torch.Tensor,
             generator: Optional[torch.Generator]) -> tuple[torch.Tensor, dict]:
        if stage == "pretrain":
            feats = self.net.fc(self.net.pool(self.net.features(x)))
            return F.cross_entropy(self.extra["head"](feats).float(), y,
                                   label_smoothing=self.cfg.label_smoothing), {}
        codes, logits = self.net.codes_and_class_logits(x)
        return self.dch_loss(logits, codes, y)
