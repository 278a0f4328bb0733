"""DCH: 4-conv CNN + FC2048 + latent binary encoding (LBE) layer + classifier.

Sapkota et al., "Deep Convolutional Hashing for Low Dimensional Binary Embedding of
Histopathological Images" (IEEE JBHI 2018), Table I, with one documented change (see
docs/models.md): the printed net flattens a 32x32x64 map into FC2048 (~134M parameters, ~270 MB
in fp16), far too big to ship. Here the conv maps are average-pooled to ``pooled_size`` x
``pooled_size`` (default 4x4, so FC2048 sees 64*4*4 = 1024 inputs): ~2.2M parameters, ~4.5 MB
in fp16 at 64 bits. Everything else follows the paper: 3x3 "same" convs (32, 32, pool, 64, 64,
pool) each with BN before ReLU, FC2048 with BN + ReLU, no dropout, LBE = FC(K) (+ BN, per the
Table I caption) + tanh, and a linear classifier on the relaxed codes used only for training.
"""

from __future__ import annotations

import torch
from torch import nn

from hashview.models.base import HashingNet
from hashview.models.registry import register


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # BN before the nonlinearity (paper: +6% validation accuracy); conv bias is redundant with BN.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DCH(HashingNet):
    arch = "dch"

    def __init__(self, bits: int, input_size: int = 128, n_classes: int = 8,
                 pooled_size: int = 4, lbe_batchnorm: bool = True):
        super().__init__(bits, input_size)
        self.n_classes = int(n_classes)
        self.pooled_size = int(pooled_size)
        self.lbe_batchnorm = bool(lbe_batchnorm)
        self.features = nn.Sequential(
            _conv_bn_relu(3, 32), _conv_bn_relu(32, 32), nn.MaxPool2d(2),
            _conv_bn_relu(32, 64), _conv_bn_relu(64, 64), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(self.pooled_size)
        self.fc = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(64 * self.pooled_size ** 2, 2048, bias=False),
            nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
        )
        # LBE: Dense(K) -> BN -> tanh. BN standardises each bit's pre-activation over the
        # training batch, so thresholding at 0 splits the data roughly in half per bit (balanced
        # bits), and it keeps tanh out of saturation early in training.
        self.lbe = nn.Linear(2048, bits, bias=not self.lbe_batchnorm)
        self.lbe_norm = nn.BatchNorm1d(bits) if self.lbe_batchnorm else nn.Identity()
        # Paper Eq. (9): the softmax layer consumes the relaxed codes b_hat, not sign(b_hat).
        self.classifier = nn.Linear(bits, self.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Paper: uniform init scaled by sqrt(fan_in) (LeCun/He-uniform style).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lbe_norm(self.lbe(self.fc(self.pool(self.features(x)))))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes)`` from the relaxed codes (training only)."""
        return self.classifier(self.forward(x))

    def codes_and_class_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass for the DCH loss: relaxed codes and class logits."""
        codes = self.forward(x)
        return codes, self.classifier(codes)

    def hash_head(self) -> nn.Linear:
        return self.lbe

    def hash_head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = super().hash_head_weights()
        if isinstance(self.lbe_norm, nn.BatchNorm1d):  # fold the eval-mode BN in
            norm = self.lbe_norm
            scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
            weight = weight * scale[:, None]
            bias = (bias - norm.running_mean) * scale + norm.bias.detach()
        return weight, bias

    def set_hash_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.lbe.weight.copy_(weight)
            if isinstance(self.lbe_norm, nn.BatchNorm1d):  # BN as the identity plus the bias
                norm = self.lbe_norm
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias)
                if self.lbe.bias is not None:
                    self.lbe.bias.zero_()
            else:
                self.lbe.bias.copy_(bias)

    def feature_layer(self) -> nn.Module:
        # Grad-CAM target: the last conv block (conv-BN-ReLU, 64 ch at input/2 resolution)
        # before the final max-pool: the finest map still carrying class-specific features.
        return self.features[4]

    def arch_kwargs(self) -> dict:
        return {"n_classes": self.n_classes, "pooled_size": self.pooled_size,
                "lbe_batchnorm": self.lbe_batchnorm}


@register("dch")
def build_dch(bits: int, **kw) -> DCH:
    return DCH(bits, **kw)


def paper_param_count(bits: int, n_classes: int = 4, padding: str = "same") -> int:
    """Trainable parameters of the net as printed in Table I (Keras layers with biases, BN
    gamma/beta), computed arithmetically; ``padding`` "same" gives ~134M, "valid" ~110M."""
    convs = [(3, 32), (32, 32), (32, 64), (64, 64)]
    count = sum((cin * 9 + 1) * cout + 2 * cout for cin, cout in convs)
    side = 128 // 4 if padding == "same" else ((128 - 4) // 2 - 4) // 2  # 32 or 29
    flat = side * side * 64
    count += (flat + 1) * 2048 + 2 * 2048        # FC2048 + BN
    count += (2048 + 1) * bits + 2 * bits         # LBE + BN
    count += (bits + 1) * n_classes               # softmax layer
    return count
