"""Read QuPath's GeoJSON export of annotations.

QuPath (File > Export objects as GeoJSON, or ``exportObjectsToGeoJson``) writes a
FeatureCollection, a list of Features or a single Feature, with coordinates in level-0 pixels from
the image's top left. The class is ``properties.classification.name`` (QuPath 0.2 and later);
older files and other tools write ``properties.classification`` as a plain string.
``properties.name`` is the object's own name, not its class, and is left in ``properties``.

Only areas label tiles: Polygon and MultiPolygon features are read (holes kept); other geometry
(points, lines) is skipped and counted in one warning per kind. A self-intersecting polygon is
repaired with shapely's ``make_valid``. Anything that cannot be read (not UTF-8 JSON, not GeoJSON,
NaN or non-numeric coordinates, a file or vertex count past the caps below) raises
:class:`AnnotationError`, one line naming the file. The file size is checked before it is
read, and the vertex count is bounded before it is parsed (a 200 MB file of tiny coordinate
pairs would otherwise take gigabytes as Python lists).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from hashview.annotations.types import Annotation, AnnotationError

MAX_FILE_BYTES = 200 * 1024 * 1024  # a QuPath export of a heavily annotated slide is a few MB
MAX_VERTICES = 2_000_000  # far above hand-drawn annotations; up to ~0.3 GB as Python lists
# Brackets beyond one per vertex: rings, polygons, and any in names or measurements.
_BRACKET_SLACK = 500_000
MAX_LABEL_CHARS = 200
_POLYGONAL = ("Polygon", "MultiPolygon")


def read_annotations(path: str | Path, *, warnings: Optional[list[str]] = None,
                     max_bytes: int = MAX_FILE_BYTES,
                     max_vertices: int = MAX_VERTICES) -> list[Annotation]:
    """The polygonal annotations of the QuPath GeoJSON file ``path``, in file order.

    Skipped features (other geometry, empty shapes) and repaired polygons are reported as one
    line each in ``warnings`` when a list is given. Raises :class:`AnnotationError`.
    """
    data = _load_json(path, max_bytes, max_vertices)
    features = _features(data, path)
    skipped: Counter = Counter()
    budget = _VertexBudget(path, max_vertices)
    annotations = []
    for number, feature in enumerate(features, start=1):
        annotation = _annotation(feature, number, path, budget, skipped)
        if annotation is not None:
            annotations.append(annotation)
    if warnings is not None:
        warnings.extend(f"{path}: {_counted(n, what)}" for what, n in skipped.items())
    return annotations


def _counted(n: int, what: str) -> str:
    return f"{n} feature{'s' if n > 1 else ''} {what}"


def _load_json(path: str | Path, max_bytes: int, max_vertices: int):
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise AnnotationError(path, exc.strerror or "cannot be read") from None
    if len(raw) > max_bytes:
        raise AnnotationError(path, f"larger than {max_bytes // (1024 * 1024)} MB; "
                                    "not read as annotations")
    # Every vertex is a JSON list: counting brackets (fast, in C) refuses a file whose parsed
    # form would not fit in memory before it is parsed.
    if raw.count(b"[") > max_vertices + _BRACKET_SLACK:
        raise AnnotationError(path, f"more than {max_vertices:,} vertices; "
                                    "not read as annotations")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AnnotationError(path, "not a GeoJSON file (not UTF-8 text)") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not a GeoJSON file (bad JSON at line {exc.lineno}: "
                                    f"{exc.msg})") from None
    except ValueError as exc:  # NaN / Infinity, refused by _refuse_constant
        raise AnnotationError(path, f"not a GeoJSON file ({exc})") from None
    except RecursionError:
        raise AnnotationError(path, "not a GeoJSON file (nested too deeply)") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _features(data, path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationError(path, "FeatureCollection without a 'features' list")
            return features
        if kind == "Feature":
            return [data]
    raise AnnotationError(path, "not QuPath GeoJSON (expected a FeatureCollection, "
                                "a Feature or a list of features)")


class _VertexBudget:
    """Refuses a file once its polygons hold more than ``limit`` vertices in all."""

    def __init__(self, path, limit: int):
        self.path, self.left, self.limit = path, limit, limit

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise AnnotationError(self.path, f"more than {self.limit:,} vertices; "
                                             "not read as annotations")


def _annotation(feature, number: int, path, budget: _VertexBudget,
                skipped: Counter) -> Optional[Annotation]:
    def bad(reason: str) -> AnnotationError:
        return AnnotationError(path, f"feature {number}: {reason}")

    if not isinstance(feature, dict):
        raise bad("not a JSON object")
    properties = feature.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise bad("'properties' is not an object")
    geometry = feature.get("geometry")
    if geometry is None:
        skipped["without geometry skipped"] += 1
        return None
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
        raise bad("'geometry' is not a GeoJSON geometry")
    kind = geometry["type"]
    if kind not in _POLYGONAL:
        skipped[f"of type {_short(kind)} skipped (only Polygon and MultiPolygon label "
                "tiles)"] += 1
        return None
    coordinates = geometry.get("coordinates")
    try:
        if kind == "Polygon":
            shape = _polygon(coordinates, budget)
        else:
            if not isinstance(coordinates, list):
                raise ValueError("coordinates are not a list of polygons")
            shape = MultiPolygon([_polygon(part, budget) for part in coordinates])
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not shape.is_valid:
        shape = _repaired(shape)
        skipped["with self-intersecting outlines repaired"] += 1
    if shape.is_empty or shape.area <= 0:
        skipped["with no area skipped"] += 1
        return None
    return Annotation(geometry=shape, label=_class_name(properties, bad),
                      properties=properties)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def _polygon(rings, budget: _VertexBudget) -> Polygon:
    if not isinstance(rings, list) or not rings:
        raise ValueError("polygon coordinates are not a list of rings")
    arrays = [_ring(ring, budget) for ring in rings]
    try:
        return Polygon(arrays[0], arrays[1:])
    except (ValueError, shapely.errors.GEOSException):
        raise ValueError("a polygon ring has fewer than 3 distinct points") from None


def _ring(ring, budget: _VertexBudget) -> np.ndarray:
    if not isinstance(ring, list):
        raise ValueError("a polygon ring is not a list of points")
    budget.spend(len(ring))  # before the conversion: a huge ring is refused without copying it
    try:
        points = np.array(ring)
    except (ValueError, TypeError):
        points = None
    if (points is None or points.ndim != 2 or points.shape[1] not in (2, 3)
            or points.dtype.kind not in "iuf"):
        raise ValueError("coordinates are not [x, y] number pairs")
    points = points[:, :2].astype(np.float64)
    if not np.isfinite(points).all():
        raise ValueError("coordinates are not finite numbers")
    if len(points) < 3:
        raise ValueError("a polygon ring has fewer than 3 points")
    return points


def _repaired(shape):
    fixed = shapely.make_valid(shape)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in _POLYGONAL]
    polygons = [p for part in parts for p in getattr(part, "geoms", [part])]
    if not polygons:
        return Polygon()
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def _class_name(properties: dict, bad) -> Optional[str]:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name")
        names = classification.get("names")
        if name is None and isinstance(names, list) and all(isinstance(n, str) for n in names):
            name = ": ".join(names)  # a derived class given by its parts
    else:
        name = classification
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise bad("the class name is not text")
    if "\0" in name or len(name) > MAX_LABEL_CHARS:
        raise bad(f"the class name is not a name (NUL or over {MAX_LABEL_CHARS} characters)")
    return name
