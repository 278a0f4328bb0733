"""Base class shared by every hashing architecture."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class HashingNet(nn.Module):
    """A network mapping ``(B, 3, S, S)`` images to ``(B, bits)`` codes.

    ``bits`` is the code length: bits for binary models, dimensions for float models.

    ``code_kind = "binary"`` (the default): ``forward`` gives relaxed codes in (-1, 1); the
    stored codes are ``sign(forward(x))`` with sign(0) = -1, which equals
    ``sign(hash_logits(x))`` because tanh preserves sign and zero; search is by Hamming distance.
    ``code_kind = "float"``: ``forward`` gives L2-normalised float descriptors and search is by
    cosine similarity; ``sign(forward(x))`` is then the model's binarised variant.

    Subclasses set ``arch``, ``bits``, ``input_size`` and implement :meth:`hash_logits` (the
    pre-tanh hash-layer activation, or the unnormalised descriptor of a float model).
    """

    arch: str = ""
    code_kind: str = "binary"

    def __init__(self, bits: int, input_size: int):
        super().__init__()
        self.bits = int(bits)
        self.input_size = int(input_size)

    def hash_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the hash layer, ``(B, bits)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.hash_logits(x))

    def forward_with_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(relaxed codes, pre-tanh logits)`` from one pass (for losses needing both)."""
        logits = self.hash_logits(x)
        return torch.tanh(logits), logits

    def hash_head(self) -> Optional[nn.Linear]:
        """The one linear layer whose output gives the hash logits (see
        :meth:`hash_head_weights`), for refitting the head on frozen features
        (:mod:`hashview.training.head_fit`); None when the codes come from anything else."""
        return None

    def hash_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of :meth:`hash_head` for ``x`` (what a refitted head is fitted on), from
        one forward pass; gradients flow unless the caller turns them off."""
        captured = []
        hook = self.hash_head().register_forward_hook(
            lambda _module, inputs, _output: captured.append(inputs[0]))
        try:
            self.hash_logits(x)
        finally:
            hook.remove()
        return captured[0]

    def hash_head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with ``hash_logits(x) == W f + b`` in eval mode, ``f`` the input of
        :meth:`hash_head`."""
        head = self.hash_head()
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        return head.weight.detach().clone(), bias.detach().clone()

    def set_hash_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Make ``hash_logits(x) == weight f + bias`` in eval mode."""
        head = self.hash_head()
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)

    def feature_layer(self) -> nn.Module:
        """The module whose output a Grad-CAM hook should capture (a 4-D feature map)."""
        raise NotImplementedError

    def arch_kwargs(self) -> dict:
        """Keyword arguments that, with ``arch`` and ``bits``, rebuild this net exactly."""
        return {}

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, bits={self.bits}, input_size={self.input_size}"
