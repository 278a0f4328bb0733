"""Architecture registry: one builder per architecture name.

Builders are plain functions ``builder(bits: int, **kw) -> HashingNet`` registered with
``@register("name")``; ``build_model`` is the only way the rest of HashView constructs a net, so a
model card's ``arch`` + ``bits`` + ``arch_kwargs`` is enough to rebuild it. The built-in
architectures are those of :data:`hashview.models.card_limits.ARCHITECTURES`, which also bounds
each one's keyword arguments: a card naming any other architecture is refused when read.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict

from hashview.errors import ModelError
from hashview.models.card_limits import ARCHITECTURES

_BUILDERS: Dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``builder(bits, **kw) -> HashingNet`` under ``name``."""
    def decorate(builder: Callable) -> Callable:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"architecture {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder
    return decorate


def available_architectures() -> list[str]:
    _ensure_builtin_architectures()
    return sorted(_BUILDERS)


# Built-in architectures, each module imported when that architecture is first built:
# DAFH and LGFFEM import torchvision (~1.1 s on 2 cores), which loading an MTH, DCH or HATDH
# model (the app's start-up) never needs.
_BUILTIN = tuple(ARCHITECTURES)  # hashview/models/NAME.py registers NAME


def build_model(arch: str, bits: int, **kw):
    """Build a fresh (randomly initialised) net of architecture ``arch`` with ``bits`` bits."""
    if arch in _BUILTIN and arch not in _BUILDERS:
        importlib.import_module(f"hashview.models.{arch}")
    builder = _BUILDERS.get(arch)
    if builder is None:
        _ensure_builtin_architectures()  # so that the error lists every known one
        known = ", ".join(sorted(_BUILDERS)) or "none"
        raise ModelError(None, f"unknown architecture {arch!r} (known: {known})")
    if not isinstance(bits, int) or bits <= 0 or bits % 8:
        # Codes are stored packed (np.packbits), so the bit count must fill whole bytes.
        raise ModelError(None, f"bits must be a positive multiple of 8, got {bits!r}")
    try:
        return builder(bits, **kw)
    except TypeError as exc:  # unknown/invalid keyword argument from a model card
        raise ModelError(None, f"cannot build {arch!r}: {exc}") from exc


def _ensure_builtin_architectures() -> None:
    # Importing the modules runs their @register decorators; done lazily so that importing
    # the registry alone never creates a circular import.
    for name in _BUILTIN:
        importlib.import_module(f"hashview.models.{name}")
