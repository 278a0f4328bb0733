"""Choosing the torch device a model runs on.

Its own module so that loading a model (:mod:`hashview.models.store`) and encoding with it
(:mod:`hashview.encode`, which imports the store) can both use it.
"""

from __future__ import annotations

from typing import Union

import torch

from hashview.errors import ModelError


def pick_device(requested: Union[str, torch.device, None] = "auto") -> torch.device:
    """"auto"/None -> CUDA when available, else CPU; "cpu"; "cuda" or "cuda:N" (must exist)."""
    if isinstance(requested, torch.device):
        requested = str(requested)
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ModelError(None, f"unknown device {requested!r} (use auto, cpu or cuda)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(None, "device 'cuda' was requested but CUDA is not available "
                                   "(no NVIDIA GPU/driver, or a CPU-only PyTorch); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(None, f"device {requested!r} does not exist "
                                   f"({torch.cuda.device_count()} CUDA device(s))")
    elif device.type != "cpu":
        raise ModelError(None, f"unsupported device {requested!r} (use auto, cpu or cuda)")
    return device
