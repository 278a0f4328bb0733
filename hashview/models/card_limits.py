"""What a model card may ask for: the architectures and the range of every field that sizes a net.

A model can come from anyone, and its card's fields size the net that is built before the
weights are checked: an unchecked ``input_size`` of 100000, ``bits`` of 2**30 or a huge
``arch_kwargs`` value would ask PyTorch for terabytes. Each architecture therefore lists the
keyword arguments it accepts with their types and bounds, and a card is checked against them when
it is read. The bounds are wide (several times the shipped configurations) yet keep every net
within a few hundred MB. This module imports nothing heavy (no torch, no torchvision), so listing
models stays cheap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

INPUT_SIZE_RANGE = (16, 1024)  # model input side in pixels (some architectures allow less)
BITS_RANGE = (8, 1024)         # code length (descriptor dimensions for float models)
MAX_NAME_LENGTH = 128
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")
PLAIN_NAME_RULE = "letters, digits, '-', '_' and '.', not starting with '.'"


def is_plain_name(name: Any) -> bool:
    """A name that is safe as a file stem and as text: no path separator, no leading dot, no
    control or look-alike characters (a card's name ends up in libraries and on screen)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH
            and _PLAIN_NAME.match(name) is not None)


def plain_name(text: str, fallback: str = "model") -> str:
    """``text`` made a plain name: every other character becomes ``_`` (a folder called
    "my data" names its models ``...-my_data``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")[:MAX_NAME_LENGTH]
    return name if is_plain_name(name) else fallback


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (a hostile card's values can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a finite float (JSON numbers; never a bool, NaN or infinity)."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class Bound:
    """The type and range of one ``arch_kwargs`` value."""

    kind: str                      # "int", "float", "bool", "choice" or "int_list"
    low: float = 0
    high: float = 0
    choices: tuple = ()
    length: int = 0                # of an "int_list"

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is out of bounds, or None."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if self.kind == "int_list":
            if not isinstance(value, (list, tuple)) or len(value) != self.length or not all(
                    is_int(v) and self.low <= v <= self.high for v in value):
                return (f"must be a list of {self.length} integers "
                        f"in {self.low:g}..{self.high:g}")
            return None
        fits = is_int(value) if self.kind == "int" else is_number(value)
        if not fits or not self.low <= value <= self.high:
            kind = "an integer" if self.kind == "int" else "a number"
            return f"must be {kind} in {self.low:g}..{self.high:g}"
        return None


def _int(low: int, high: int) -> Bound:
    return Bound("int", low, high)


def _float(low: float, high: float) -> Bound:
    return Bound("float", low, high)


BOOL = Bound("bool")
DAFH_CLASSIFIER_INPUTS = ("fusion", "codes")  # what DAFH's classifier reads


@dataclass(frozen=True)
class ArchSpec:
    code_kind: str                 # "binary" or "float"
    kwargs: dict[str, Bound] = field(default_factory=dict)
    input_sizes: tuple[int, int] = INPUT_SIZE_RANGE


# The built-in architectures (hashview/models/NAME.py registers NAME) and their keyword arguments.
ARCHITECTURES: dict[str, ArchSpec] = {
    "hatdh": ArchSpec("binary", {"width_mult": _float(0.125, 2.0), "attention": BOOL}),
    # DCH convolves at full input resolution: 512 px already takes ~100 MB an image.
    "dch": ArchSpec("binary", {"n_classes": _int(1, 10_000), "pooled_size": _int(1, 8),
                               "lbe_batchnorm": BOOL}, input_sizes=(16, 512)),
    "dafh": ArchSpec("binary", {
        "n_classes": _int(1, 10_000), "width_mult": _float(0.25, 2.0),
        "depth_mult": _float(0.25, 2.0), "fusion": _int(8, 4096), "cbam_grid": _int(1, 8),
        "classifier_input": Bound("choice", choices=DAFH_CLASSIFIER_INPUTS),
        "stochastic_depth": _float(0.0, 0.9)}),
    # MTH's self-attention is quadratic in positions: its paper's 256 px input takes ~270 MB an
    # image, 1024 px would take 70 GB.
    "mth": ArchSpec("binary", {"width": _int(1, 128), "growth": _int(1, 64),
                               "layers": _int(1, 16), "heads": _int(1, 32),
                               "feature_dim": _int(8, 8192)}, input_sizes=(16, 256)),
    "lgffem": ArchSpec("float", {
        "dims": Bound("int_list", 1, 768, length=4), "depths": Bound("int_list", 1, 12, length=4),
        "neck_channels": _int(4, 512), "neck_layers": _int(1, 8),
        "head_dropout": _float(0.0, 0.9), "gem_p": _float(1.0, 16.0),
        "drop_path": _float(0.0, 0.9)}),
}


def architecture_problem(arch: Any, bits: Any, input_size: Any, arch_kwargs: Any,
                         code_kind: Any = None) -> Optional[str]:
    """Why these card fields cannot describe a net HashView will build, or None
    (``code_kind`` None: not checked)."""
    spec = ARCHITECTURES.get(arch) if isinstance(arch, str) else None
    if spec is None:
        return f"'arch' must be one of {', '.join(sorted(ARCHITECTURES))}, got {shown(arch)}"
    low, high = BITS_RANGE
    if not is_int(bits) or not low <= bits <= high or bits % 8:
        return f"'bits' must be a multiple of 8 in {low}..{high}, got {shown(bits)}"
    low, high = spec.input_sizes
    if not is_int(input_size) or not low <= input_size <= high:
        return (f"'input_size' of a {arch} model must be an integer in {low}..{high}, "
                f"got {shown(input_size)}")
    if code_kind is not None and code_kind != spec.code_kind:
        return f"'code_kind' of a {arch} model is {spec.code_kind!r}, got {shown(code_kind)}"
    if not isinstance(arch_kwargs, dict):
        return "'arch_kwargs' must be a JSON object"
    for key, value in arch_kwargs.items():
        bound = spec.kwargs.get(key)
        if bound is None:
            return (f"'arch_kwargs' has {shown(key)}, which {arch} does not take "
                    f"(it takes: {', '.join(spec.kwargs)})")
        problem = bound.problem(value)
        if problem:
            return f"'arch_kwargs.{key}' {problem}, got {shown(value)}"
    return None
