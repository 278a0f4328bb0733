"""DAFH: EfficientNet + CBAM on the penultimate stage + layer fusion + learnable-slope tanh.

Wu et al., "Deep Attention Fusion Hashing (DAFH) Model for Medical Image Retrieval"
(Bioengineering 2024, 11(7):673); notes 1.2 / 1.9 list what the paper leaves open. Choices:

* Backbone: torchvision's EfficientNet-B0 layout (the paper: B6), built from the B0 stage
  table with ``width_mult`` / ``depth_mult`` (default 1.0 / 1.0 = B0), randomly initialised (no
  third-party weights ship with HashView). B6 is ~8x B0's compute at equal input size, and B0 at
  96 px already steps ~2.7x slower than HATDH (docs/models.md), so the default input is 64 px
  (the objective's): 15 epochs on the Kather subset then take minutes on 2 CPU cores.
* "Penultimate MBConv module" (notes 1.9.1) = the penultimate stage (B0: 192 channels at
  1/32 resolution). CBAM (Woo et al. 2018: channel MLP with reduction 16 on avg- and max-pooled
  vectors, then a 7x7 conv on the channel-wise avg and max maps) is inserted there in line: the
  last stage and the head conv consume the attended map.
* Layer fusion, paper Sec. 3.2: F_concat = [GAP(F_cbam), GAP(F_head)] -> Linear1 (``fusion``
  units, default 256; width not given) -> ReLU (our choice, so that Linear1 and Linear2 do not
  collapse into one linear map); F_concat_hash = [Linear1, Flatten(F_cbam)] -> Linear2 (bits).
  Flatten needs a fixed size: F_cbam is average-pooled to ``cbam_grid`` x ``cbam_grid`` (3x3
  = B0's own 1/32 map at 96 px) first, so any input size gives the same layer shapes.
* Ptanh: h = tanh(alpha * Linear2(.)) with alpha = 1 + softplus(theta) > 1 (the paper requires
  alpha > 1 without saying how), theta = 0 at start (alpha = 1.69). The paper's formula adds
  Linear2's bias twice (notes 1.9.3); here it is added once, inside.
* The classifier (focal loss) sits on the codes, as in the paper's Algorithm 1
  (``classifier_input="codes"``, default); the text puts it on Linear1, which
  ``classifier_input="fusion"`` selects. Measured on the Kather subset (32 bits, same recipe,
  docs/benchmarks.md "Five methods"): on the codes, the focal loss shapes the codes directly;
  mAP 0.54 vs 0.43 (5 vs 3 splits). The classifier is part of the net (``n_classes``), used
  only in training.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.efficientnet import EfficientNet, MBConvConfig

from hashview.models.base import HashingNet
from hashview.models.card_limits import DAFH_CLASSIFIER_INPUTS
from hashview.models.registry import register

# torchvision's EfficientNet-B0 stages: (expand, kernel, stride, in, out, layers).
_B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
              (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
              (6, 3, 1, 192, 320, 1)]
CLASSIFIER_INPUTS = DAFH_CLASSIFIER_INPUTS


class CBAM(nn.Module):
    """Convolutional Block Attention Module (channel then spatial attention), shape-preserving."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + mx)                                  # B x C x 1 x 1

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(maps))                        # B x 1 x H x W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_weights(x)
        return x * self.spatial_weights(x)


class DAFH(HashingNet):
    arch = "dafh"

    def __init__(self, bits: int, input_size: int = 64, n_classes: int = 8,
                 width_mult: float = 1.0, depth_mult: float = 1.0, fusion: int = 256,
                 cbam_grid: int = 3, classifier_input: str = "codes",
                 stochastic_depth: float = 0.2):
        super().__init__(bits, input_size)
        if classifier_input not in CLASSIFIER_INPUTS:
            raise TypeError(f"classifier_input must be one of {CLASSIFIER_INPUTS}")
        self.n_classes, self.fusion_units = int(n_classes), int(fusion)
        self.width_mult, self.depth_mult = float(width_mult), float(depth_mult)
        self.cbam_grid, self.classifier_input = int(cbam_grid), classifier_input
        self.stochastic_depth = float(stochastic_depth)
        conf = partial(MBConvConfig, width_mult=self.width_mult, depth_mult=self.depth_mult)
        effnet = EfficientNet([conf(*stage) for stage in _B0_STAGES], dropout=0.0,
                              stochastic_depth_prob=self.stochastic_depth)
        stages = effnet.features  # stem, 7 stages, head conv
        self.stem_to_penultimate = nn.Sequential(*stages[:7])
        cbam_channels = stages[6][-1].out_channels
        head_channels = stages[8][0].out_channels
        self.cbam = CBAM(cbam_channels)
        self.last_stages = nn.Sequential(stages[7], stages[8])
        self.fusion = nn.Sequential(nn.Linear(cbam_channels + head_channels, self.fusion_units),
                                    nn.ReLU(inplace=True))
        self.hash_layer = nn.Linear(self.fusion_units + cbam_channels * self.cbam_grid ** 2, bits)
        self.slope_param = nn.Parameter(torch.zeros(1))  # alpha = 1 + softplus(theta)
        cls_in = self.fusion_units if classifier_input == "fusion" else bits
        self.classifier = nn.Linear(cls_in, self.n_classes)

    @property
    def slope(self) -> torch.Tensor:
        """Ptanh's alpha, always > 1."""
        return 1.0 + F.softplus(self.slope_param)

    def fused(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Linear1 output, pre-tanh hash logits)`` from one pass."""
        attended = self.cbam(self.stem_to_penultimate(x))
        head = self.last_stages(attended)
        concat = torch.cat([attended.mean(dim=(2, 3)), head.mean(dim=(2, 3))], dim=1)
        linear1 = self.fusion(concat)
        grid = F.adaptive_avg_pool2d(attended, self.cbam_grid).flatten(1)
        logits = self.slope * self.hash_layer(torch.cat([linear1, grid], dim=1))
        return linear1, logits

    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[1]

    def codes_and_class_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training pass: relaxed codes and the focal-loss classifier's logits."""
        linear1, logits = self.fused(x)
        codes = torch.tanh(logits)
        return codes, self.classifier(linear1 if self.classifier_input == "fusion" else codes)

    def feature_layer(self) -> nn.Module:
        # Grad-CAM target: the CBAM output, the attended map that feeds both fusion paths.
        return self.cbam

    def arch_kwargs(self) -> dict:
        return {"n_classes": self.n_classes, "width_mult": self.width_mult,
                "depth_mult": self.depth_mult, "fusion": self.fusion_units,
                "cbam_grid": self.cbam_grid, "classifier_input": self.classifier_input,
                "stochastic_depth": self.stochastic_depth}


@register("dafh")
def build_dafh(bits: int, **kw) -> DAFH:
    return DAFH(bits, **kw)
