"""Model cards: the JSON sidecar (``NAME.json``) describing a ``NAME.safetensors`` weights file.

A card carries everything needed to rebuild the net (``arch``, ``bits``, ``input_size``,
``arch_kwargs``), to preprocess images exactly as in training (``mean``/``std`` applied to pixels
scaled to [0, 1]), to check the weights (``sha256`` of the .safetensors bytes) and to tell the
user what the model is (``description``, ``training``, ``split``, ``metrics``, ``class_names``).

``code_kind`` says what the net's codes are: ``"binary"`` (packed sign bits, Hamming search; the
default, and what a card without the key means) or ``"float"`` (L2-normalised float32
descriptors of ``bits`` dimensions, cosine search).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hashview import __version__
from hashview.errors import ModelError

REQUIRED_KEYS = ("name", "arch", "bits", "input_size")
# Default normalisation (x/255 - 0.5) / 0.5 maps pixels to [-1, 1], as Keras MobileNet's
# preprocess_input does; it assumes no ImageNet statistics, which H&E tiles do not share anyway.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
CODE_KINDS = ("binary", "float")


@dataclass
class ModelCard:
    name: str
    arch: str
    bits: int                  # code length: bits for binary models, dimensions for float ones
    input_size: int
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    arch_kwargs: dict = field(default_factory=dict)
    description: str = ""
    training: dict = field(default_factory=dict)
    split: Optional[dict] = None
    metrics: dict = field(default_factory=dict)
    sha256: str = ""
    created: str = ""
    hashview_version: str = __version__
    trained: bool = False
    n_classes: Optional[int] = None
    class_names: list = field(default_factory=list)
    # The tiling the model was trained at (tile side in px, µm/px): libraries built with this
    # model use it unless told otherwise, so slide tiles match the training tiles' scale.
    tile_size: Optional[int] = None
    target_mpp: Optional[float] = None
    code_kind: str = "binary"  # "binary" | "float" (see the module notes)
    # Where the card was found ("bundled", "user", "builtin" or a path); not written to JSON.
    source: str = field(default="", compare=False)

    @property
    def code_bytes(self) -> int:
        """Bytes per stored code: bits / 8 packed, or 4 per float32 dimension."""
        return self.bits * 4 if self.code_kind == "float" else self.bits // 8

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, path: str | Path | None = None) -> "ModelCard":
        if not isinstance(data, dict):
            raise ModelError(path, "model card is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ModelError(path, f"model card lacks required key(s): {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        # Unknown keys (written by a newer HashView) are ignored, not fatal.
        card = cls(**{k: v for k, v in data.items() if k in known})
        card._validate(path)
        return card

    @classmethod
    def from_json(cls, text: str, path: str | Path | None = None) -> "ModelCard":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelError(path, f"model card is not valid JSON ({exc})") from exc
        return cls.from_dict(data, path)

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(path, f"cannot read model card ({exc})") from exc
        return cls.from_json(text, path)

    def _validate(self, path: str | Path | None) -> None:
        def bad(reason: str) -> ModelError:
            return ModelError(path, f"invalid model card: {reason}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("'name' must be a non-empty string")
        if not isinstance(self.arch, str) or not self.arch:
            raise bad("'arch' must be a non-empty string")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits <= 0 \
                or self.bits % 8:
            raise bad(f"'bits' must be a positive multiple of 8, got {self.bits!r}")
        if self.code_kind not in CODE_KINDS:
            raise bad(f"'code_kind' must be one of {', '.join(CODE_KINDS)}, "
                      f"got {self.code_kind!r}")
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) \
                or self.input_size <= 0:
            raise bad(f"'input_size' must be a positive integer, got {self.input_size!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise bad(f"'{key}' must be a list of 3 numbers")
            setattr(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise bad("'std' values must be positive")
        for key in ("arch_kwargs", "training", "metrics"):
            if not isinstance(getattr(self, key), dict):
                raise bad(f"'{key}' must be a JSON object")
        if self.split is not None and not isinstance(self.split, dict):
            raise bad("'split' must be a JSON object or null")
        if not isinstance(self.class_names, list):
            raise bad("'class_names' must be a list")
        if not isinstance(self.sha256, str):
            raise bad("'sha256' must be a string")
