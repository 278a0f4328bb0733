"""LGFFEM: multi-scale ConvNeXt V2 backbone + Local-Global Feature Fusion Neck + GeM heads.

Nuñez-Fernández, Farias & Solar, "Content-Based Histopathological Image Retrieval", Sensors 25(5)
1350 (2025). The output is a **float descriptor**, not a hash: ``code_kind = "float"``, ``bits``
is the descriptor dimension and ``forward`` returns L2-normalised ``(B, bits)`` vectors, searched
by cosine similarity. ``sign(forward(x))`` is the binarised variant (one bit per dimension).

Reconstruction choices (the paper's and the authors' code's values in brackets):

- Backbone: torchvision's ``ConvNeXt`` with our own small stage list, default widths
  (32, 64, 128, 256) and depths (1, 1, 2, 1) [ConvNeXt V2-Base, 128..1024 wide, depths 3-3-27-3],
  and ConvNeXt **V2** blocks (:class:`ConvNeXtV2Block`: GRN in the MLP, no layer scale). It is
  trained from scratch with the rest [frozen FCMAE ImageNet weights]: no pretrained weights can
  be fetched here, and a net of this size trains in minutes on 2 CPU cores. The four stage
  outputs (strides 4, 8, 16, 32) are the neck inputs P1_0 .. P4_0.
- Input 96 px [224]: four pyramid levels of 24, 12, 6 and 3 px, chosen for the CPU time
  budget: one training step (batch 32) took about 1.5x as long at 128 px; 128 px was not
  trained to compare quality.
- Neck: an input projection per level to ``neck_channels`` = 48 [512] (code only), then
  ``neck_layers`` = 2 [3] LGFFN layers (:mod:`hashview.models.lgffem_neck`).
- Head: one GeM mini-head per output node, each giving ``bits / 4`` dims [512 each, 2048 in
  all], concatenated and L2-normalised (the code leaves the concatenation unnormalised and
  searches it with an L2 index; cosine on normalised vectors is what Sub-center ArcFace trains).

At 64 dimensions the net has 1.19M parameters (2.4 MB in fp16) [1.46e7 trainable in neck and
head alone]. Training: :mod:`hashview.training.objectives.lgffem`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt, LayerNorm2d
from torchvision.ops import StochasticDepth

from hashview.errors import ModelError
from hashview.models.base import HashingNet
from hashview.models.lgffem_neck import GRN, InputProjection, LGFFNLayer, MiniHead
from hashview.models.registry import register

N_LEVELS = 4


class ConvNeXtV2Block(nn.Module):
    """ConvNeXt V2 block: DW 7x7 -> LayerNorm -> PW x4 -> GELU -> GRN -> PW, residual.

    The pointwise layers are 1x1 convs (NCHW), equivalent to V2's channels-last Linear layers;
    ``layer_scale`` is accepted for torchvision's ``ConvNeXt(block=...)`` call and ignored, as
    V2 drops layer scale in favour of GRN.
    """

    def __init__(self, dim: int, layer_scale: float = 0.0, stochastic_depth_prob: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), LayerNorm2d(dim, eps=1e-6),
            nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), GRN(4 * dim), nn.Conv2d(4 * dim, dim, 1))
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stochastic_depth(self.block(x))


def convnext_v2_features(dims: Sequence[int], depths: Sequence[int],
                         drop_path: float = 0.0) -> nn.Sequential:
    """The ``features`` of a torchvision ConvNeXt with V2 blocks: stem, then stage / downsample
    pairs; stage ``i`` output is ``features[2 * i + 1]``."""
    settings = [CNBlockConfig(dims[i], dims[i + 1] if i + 1 < len(dims) else None, depths[i])
                for i in range(len(dims))]
    return ConvNeXt(settings, stochastic_depth_prob=drop_path, block=ConvNeXtV2Block,
                    num_classes=1).features


class LGFFEM(HashingNet):
    arch = "lgffem"
    code_kind = "float"

    def __init__(self, bits: int, input_size: int = 96, dims: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] = (1, 1, 2, 1), neck_channels: int = 48,
                 neck_layers: int = 2, head_dropout: float = 0.0, gem_p: float = 4.6,
                 drop_path: float = 0.0):
        super().__init__(bits, input_size)
        if len(dims) != N_LEVELS or len(depths) != N_LEVELS:
            raise ModelError(None, f"lgffem: dims and depths need {N_LEVELS} stages each")
        if bits % N_LEVELS:
            raise ModelError(None, f"lgffem: the descriptor dimension must be a multiple "
                                   f"of {N_LEVELS}, got {bits}")
        self.dims, self.depths = [int(d) for d in dims], [int(d) for d in depths]
        self.neck_channels, self.neck_layers = int(neck_channels), int(neck_layers)
        self.head_dropout, self.gem_p, self.drop_path = float(head_dropout), float(gem_p), \
            float(drop_path)
        self.backbone = convnext_v2_features(self.dims, self.depths, self.drop_path)
        self.projections = nn.ModuleList(InputProjection(d, self.neck_channels) for d in self.dims)
        self.neck = nn.ModuleList(LGFFNLayer(self.neck_channels) for _ in range(self.neck_layers))
        self.heads = nn.ModuleList(MiniHead(self.neck_channels, bits // N_LEVELS,
                                            self.head_dropout, self.gem_p)
                                   for _ in range(N_LEVELS))

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The neck's output maps P1_2 .. P4_2 (finest first)."""
        levels = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i % 2 == 1:  # a stage output (even indices are the stem and downsamplers)
                levels.append(x)
        levels = [project(level) for project, level in zip(self.projections, levels)]
        for layer in self.neck:
            levels = layer(levels)
        return levels

    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised descriptor (concatenated mini-head outputs), ``(B, bits)``."""
        return torch.cat([head(level) for head, level in zip(self.heads, self.pyramid(x))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in fp32 so the descriptor has unit norm even under fp16 autocast.
        return F.normalize(self.hash_logits(x).float(), dim=1)

    def forward_with_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.hash_logits(x)
        return F.normalize(logits.float(), dim=1), logits

    def feature_layer(self) -> nn.Module:
        # Grad-CAM target: the last neck layer's P3_2 node (stride 16), one of the outer
        # fusion nodes the paper visualises.
        return self.neck[-1].p3_2

    def arch_kwargs(self) -> dict:
        return {"dims": list(self.dims), "depths": list(self.depths),
                "neck_channels": self.neck_channels, "neck_layers": self.neck_layers,
                "head_dropout": self.head_dropout, "gem_p": self.gem_p,
                "drop_path": self.drop_path}


@register("lgffem")
def build_lgffem(bits: int, **kw) -> LGFFEM:
    return LGFFEM(bits, **kw)
