"""HATDH: MobileNetV1 (width 0.5) + HCAM attention + FC(512 -> bits) + tanh.

Alizadeh et al., "An Innovative Attention-based Triplet Deep Hashing Approach to Retrieve
Histopathology Images" (JIIM 2024). Choices the paper leaves open are explained in
docs/models.md; in short:

* torchvision has no MobileNetV1, so it is written here (Howard et al. 2017, Keras layout:
  bias-free convs, BN, ReLU6). Width multiplier 0.5 makes the last block 512 channels, which is
  the 512-d feature the paper's hash layer W in R^{L x 512} expects (no extra layer invented).
* One HCAM after the last block, before global average pooling (the "plug-in" reading; the
  ablation V5 removes exactly one attention module).
* HCAM follows paper Eqs. (1)-(7): omega1 = sigmoid(w), omega2 = 1 - omega1; two channel Conv1Ds
  (k1 from the ECA formula, k2 = 7); spatial max over channels, mean along each axis, two stacked
  7x7 convs per axis with separate weights; output X' * a_h * a_w with X' = X * a_c.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hashview.models.base import HashingNet
from hashview.models.registry import register

# (output channels at width 1.0, stride) of the 13 depthwise-separable blocks.
_MOBILENET_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                        (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """Paper Eq. (1) / ECA: nearest odd number to log2(C)/gamma + b/gamma (ECA's code rule)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv (BN, ReLU6) followed by 1x1 pointwise conv (BN, ReLU6)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(_conv_bn_relu(cin, cin, 3, stride, groups=cin),
                         _conv_bn_relu(cin, cout, 1, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 feature extractor (no classifier): ``(B,3,S,S) -> (B, C, S/32, S/32)``."""

    def __init__(self, width_mult: float = 0.5):
        super().__init__()
        def width(c: int) -> int:
            return max(8, int(c * width_mult))
        layers: list[nn.Module] = [_conv_bn_relu(3, width(32), 3, 2)]
        cin = width(32)
        for cout, stride in _MOBILENET_V1_BLOCKS:
            layers.append(DepthwiseSeparable(cin, width(cout), stride))
            cin = width(cout)
        self.features = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class HCAM(nn.Module):
    """Hybrid Coordinate Attention Module; output has the input's shape ``(B, C, H, W)``."""

    def __init__(self, channels: int, k2: int = 7, spatial_kernel: int = 7):
        super().__init__()
        k1 = eca_kernel_size(channels)
        self.k1, self.k2 = k1, k2
        # One scalar: omega1 = sigmoid(w) in [0, 1], omega2 = 1 - omega1 (Eq. 2 constraint).
        self.omega_logit = nn.Parameter(torch.zeros(1))
        self.channel_conv1 = nn.Conv1d(1, 1, k1, padding=k1 // 2, bias=False)
        self.channel_conv2 = nn.Conv1d(1, 1, k2, padding=k2 // 2, bias=False)
        p = spatial_kernel // 2
        # Eqs. (5)/(6): two stacked 7x7 convs per axis, separate weights, no activation between.
        self.h_conv1 = nn.Conv2d(1, 1, spatial_kernel, padding=p)
        self.h_conv2 = nn.Conv2d(1, 1, spatial_kernel, padding=p)
        self.w_conv1 = nn.Conv2d(1, 1, spatial_kernel, padding=p)
        self.w_conv2 = nn.Conv2d(1, 1, spatial_kernel, padding=p)

    @property
    def omega(self) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = torch.sigmoid(self.omega_logit)
        return w1, 1 - w1

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (2): per-channel weights ``(B, C)`` in (0, 1)."""
        w1, w2 = self.omega
        fused = w1 * x.mean(dim=(2, 3)) + w2 * x.amax(dim=(2, 3))       # B x C
        a = self.channel_conv2(self.channel_conv1(fused.unsqueeze(1)))  # B x 1 x C
        return torch.sigmoid(a).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refined = x * self.channel_attention(x)[:, :, None, None]       # X' = X (x) F_C
        s = refined.amax(dim=1, keepdim=True)                           # B x 1 x H x W
        a_h = torch.sigmoid(self.h_conv2(self.h_conv1(s.mean(dim=3, keepdim=True))))  # Eq. 3, 5
        a_w = torch.sigmoid(self.w_conv2(self.w_conv1(s.mean(dim=2, keepdim=True))))  # Eq. 4, 6
        return refined * a_h * a_w                                      # Eq. 7


class HATDH(HashingNet):
    arch = "hatdh"

    def __init__(self, bits: int, input_size: int = 224, width_mult: float = 0.5,
                 attention: bool = True):
        super().__init__(bits, input_size)
        self.width_mult = float(width_mult)
        self.use_attention = bool(attention)
        self.backbone = MobileNetV1(self.width_mult)
        channels = self.backbone.out_channels
        self.attention = HCAM(channels) if self.use_attention else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hash_layer = nn.Linear(channels, bits)  # Eq. (8): h = tanh(W F + v)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.in_channels > 1:  # backbone, not HCAM's 1-ch convs
                # fan_in keeps activation variance through the 27 conv layers, so even the
                # untrained default model yields image-dependent codes without fp16 underflow
                # (fan_out would shrink depthwise outputs by ~sqrt(C) per block).
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.hash_layer.weight)  # Keras Dense default (glorot_uniform)
        nn.init.zeros_(self.hash_layer.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d vector F fed to the hash layer."""
        return self.pool(self.attention(self.backbone(x))).flatten(1)

    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash_layer(self.features(x))

    def hash_head(self) -> nn.Linear:
        return self.hash_layer

    def feature_layer(self) -> nn.Module:
        # Grad-CAM target: the HCAM output (the attention-refined last feature map, the exact
        # tensor that is average-pooled into F); without attention, the last MobileNet block.
        return self.attention if self.use_attention else self.backbone.features[-1]

    def arch_kwargs(self) -> dict:
        return {"width_mult": self.width_mult, "attention": self.use_attention}


@register("hatdh")
def build_hatdh(bits: int, **kw) -> HATDH:
    return HATDH(bits, **kw)
