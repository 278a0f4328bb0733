"""MTH: multi-scale dense blocks + convolutional self-attention + dense block + FC1024 + hash head.

Chen et al., "Multi-scale Triplet Hashing for Medical Image Retrieval" (Comput. Biol. Med. 155,
2023). Our copy of the paper is an incomplete machine translation without equations or
experiments, so the net follows the reconstruction in the notes (3.3, 3.6); every part below
marked [RECON] is our reading, not the paper's text:

* Multi-scale module (paper): three parallel convs of 16 filters, 1x1 / 3x3 / 5x5 ("same"
  padding), each followed by its own DenseBlock (DenseNet-B bottleneck layers BN-ReLU-1x1
  conv(4c)-BN-ReLU-3x3 conv(c), growth c = 8, d = 4 layers), channels concatenated.
  Output channels c0 + c*d = 48 per branch, 144 in all (the paper's "c0 + c(d-1)" contradicts
  its own 48, notes 3.6.2). [RECON] The paper's 4x spatial reduction (256 -> 64) is one 4x4/4
  max-pool right after the three convs, before the dense blocks (cheapest placement).
* Convolutional self-attention [RECON]: 1x1 convs give Q, K, V; ``heads`` heads (default 4) of
  key width e_k = 144 / heads attend over the spatial positions (the 1x1 projections are the
  "channel-domain interaction"; a per-head e_k from a 1x1 conv only fits spatial tokens),
  softmax(Q K^T / sqrt(e_k)) V, heads concatenated, a 1x1 output conv W_a, plus the input
  (residual, unscaled).
* Second DenseBlock (c = 8, d = 4): 144 -> 176 channels.
* [RECON] Global average pooling before FC1024 (flattening would need ~738M weights at the
  paper's size), FC1024 + ReLU = the deep feature D used by the feature-level triplet term,
  hash layer FC(bits) + tanh. The class layer (softmax on D) and the code projection of the
  semantic term are training-only and live in the objective (``objectives/mth.py``).
* Input: 64 px by default (paper 256), so that a model trains in minutes on 2 CPU cores.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hashview.models.base import HashingNet
from hashview.models.registry import register


class DenseLayer(nn.Module):
    """DenseNet-B bottleneck layer; returns the input with ``growth`` new channels appended."""

    def __init__(self, cin: int, growth: int, bottleneck: int = 4):
        super().__init__()
        width = bottleneck * growth
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseBlock(nn.Sequential):
    """``layers`` dense layers: ``cin`` -> ``cin + growth * layers`` channels, same H x W."""

    def __init__(self, cin: int, growth: int = 8, layers: int = 4):
        super().__init__(*(DenseLayer(cin + i * growth, growth) for i in range(layers)))
        self.out_channels = cin + growth * layers


class MultiScaleDense(nn.Module):
    """1x1 / 3x3 / 5x5 convs (``width`` filters each) -> 4x max-pool -> one DenseBlock per
    branch -> channel concatenation."""

    def __init__(self, width: int = 16, growth: int = 8, layers: int = 4, reduction: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, width, k, padding=k // 2) for k in (1, 3, 5))
        self.pool = nn.MaxPool2d(reduction)
        self.blocks = nn.ModuleList(DenseBlock(width, growth, layers) for _ in range(3))
        self.out_channels = 3 * self.blocks[0].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(self.pool(conv(x)))
                          for conv, block in zip(self.convs, self.blocks)], dim=1)


class ConvSelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions with 1x1-conv Q/K/V, plus a residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise TypeError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.heads, self.key_width = heads, channels // heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)  # W_a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.key_width, h * w).unbind(1)
        scores = torch.einsum("bnei,bnej->bnij", q, k) / math.sqrt(self.key_width)
        heads = torch.einsum("bnij,bnej->bnei", scores.softmax(dim=-1), v)
        return x + self.out(heads.reshape(b, c, h, w))


class MTH(HashingNet):
    arch = "mth"

    def __init__(self, bits: int, input_size: int = 64, width: int = 16, growth: int = 8,
                 layers: int = 4, heads: int = 4, feature_dim: int = 1024):
        super().__init__(bits, input_size)
        self.width, self.growth, self.layers = int(width), int(growth), int(layers)
        self.heads, self.feature_dim = int(heads), int(feature_dim)
        self.multi_scale = MultiScaleDense(self.width, self.growth, self.layers)
        channels = self.multi_scale.out_channels
        self.attention = ConvSelfAttention(channels, self.heads)
        self.dense = DenseBlock(channels, self.growth, self.layers)
        self.post = nn.Sequential(nn.BatchNorm2d(self.dense.out_channels), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(self.dense.out_channels, self.feature_dim),
                                nn.ReLU(inplace=True))
        self.hash_layer = nn.Linear(self.feature_dim, bits)

    def deep_features(self, x: torch.Tensor) -> torch.Tensor:
        """D(x): the FC1024 + ReLU output, ``(B, feature_dim)``."""
        maps = self.post(self.dense(self.attention(self.multi_scale(x))))
        return self.fc(maps.mean(dim=(2, 3)))

    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash_layer(self.deep_features(x))

    def codes_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training pass: relaxed codes and the deep features D."""
        features = self.deep_features(x)
        return torch.tanh(self.hash_layer(features)), features

    def hash_head(self) -> nn.Linear:
        return self.hash_layer

    def feature_layer(self) -> nn.Module:
        # Grad-CAM target: the last conv map (second DenseBlock, after its BN-ReLU), the tensor
        # that is average-pooled into D.
        return self.post

    def arch_kwargs(self) -> dict:
        return {"width": self.width, "growth": self.growth, "layers": self.layers,
                "heads": self.heads, "feature_dim": self.feature_dim}


@register("mth")
def build_mth(bits: int, **kw) -> MTH:
    return MTH(bits, **kw)
