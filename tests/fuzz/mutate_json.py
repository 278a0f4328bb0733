"""Structure-aware mutations of JSON documents (model cards, safetensors and sidecar headers).

A mutation walks from the top of the document to a field (usually a top-level one, sometimes
deeper) and sets it to an interesting value, deletes it, nudges a number, wraps it in a list or
an object, or adds an unknown key next to it. Values that ``json.dumps`` cannot write (nesting
deeper than the recursion limit, numbers with thousands of digits, ``1e999``) are spliced into
the text as :class:`Raw` JSON.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is."""

    text: str
    label: str


DEEP = 100_000
JSON_VALUES: tuple[Any, ...] = (
    -1, 0, 1, 7, 63, 2 ** 31, 2 ** 32 + 8, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30, 0.5, -0.0,
    1e308, -1e308, math.nan, math.inf, -math.inf, True, False, None,
    "", "64", "binary", "float", "ivf", "x" * 100_000, "../../../../etc/passwd",
    "/etc/hostname", "\u0000", "\ud800 lone surrogate", "line one\nline two",
    [], [1, 2, 3], [0.5, 0.5, 0.5, 0.5], ["a", "b", "c"], {}, {"a": {"b": {"c": 1}}},
    Raw("[" * DEEP + "]" * DEEP, f"list nested {DEEP} deep"),
    Raw('{"a":' * DEEP + "1" + "}" * DEEP, f"object nested {DEEP} deep"),
    Raw("1e999", "1e999"), Raw("1" + "0" * 5000, "an integer of 5001 digits"), Raw("-0", "-0"),
)
WHOLE_DOCUMENTS: tuple[Any, ...] = ([], None, "card", 1, Raw("[" * DEEP, "an unclosed list"))


def describe(value: Any) -> str:
    if isinstance(value, Raw):
        return value.label
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:12]!r}... ({len(value)} chars)"
    return repr(value)


def dumps(document: Any) -> str:
    """JSON text of ``document`` with any :class:`Raw` value spliced in."""
    raws: list[Raw] = []

    def placeholder(value: Raw) -> str:
        raws.append(value)
        return f"@@raw-{len(raws) - 1}@@"

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            return placeholder(node)
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(document), allow_nan=True)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw-{i}@@"', raw.text, 1)
    return text


def _walk(rng: random.Random, document: Any, deeper: float) -> tuple[Any, Any, str]:
    """(container, key, dotted path) of a field; each level goes deeper with ``deeper``."""
    parent, key, path = None, None, ""
    node = document
    while isinstance(node, (dict, list)) and node and (parent is None or rng.random() < deeper):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, rng.choice(keys)
        path = f"{path}.{key}" if path else str(key)
        node = node[key]
    return parent, key, path


def mutate_json(rng: random.Random, document: Any, deeper: float = 0.35) -> tuple[Any, str]:
    """Mutate ``document`` (changed in place where possible); the new document and what
    was done. ``deeper``: the chance of going one level further into an object or list."""
    if rng.random() < 0.03 or not isinstance(document, (dict, list)) or not document:
        value = rng.choice(WHOLE_DOCUMENTS)
        return value, f"whole document replaced by {describe(value)}"
    parent, key, path = _walk(rng, document, deeper)
    old = parent[key]
    action = rng.choice(("set", "set", "set", "delete", "nudge", "wrap", "add"))
    if action == "delete":
        del parent[key]
        return document, f"delete {path}"
    if action == "nudge" and isinstance(old, (int, float)) and not isinstance(old, bool):
        new = rng.choice((old + 1, old - 1, -old, old * 1024, old + 0.5, old * 2 ** 40))
        parent[key] = new
        return document, f"{path}: {describe(old)} -> {describe(new)}"
    if action == "wrap":
        parent[key] = rng.choice(([old], {"value": old}, str(old)))
        return document, f"{path}: {describe(old)} wrapped as {type(parent[key]).__name__}"
    value = rng.choice(JSON_VALUES)
    if action == "add" and isinstance(parent, dict):
        name = rng.choice(("unknown", "__class__", "", "sha256", "a" * 300))
        parent[name] = value
        return document, f"add key {name[:20]!r} = {describe(value)} beside {path}"
    parent[key] = value
    return document, f"set {path} = {describe(value)}"
