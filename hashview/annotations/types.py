"""Types shared by the annotation readers and writers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hashview.errors import HashViewError


class AnnotationError(HashViewError):
    """An annotation file that cannot be read: not JSON, not GeoJSON, too large, bad shapes."""


@dataclass
class Annotation:
    """One annotated region of a slide.

    ``geometry`` is a shapely ``Polygon`` or ``MultiPolygon`` in level-0 pixels (origin at the
    top left of the full-resolution image, as QuPath writes it); ``label`` is the class name, or
    None when the region has no class; ``properties`` are the feature's other properties as read.
    """

    geometry: object
    label: Optional[str] = None
    properties: dict = field(default_factory=dict)
