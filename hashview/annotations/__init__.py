"""Annotations drawn on slides (QuPath GeoJSON): read them, and label tiles by the regions.

Qt-free. :func:`hashview.annotations.qupath.read_annotations` reads a QuPath GeoJSON export
into :class:`Annotation` objects (shapely geometry in level-0 pixels, class name, properties).
"""

from hashview.annotations.types import Annotation, AnnotationError

__all__ = ["Annotation", "AnnotationError"]
