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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hashview import __version__
from hashview.code_kinds import code_kind
from hashview.errors import ModelError
from hashview.fileio import read_regular_file
from hashview.models.card_limits import (PLAIN_NAME_RULE, architecture_problem, is_int,
                                         is_number, is_plain_name, shown)

REQUIRED_KEYS = ("name", "arch", "bits", "input_size")
# Default normalisation (x/255 - 0.5) / 0.5 maps pixels to [-1, 1], as Keras MobileNet's
# preprocess_input does; it assumes no ImageNet statistics, which H&E tiles do not share anyway.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
# Real cards are a few hundred KB and 4 levels deep; the bounds keep a hostile card from costing
# much memory, or the recursion that copying a deeply nested value takes.
MAX_CARD_BYTES = 32 * 2**20
MAX_CARD_DEPTH = 32
_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")


QUALITIES = (None, "ok", "collapsed", "worse_than_start", "no_gain")
# What each verdict of the held-out report warns of, in the words every model list uses
# (capitals: a warning must stand out in a list of names).
QUALITY_WARNINGS = {"collapsed": "COLLAPSED", "worse_than_start": "WORSE THAN ITS START",
                    "no_gain": "NO BETTER THAN ITS START"}


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
    # A trained model's verdict from its held-out report (hashview.training.report): "ok",
    # "collapsed", "worse_than_start" or "no_gain"; None for models trained before the report
    # existed.
    quality: Optional[str] = None
    # Where the card was found ("bundled", "user", "builtin" or a path); not written to JSON.
    source: str = field(default="", compare=False)

    def warnings(self) -> list[str]:
        """What the held-out report of this model warns of, in words, for the model lists of
        the CLI and the app: its verdict when not "ok", and a bundled model that did better on
        the same held-out part (``metrics["bundled_better"]``, see hashview.training.report)."""
        found = [QUALITY_WARNINGS[self.quality]] if self.quality in QUALITY_WARNINGS else []
        metrics = self.metrics if isinstance(self.metrics, dict) else {}  # unvalidated cards
        outdone = metrics.get("bundled_better")
        if outdone:
            name = outdone if is_plain_name(outdone) else shown(outdone)
            found.append(f"{name} DID BETTER ON ITS HELD-OUT PART")
        return found

    @property
    def code_bytes(self) -> int:
        """Bytes per stored code: bits / 8 packed, or 4 per float32 dimension."""
        return code_kind(self.code_kind).encoded_bytes(self.bits)

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
        card.validate(path)
        return card

    @classmethod
    def from_json(cls, text: str | bytes, path: str | Path | None = None) -> "ModelCard":
        try:
            data = json.loads(text)
        except RecursionError:
            raise ModelError(path, "model card is not valid JSON (nested too deeply)") from None
        except ValueError as exc:  # also UnicodeDecodeError of bytes that are not UTF-8
            raise ModelError(path, f"model card is not valid JSON ({exc})") from exc
        if _nesting_depth(data) > MAX_CARD_DEPTH:
            raise ModelError(path, f"model card is nested more than {MAX_CARD_DEPTH} levels deep")
        return cls.from_dict(data, path)

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        try:
            data = read_regular_file(path, MAX_CARD_BYTES)
        except OSError as exc:
            raise ModelError(path, f"cannot read model card ({exc.strerror or exc})") from exc
        return cls.from_json(data, path)

    def validate(self, path: str | Path | None = None) -> None:
        """Raise ``ModelError`` (naming ``path`` and the field) unless every field has its type
        and range; done whenever a card is read or written."""
        problem = self._problem()
        if problem:
            raise ModelError(path, f"invalid model card: {problem}")

    def _problem(self) -> Optional[str]:
        """The first field that is missing its type or range, or None."""
        if not is_plain_name(self.name):
            return f"'name' must be a plain name ({PLAIN_NAME_RULE}), got {shown(self.name)}"
        problem = architecture_problem(self.arch, self.bits, self.input_size, self.arch_kwargs,
                                       self.code_kind)
        if problem:
            return problem
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
                    is_number(v) for v in value):
                return f"'{key}' must be a list of 3 finite numbers"
            setattr(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            return "'std' values must be positive"
        for key in ("training", "metrics"):
            if not isinstance(getattr(self, key), dict):
                return f"'{key}' must be a JSON object"
        if self.split is not None and not isinstance(self.split, dict):
            return "'split' must be a JSON object or null"
        if not isinstance(self.class_names, list) or not all(
                isinstance(c, str) for c in self.class_names):
            return "'class_names' must be a list of strings"
        if self.n_classes is not None and not (is_int(self.n_classes) and self.n_classes >= 1):
            return f"'n_classes' must be a positive integer or null, got {shown(self.n_classes)}"
        if not isinstance(self.sha256, str) or (self.sha256 and not _SHA256.match(self.sha256)):
            return "'sha256' must be 64 hexadecimal digits"
        for key in ("description", "created", "hashview_version"):
            if not isinstance(getattr(self, key), str):
                return f"'{key}' must be a string"
        if not isinstance(self.trained, bool):
            return "'trained' must be true or false"
        if self.quality not in QUALITIES:
            return (f"'quality' must be one of {', '.join(map(str, QUALITIES))}, "
                    f"got {shown(self.quality)}")
        return self._tiling_problem()

    def _tiling_problem(self) -> Optional[str]:
        if self.tile_size is None and self.target_mpp is None:
            return None
        from hashview.tiling import TilingParams  # the tiling's own bounds, not a copy of them

        try:
            TilingParams(**{k: v for k, v in (("tile_size", self.tile_size),
                                              ("target_mpp", self.target_mpp)) if v is not None})
        except ValueError as exc:
            return f"'tile_size'/'target_mpp': {exc}"
        return None


def _nesting_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_CARD_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest
