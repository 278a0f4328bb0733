"""Sub-center ArcFace loss (Deng et al., "Sub-center ArcFace", ECCV 2020), as LGFFEM trains with.

Each class ``j`` has ``K`` sub-centres ``W_jk``; an embedding's class cosine is its best
sub-centre, ``cos t_j = max_k <x/|x|, W_jk/|W_jk|>``, and the loss is the softmax cross-entropy of
``s * cos(t_y + m)`` for the true class against ``s * cos t_j`` for the others.

Choices (LGFFEM's paper gives m = 17.2 and s = 64 and nothing else):

- ``m`` is in **degrees** (17.2 deg = 0.300 rad): as radians 17.2 would be meaningless, and the
  authors' code uses pytorch-metric-learning, whose margin is in degrees.
- ``s = 64`` as printed (the authors' code passes the margin as the scale by mistake, ~17.5).
- ``K = 3``, the Sub-center ArcFace paper's recommended value (LGFFEM's paper is silent; its
  code defaults to 6, which leaves 2 images per sub-centre on an 8-class, 184-image split).
- Where ``t_y + m`` would pass pi, cos is no longer decreasing in ``t``; there the target logit
  continues linearly as ``cos t - m sin m`` (InsightFace's rule), so the margin never rewards a
  worse angle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PAPER_MARGIN_DEGREES = 17.2
PAPER_SCALE = 64.0
DEFAULT_SUBCENTERS = 3


class SubCenterArcFace(nn.Module):
    """``loss(embeddings (B, D), labels (B,)) -> scalar``; owns the ``(C * K, D)`` centres."""

    def __init__(self, dim: int, n_classes: int, subcenters: int = DEFAULT_SUBCENTERS,
                 margin_degrees: float = PAPER_MARGIN_DEGREES, scale: float = PAPER_SCALE):
        super().__init__()
        if subcenters < 1 or n_classes < 1:
            raise ValueError("need at least one class and one sub-centre")
        self.n_classes, self.subcenters = int(n_classes), int(subcenters)
        self.margin = math.radians(float(margin_degrees))
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.subcenters, int(dim)))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` cosine of each embedding to each class (its nearest sub-centre)."""
        cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight, dim=1))
        return cos.view(-1, self.n_classes, self.subcenters).amax(dim=2)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` scaled logits with the additive angular margin on the true class."""
        cos = self.cosines(embeddings)
        target = cos.gather(1, labels.view(-1, 1)).clamp(-1.0, 1.0)
        # The floor keeps the gradient of sqrt finite at cos = +-1.
        sin = torch.sqrt((1.0 - target * target).clamp(min=1e-12))
        with_margin = target * math.cos(self.margin) - sin * math.sin(self.margin)
        # t + m > pi  <=>  cos t < cos(pi - m): continue linearly there (see module notes).
        with_margin = torch.where(target > math.cos(math.pi - self.margin), with_margin,
                                  target - self.margin * math.sin(self.margin))
        cos = cos.scatter(1, labels.view(-1, 1), with_margin)
        return self.scale * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)
