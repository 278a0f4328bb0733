"""Losses that combine in-batch triplets with classification terms: DAFH and MTH.

Both papers train a three-branch (anchor, positive, negative) network with shared weights. Here
the branches are the members of triplets formed inside one batch
(:func:`hashview.training.losses.form_triplets`), so one forward pass serves all of them; a
per-branch sum over the triplets' anchors, positives and negatives replaces the three passes.
Distances are plain Euclidean (not squared), as ``torch.nn.TripletMarginLoss`` (both papers are
PyTorch-era; neither states d). Reductions are means over triplets.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hashview.training.losses import TRIPLET_MODES, form_triplets


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` Euclidean distances; the diagonal is exactly 0 and its gradient is 0 there
    (sqrt of a clamped square, so identical rows never give NaN gradients)."""
    squared = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    return squared.clamp_min(1e-12).sqrt() * (squared > 0)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample multi-class focal loss ``-(1 - p_t)^gamma log p_t``, shape ``(B,)`` (no
    alpha balancing: DAFH mentions none)."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
    return -(1.0 - log_p.exp()).pow(gamma) * log_p


def triplet_hinge(dist: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor,
                  margin: float) -> torch.Tensor:
    """Mean of ``max(0, d(a, p) - d(a, n) + margin)`` over the triplets."""
    return F.relu(dist[a, p] - dist[a, n] + margin).mean()


def branch_mean(per_sample: torch.Tensor, a: torch.Tensor, p: torch.Tensor,
                n: torch.Tensor) -> torch.Tensor:
    """``(mean over anchors + mean over positives + mean over negatives) / 3``: a per-sample
    term summed over the three branches with weight 1/3 each."""
    return (per_sample[a].mean() + per_sample[p].mean() + per_sample[n].mean()) / 3.0


def _triplets(labels: torch.Tensor, mode: str, dist: torch.Tensor,
              generator: Optional[torch.Generator]):
    return form_triplets(labels, mode, dist if mode != "random" else None, generator)


class DAFHLoss(nn.Module):
    """DAFH objective (paper Sec. 3.2, Table 2): ``lambda * (F_A + F_P + F_N) + beta * L_T``.

    - F_z: focal loss (gamma = 1.5) of the classifier on branch z; lambda = 1/3, so the focal
      part is the mean over the three branches (:func:`branch_mean`).
    - L_T: triplet hinge on the Ptanh codes, margin 0.5, Euclidean distance.
    - beta is not given in the paper; Algorithm 1 adds the two terms unweighted: beta = 1.
    - No quantisation term (the paper relies on Ptanh's slope alpha > 1).
    A batch without any valid triplet falls back to the plain mean focal loss over the batch.
    """

    def __init__(self, gamma: float = 1.5, focal_weight: float = 1 / 3, margin: float = 0.5,
                 triplet_weight: float = 1.0, mode: str = "random"):
        super().__init__()
        if mode not in TRIPLET_MODES:
            raise ValueError(f"unknown triplet mode {mode!r} (use one of {TRIPLET_MODES})")
        self.gamma, self.focal_weight = float(gamma), float(focal_weight)
        self.margin, self.triplet_weight, self.mode = float(margin), float(triplet_weight), mode

    def forward(self, codes: torch.Tensor, class_logits: torch.Tensor, labels: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
        codes = codes.float()
        focal = focal_loss(class_logits, labels, self.gamma)
        dist = euclidean_distances(codes)
        a, p, n = _triplets(labels, self.mode, dist, generator)
        if a.numel() == 0:
            return focal.mean(), {"focal": float(focal.detach().mean()), "triplet": 0.0,
                                  "triplets": 0}
        focal_term = 3.0 * self.focal_weight * branch_mean(focal, a, p, n)
        triplet = triplet_hinge(dist, a, p, n, self.margin)
        loss = focal_term + self.triplet_weight * triplet
        return loss, {"focal": float(focal_term.detach()), "triplet": float(triplet.detach()),
                      "triplets": int(a.numel())}


class MTHLoss(nn.Module):
    """MTH objective as reconstructed (notes 3.4, every part [RECON]): ``L_s + alpha L_h +
    beta L_c``.

    - L_h (hierarchical similarity): a triplet hinge on the codes, margin ``eta``, plus one on
      the deep features D, margin ``delta``. Code distances are Euclidean divided by sqrt(bits)
      (per-bit RMS, in [0, 2]) so one margin serves every code length; features are
      L2-normalised first (D is an unbounded ReLU output: an unnormalised margin could be met by
      scaling D up). eta = 0.5, delta = 0.3 (unit vectors with non-negative entries are at most
      sqrt(2) apart).
    - L_s (semantic term): cross-entropy of a linear projection of the codes to the classes,
      summed over the branches with weight 1/3 each (:func:`branch_mean`).
    - L_c (category-level term): cross-entropy of the class layer on D, per-branch weights
      theta_a = theta_p = theta_n = 1/3.
    - alpha = beta = 1 (not given); no quantisation term (the paper has none).
    A batch without valid triplets gives L_s + beta L_c over the whole batch.
    """

    def __init__(self, eta: float = 0.5, delta: float = 0.3, alpha: float = 1.0,
                 beta: float = 1.0, mode: str = "random"):
        super().__init__()
        if mode not in TRIPLET_MODES:
            raise ValueError(f"unknown triplet mode {mode!r} (use one of {TRIPLET_MODES})")
        self.eta, self.delta = float(eta), float(delta)
        self.alpha, self.beta, self.mode = float(alpha), float(beta), mode

    def forward(self, codes: torch.Tensor, features: torch.Tensor, code_logits: torch.Tensor,
                class_logits: torch.Tensor, labels: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
        codes, features = codes.float(), features.float()
        semantic = F.cross_entropy(code_logits.float(), labels, reduction="none")
        category = F.cross_entropy(class_logits.float(), labels, reduction="none")
        code_dist = euclidean_distances(codes) / codes.shape[1] ** 0.5
        feature_dist = euclidean_distances(F.normalize(features, dim=1))
        a, p, n = _triplets(labels, self.mode, code_dist, generator)
        if a.numel() == 0:
            loss = semantic.mean() + self.beta * category.mean()
            return loss, {"semantic": float(semantic.detach().mean()),
                          "category": float(category.detach().mean()), "code_triplet": 0.0,
                          "feature_triplet": 0.0, "triplets": 0}
        code_triplet = triplet_hinge(code_dist, a, p, n, self.eta)
        feature_triplet = triplet_hinge(feature_dist, a, p, n, self.delta)
        l_s, l_c = branch_mean(semantic, a, p, n), branch_mean(category, a, p, n)
        loss = l_s + self.alpha * (code_triplet + feature_triplet) + self.beta * l_c
        return loss, {"semantic": float(l_s.detach()), "category": float(l_c.detach()),
                      "code_triplet": float(code_triplet.detach()),
                      "feature_triplet": float(feature_triplet.detach()),
                      "triplets": int(a.numel())}
