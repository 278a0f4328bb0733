"""LGFFEM building blocks: GRN, the Global/Local Feature Aggregators, the LGFFN neck layer, GeM.

Nuñez-Fernández, Farias & Solar, "Content-Based Histopathological Image Retrieval", Sensors 25(5)
1350 (2025), Sec. 3.3-3.4. The extracted paper text lost most operator glyphs; where it is
ambiguous we follow the authors' public code (camilo-nunez/ffnir), and where both are silent or
disagree the choice is written next to the code:

- GRN (ConvNeXt V2): ``gamma * (x * N(x)) + beta + x`` with ``N = G / (mean_c G + 1e-6)`` and
  ``G`` the L2 norm over H, W; gamma and beta start at zero (an identity at init).
- Global operator ``G(X) = PW(GRN(GELU(PW(DW3x3(X)))))`` (paper Eq. 2) with a LayerNorm after the
  depthwise conv and a channel reduction r = 2 (both from the code).
- Local operator ``L(X) = PW(GELU(PW(X)))`` (paper Eq. 4), LayerNorm first, r = 2 (code).
- Aggregators ``A(X) = alpha * X + (1 - alpha) * X * sigmoid(op(X))`` (paper Eqs. 3/5), one
  trainable scalar alpha per unit, initialised to 0 (code).
- Resize (paper: "Resize", unspecified) lives inside the unit that consumes the resized map,
  as in the code: upsampling (coarser to finer, always into an LA) is LayerNorm + a depthwise
  2x2 transposed conv of stride 2; downsampling (finer to coarser, always into a GA) is a
  depthwise 3x3 conv of stride 2 + LayerNorm. When a pyramid side is odd the transposed conv
  lands one pixel short; the result is then resized (nearest) to the target side, so any
  input size works, though multiples of 32 avoid it.
- Fast normalised fusion (BiFPN, Tan et al. 2020): ``sum_i w_i * x_i / (sum_i w_i + 1e-4)``
  with ``w_i = relu(v_i)``, ``v_i`` initialised to 1. The ReLU is EfficientDet's; the authors'
  code omits it, which lets weights go negative and the denominator approach zero.
- No convolution after each fusion (EfficientDet has one; neither the paper nor the code do).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import LayerNorm2d

FUSION_EPS = 1e-4


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) on NCHW maps."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_norm = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
        relative = spatial_norm / (spatial_norm.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * relative) + self.beta + x


def _norm(channels: int) -> nn.Module:
    return LayerNorm2d(channels, eps=1e-6)


class _Resize(nn.Module):
    """Learned x2 resize between pyramid levels (depthwise, per the authors' code)."""

    def __init__(self, channels: int, direction: str):
        super().__init__()
        self.direction = direction
        if direction == "up":
            self.body = nn.Sequential(_norm(channels), nn.ConvTranspose2d(
                channels, channels, 2, stride=2, groups=channels))
        else:
            self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1,
                                                groups=channels, bias=False), _norm(channels))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.body(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class Aggregator(nn.Module):
    """Global (``kind="global"``, GA) or Local (``"local"``, LA) Feature Aggregator unit.

    ``resize`` ("up", "down" or None) resizes the input to the node's level first.
    """

    def __init__(self, channels: int, kind: str, resize: Optional[str] = None,
                 reduction: int = 2):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.resize = _Resize(channels, resize) if resize else None
        if kind == "global":
            self.op = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                _norm(channels), nn.Conv2d(channels, hidden, 1), nn.GELU(), GRN(hidden),
                nn.Conv2d(hidden, channels, 1))
        elif kind == "local":
            self.op = nn.Sequential(_norm(channels), nn.Conv2d(channels, hidden, 1), nn.GELU(),
                                    nn.Conv2d(hidden, channels, 1))
        else:
            raise ValueError(f"aggregator kind must be 'global' or 'local', got {kind!r}")
        self.kind = kind
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        if self.resize is not None:
            x = self.resize(x, size)
        return self.alpha * x + (1 - self.alpha) * x * torch.sigmoid(self.op(x))


class _FusionNode(nn.Module):
    """One BiFPN node: aggregators on each input, fast normalised fusion of their outputs."""

    def __init__(self, units: list[Aggregator]):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.weights = nn.Parameter(torch.ones(len(units)))

    def forward(self, inputs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        w = F.relu(self.weights)
        w = w / (w.sum() + FUSION_EPS)
        return sum(w[i] * unit(x, size) for i, (unit, x) in enumerate(zip(self.units, inputs)))


class LGFFNLayer(nn.Module):
    """One Local-Global Feature Fusion Neck layer over four levels P1 (finest) .. P4.

    Nodes (paper Sec. 3.3.2): top-down P3_1, P2_1, P1_2; bottom-up P2_2, P3_2, P4_2. Coarser
    inputs (upsampled) pass through an LA, finer inputs (downsampled) through a GA; same-level
    inputs through a GA in the top-down path and an LA in the bottom-up one, as printed.
    """

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        c, r = channels, reduction

        def unit(kind: str, resize: Optional[str] = None) -> Aggregator:
            return Aggregator(c, kind, resize, r)

        self.p3_1 = _FusionNode([unit("global"), unit("local", "up")])
        self.p2_1 = _FusionNode([unit("global"), unit("local", "up")])
        self.p1_2 = _FusionNode([unit("global"), unit("local", "up")])
        self.p2_2 = _FusionNode([unit("local"), unit("local"), unit("global", "down")])
        self.p3_2 = _FusionNode([unit("local"), unit("local"), unit("global", "down")])
        self.p4_2 = _FusionNode([unit("local"), unit("global", "down")])

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3, p4 = levels
        size = [tuple(p.shape[-2:]) for p in levels]
        p3_1 = self.p3_1([p3, p4], size[2])
        p2_1 = self.p2_1([p2, p3_1], size[1])
        p1_2 = self.p1_2([p1, p2_1], size[0])
        p2_2 = self.p2_2([p2, p2_1, p1_2], size[1])
        p3_2 = self.p3_2([p3, p3_1, p2_2], size[2])
        p4_2 = self.p4_2([p4, p3_2], size[3])
        return [p1_2, p2_2, p3_2, p4_2]


class InputProjection(nn.Module):
    """Backbone level to the neck width (authors' code; not in the paper):
    PW (Cin -> Cin/2, no bias) -> LayerNorm -> GELU -> PW (Cin/2 -> C)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        mid = max(1, in_channels // 2)
        self.body = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), _norm(mid),
                                  nn.GELU(), nn.Conv2d(mid, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2019) with a trainable exponent p."""

    def __init__(self, p: float = 4.6, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 here: x ** 4.6 overflows fp16 under autocast for activations above ~11.
        x = x.float().clamp(min=self.eps).pow(self.p)
        return x.mean(dim=(2, 3)).pow(1.0 / self.p)


class MiniHead(nn.Module):
    """GeM mini-head (paper Sec. 3.4): ``FC(l2(FC(GeM(P))))``; the BatchNorm and optional
    dropout after GeM are the authors' code's (dropout 0.6 there; ours defaults to 0)."""

    def __init__(self, channels: int, out_dim: int, dropout: float = 0.0, gem_p: float = 4.6):
        super().__init__()
        self.gem = GeM(gem_p)
        self.norm = nn.BatchNorm1d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.norm(self.gem(x)))
        return self.fc2(F.normalize(self.fc1(x), dim=1))
