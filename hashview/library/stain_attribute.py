"""The ``stain_reference`` root attribute of a library, checked (a library may come from anyone).

It holds JSON text of small arrays, never a pickle (see docs/library-format.md and
:mod:`hashview.stain_reference`, which fits it and turns it into a normaliser).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

ATTRIBUTE = "stain_reference"
MAX_TEXT = 4096          # a reference is a few hundred bytes
MAX_NAME = 512
# (key, shape) of the arrays each method needs; values must be finite
_ARRAYS = {"lab_mean": (3,), "lab_std": (3,), "he": (3, 2), "max_c": (2,)}
_NEEDED = {"macenko": ("lab_mean", "lab_std", "he", "max_c"),
           "reinhard": ("lab_mean", "lab_std")}


def _shape_of(value) -> Optional[tuple]:
    """The shape of a nested list of finite numbers, None for anything else."""
    if isinstance(value, list):
        shapes = {_shape_of(item) for item in value}
        if len(shapes) != 1 or None in shapes:
            return None if value else (0,)
        return (len(value), *shapes.pop())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return ()
    return None


def parse_reference(text) -> dict:
    """The checked reference ``text`` holds; ValueError saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError("is not text")
    if len(text) > MAX_TEXT:
        raise ValueError(f"is {len(text)} characters long, more than {MAX_TEXT}")
    try:
        found = json.loads(text)
    except ValueError:
        raise ValueError("is not valid JSON") from None
    if not isinstance(found, dict):
        raise ValueError("is not a JSON object")
    method = found.get("method")
    if method not in _NEEDED:
        raise ValueError(f"names no known method ({str(method)[:40]!r})")
    name = found.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise ValueError("has a bad name")
    for key in _NEEDED[method]:
        if _shape_of(found.get(key)) != _ARRAYS[key]:
            raise ValueError(f"{key} is not {'x'.join(map(str, _ARRAYS[key]))} finite numbers")
    if min(found["lab_std"]) < 0 or ("max_c" in _NEEDED[method] and min(found["max_c"]) <= 0):
        raise ValueError("has a negative spread or a concentration that is not positive")
    return {"method": method, "name": name, **{k: found[k] for k in _NEEDED[method]}}


def describe(text: str) -> str:
    """``"macenko to he-target.png"`` for ``hashview info`` (the text is already checked)."""
    reference = parse_reference(text)
    return f"{reference['method']} to {Path(reference['name']).name or 'a stored reference'}"
