"""Training losses: HATDH (triplet + pair + quantisation) and DCH (softmax + quantisation).

Conventions shared by both papers (notes C): sign(0) = -1, and the quantisation target sign(h)
is a constant (stop-gradient); losses act on the relaxed tanh codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

TRIPLET_MODES = ("random", "batch-hard", "semi-hard")


@dataclass(frozen=True)
class HATDHParams:
    lambda1: float  # triplet margin (Eq. 9)
    lambda2: float  # positive-pair bound: d_AP <= lambda2 (Eq. 10)
    lambda3: float  # negative-pair bound: d_AN >= lambda3 (Eq. 10)
    beta: float     # quantisation weight (Eq. 12)


# Paper Sec. 4 / Fig. 6 (notes A.3), tuned at 128 bits on un-normalised squared distances.
PAPER_HATDH_PARAMS = {
    "kather": HATDHParams(0.3, 0.2, 0.2, 0.01),
    "breakhis": HATDHParams(0.4, 0.3, 0.4, 0.1),
}


def hatdh_params(dataset: str) -> HATDHParams:
    """Paper values for ``dataset``: Kather's for Kather-like multi-class tissue sets, BreakHis's
    for binary benign/malignant-like sets (``"breakhis"``, ``"idc"``, ``"breakhis-like"``)."""
    key = (dataset or "kather").lower()
    if key.startswith(("breakhis", "idc", "binary")):
        return PAPER_HATDH_PARAMS["breakhis"]
    return PAPER_HATDH_PARAMS["kather"]


def sign_target(h: torch.Tensor) -> torch.Tensor:
    """sign(h) with sign(0) = -1, as a constant (no gradient flows through a comparison)."""
    return torch.where(h > 0, torch.ones_like(h), -torch.ones_like(h)).detach()


def quantization_error(h: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||sign(h) - h||^2`` summed over bits, shape ``(B,)``."""
    return (sign_target(h) - h).pow(2).sum(dim=1)


def squared_distances(h: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` squared Euclidean distances, computed as explicit differences (exact zeros on
    the diagonal, no cancellation error as with the Gram trick; B is small)."""
    return (h[:, None, :] - h[None, :, :]).pow(2).sum(-1)


def form_triplets(labels: torch.Tensor, mode: str, dist: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchor, positive, negative indices of the triplets formed inside one batch.

    - ``"random"`` (paper, via ATH [7]; notes A.10.11): every sample that has a positive and a
      negative in the batch is an anchor once, with a uniformly random positive and negative.
    - ``"batch-hard"`` (Hermans et al. 2017): per anchor, the farthest positive and the closest
      negative.
    - ``"semi-hard"`` (FaceNet, TF-Addons rule): every anchor-positive pair, with the closest
      negative farther than the positive; if none is, the farthest negative.
    Mining uses detached distances; random choices use ``generator`` (CPU).
    """
    if mode not in TRIPLET_MODES:
        raise ValueError(f"unknown triplet mode {mode!r} (use one of {TRIPLET_MODES})")
    device = labels.device
    b = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if mode == "random":
        # Random choice among allowed columns = argmax of uniform scores on those columns.
        scores = torch.rand((2, b, b), generator=generator).to(device)
        p = torch.where(pos_mask, scores[0], -1.0).argmax(1)
        n = torch.where(neg_mask, scores[1], -1.0).argmax(1)
        a = torch.arange(b, device=device)
        return a[valid], p[valid], n[valid]
    if dist is None:
        raise ValueError(f"triplet mode {mode!r} needs the distance matrix")
    d = dist.detach()
    inf = torch.tensor(float("inf"), device=device, dtype=d.dtype)
    if mode == "batch-hard":
        p = torch.where(pos_mask, d, -inf).argmax(1)
        n = torch.where(neg_mask, d, inf).argmin(1)
        a = torch.arange(b, device=device)
        return a[valid], p[valid], n[valid]
    a, p = torch.nonzero(pos_mask & valid[:, None], as_tuple=True)
    d_ap = d[a, p][:, None]
    d_an = d[a]                                     # (pairs, B)
    neg = neg_mask[a]
    outside = neg & (d_an > d_ap)
    closest_outside = torch.where(outside, d_an, inf).argmin(1)
    farthest = torch.where(neg, d_an, -inf).argmax(1)
    n = torch.where(outside.any(1), closest_outside, farthest)
    return a, p, n


class HATDHLoss(nn.Module):
    """HATDH objective (paper Eqs. 9-12), averaged over the batch's triplets:

        L = L_T + L_D + beta * L_Q
        L_T = max(d_AP - d_AN + lambda1, 0)
        L_D = max(d_AP - lambda2, 0) + max(lambda3 - d_AN, 0)
        L_Q = ||sign(h_A) - h_A||^2 + ||sign(h_P) - h_P||^2 + ||sign(h_N) - h_N||^2

    with d = ||h_i - h_j||^2 between tanh codes. Choices:

    - ``normalise_by_bits``: divide every squared norm (d and the L_Q terms) by the code length
      L, i.e. use per-bit means. Un-normalised d ranges over [0, 4L], so the paper's margins
      (0.2-0.4) are below one bit flip (d = 4) and L_D1 demands near-identical positives (notes
      A.10.8); normalised, d is in [0, 4] and a margin of 0.3 is ~7.5% of the range.
    - ``mode``: "random" (paper), "batch-hard" or "semi-hard", see :func:`form_triplets`.
    - Reduction: mean over triplets (the paper sums; a mean keeps the learning rate independent
      of batch size). A batch without any valid triplet gives 0 (still attached to the graph).
    """

    def __init__(self, lambda1: float = 0.3, lambda2: float = 0.2, lambda3: float = 0.2,
                 beta: float = 0.01, normalise_by_bits: bool = False, mode: str = "random"):
        super().__init__()
        if mode not in TRIPLET_MODES:
            raise ValueError(f"unknown triplet mode {mode!r} (use one of {TRIPLET_MODES})")
        self.lambda1, self.lambda2, self.lambda3 = float(lambda1), float(lambda2), float(lambda3)
        self.beta = float(beta)
        self.normalise_by_bits = bool(normalise_by_bits)
        self.mode = mode

    @classmethod
    def for_dataset(cls, dataset: str, **kw) -> "HATDHLoss":
        p = hatdh_params(dataset)
        return cls(p.lambda1, p.lambda2, p.lambda3, p.beta, **kw)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor,
                generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, dict]:
        """``codes`` (B, L) tanh outputs, ``labels`` (B,) -> (loss, parts for logging)."""
        codes = codes.float()  # losses in fp32 even under autocast
        scale = 1.0 / codes.shape[1] if self.normalise_by_bits else 1.0
        dist = squared_distances(codes) * scale
        a, p, n = form_triplets(labels, self.mode, dist, generator)
        if a.numel() == 0:
            zero = codes.sum() * 0.0
            return zero, {"triplet": 0.0, "pair": 0.0, "quant": 0.0, "triplets": 0}
        d_ap, d_an = dist[a, p], dist[a, n]
        l_t = F.relu(d_ap - d_an + self.lambda1)
        l_d = F.relu(d_ap - self.lambda2) + F.relu(self.lambda3 - d_an)
        q = quantization_error(codes) * scale
        l_q = q[a] + q[p] + q[n]
        loss = (l_t + l_d + self.beta * l_q).mean()
        return loss, {"triplet": float(l_t.detach().mean()), "pair": float(l_d.detach().mean()),
                      "quant": float(l_q.detach().mean()), "triplets": int(a.numel())}


class DCHLoss(nn.Module):
    """DCH objective (paper Eq. 9): softmax cross-entropy + (gamma/2) ||sgn(b) - b||^2.

    Choices:
    - ``gamma = 1e-4``: the paper prints "10e-4" but sweeps "10 to 10e-6" with "10e-k" meaning
      10^-k (notes B.3, B.10.1), so 1e-4, not Python's 10e-4 = 1e-3.
    - Reduction: the paper SUMS both terms over the mini-batch; we take the MEAN over the batch
      for both, which keeps their ratio exactly (only the overall scale, i.e. the effective
      learning rate, changes). The quantisation term is SUMMED over the K bits, as printed
      (notes B.10.2), so gamma keeps the paper's meaning.
    - The classifier consumes the relaxed codes b (notes B.10.6); sgn is a constant.
    """

    def __init__(self, gamma: float = 1e-4, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)  # our addition; 0 = the paper's CE

    def forward(self, class_logits: torch.Tensor, codes: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict]:
        ce = F.cross_entropy(class_logits.float(), labels, label_smoothing=self.label_smoothing)
        quant = quantization_error(codes.float()).mean()
        loss = ce + 0.5 * self.gamma * quant
        return loss, {"ce": float(ce.detach()), "quant": float(quant.detach())}
