"""Filter text as the library panel and the results' Where field read it (no Qt here).

``stain=HE site="left colon" tumour`` holds conditions (``key=value``, quoted when the value
has spaces) matched by the core's :func:`hashview.library.metadata.sources_where`, and free
words matched against a source's name, label, patient id and metadata values.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Iterable

from hashview.library.metadata import parse_conditions

Condition = tuple[str, str]


def split_filter(text: str) -> tuple[list[Condition], list[str]]:
    """(conditions, lower-cased free words) of ``text``; ValueError (one line) for a condition
    without a key such as ``=HE``."""
    try:
        tokens = shlex.split(text)
    except ValueError:  # an open quote while the user types: read it as plain words
        tokens = text.split()
    conditions = parse_conditions(t for t in tokens if "=" in t)
    words = [t.casefold() for t in tokens if "=" not in t]
    return conditions, words


def sources_matching(library_path: str | Path, conditions: Iterable[Condition]) -> set[int]:
    """Ids of the sources of the library at ``library_path`` meeting every condition; a
    LibraryError (one line naming the known keys) for an unknown key."""
    from hashview.library import Library
    from hashview.library.metadata import sources_where

    with Library.open(library_path, mode="r") as library:
        return sources_where(library, conditions)
