"""A library's stain reference: every tile, stored and queried, normalised to one stain.

A library made with ``hashview index --stain-normalise REF`` keeps the fitted reference (not
its pixels) in the root attribute ``stain_reference``: JSON text of small arrays (see
docs/library-format.md), never a pickle. Indexing more into that library and every search of it
re-stain each tile to the reference (:mod:`hashview.stain`, Macenko with Reinhard fallback,
bare glass left alone) before encoding, so stored codes and query codes stay comparable.

:func:`hashview.library.stain_attribute.parse_reference` checks a stored text completely (a
library may come from anyone) when the library is opened; :func:`normaliser_of` turns a checked
one into a :class:`hashview.stain.StainTransfer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from hashview.library.stain_attribute import parse_reference


def reference_text(transfer) -> str:
    """The JSON text stored for a fitted :class:`hashview.stain.StainTransfer`."""
    return json.dumps(transfer.reference(), separators=(",", ":"))


def fit_reference_text(spec: Union[str, Path], method: str = "macenko") -> str:
    """Fit ``spec`` (an image, ``SLIDE@x,y,w,h`` or a folder) and return the text to store."""
    from hashview.stain import fit_stain_target
    return reference_text(fit_stain_target(spec, method))


def normaliser_of(text: str, path: Union[str, Path, None] = None):
    """The StainTransfer a stored reference stands for (LibraryError naming ``path``)."""
    from hashview.errors import LibraryError
    from hashview.stain import StainTransfer
    try:
        reference = parse_reference(text)
    except ValueError as exc:
        raise LibraryError(path, f"stain reference {exc}") from None
    return StainTransfer.from_reference(**reference)
