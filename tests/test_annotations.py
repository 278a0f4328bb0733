"""QuPath GeoJSON annotations: reading every form QuPath writes, and refusing bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import Polygon

from hashview.annotations import AnnotationError
from hashview.annotations.qupath import read_annotations

DATA = Path(__file__).resolve().parent / "data"
CMU_ANNOTATIONS = DATA / "annotations" / "CMU-1-Small-Region.geojson"


def _features():
    return json.loads(CMU_ANNOTATIONS.read_text())["features"]


def test_qupath_feature_collection_gives_polygons_with_holes_classes_and_properties():
    warnings = []
    annotations = read_annotations(CMU_ANNOTATIONS, warnings=warnings)
    assert [a.label for a in annotations] == ["Dermis", "Epidermis", None]
    dermis, epidermis, cleft = annotations
    assert dermis.geometry.geom_type == "Polygon" and len(dermis.geometry.interiors) == 1
    outline, hole = (Polygon(ring) for ring in (dermis.geometry.exterior,
                                                 dermis.geometry.interiors[0]))
    assert hole.within(outline)
    assert dermis.geometry.area == pytest.approx(outline.area - hole.area)
    assert epidermis.geometry.geom_type == "MultiPolygon" and len(epidermis.geometry.geoms) == 2
    # properties.name is the object's own name, never its class
    assert dermis.properties["name"] == "dermis, lower part"
    assert cleft.properties["name"] == "cleft, unclassified"
    assert any("1 feature of type Point skipped" in w for w in warnings)
    assert any("1 feature of type LineString skipped" in w for w in warnings)
    assert all(w.startswith(str(CMU_ANNOTATIONS)) for w in warnings)


def test_a_list_of_features_and_a_single_feature_are_read(tmp_path):
    listed = tmp_path / "listed.geojson"
    listed.write_text(json.dumps(_features()))
    single = tmp_path / "single.geojson"
    single.write_text(json.dumps(_features()[1]))
    assert [a.label for a in read_annotations(listed)] == ["Dermis", "Epidermis", None]
    (only,) = read_annotations(single)
    assert only.label == "Epidermis" and only.geometry.geom_type == "MultiPolygon"


def test_class_given_by_name_parts_and_a_self_intersecting_outline_repaired(tmp_path):
    derived_class = {"classification": {"names": ["Tumor", "Positive"]}}
    bowtie = {"type": "Feature", "properties": derived_class,
              "geometry": {"type": "Polygon",
                           "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}}
    path = tmp_path / "bowtie.geojson"
    path.write_text(json.dumps(bowtie))
    warnings = []
    (annotation,) = read_annotations(path, warnings=warnings)
    assert annotation.label == "Tumor: Positive"
    assert annotation.geometry.is_valid and annotation.geometry.area == pytest.approx(50)
    assert warnings == [f"{path}: 1 feature with self-intersecting outlines repaired"]


def _polygon_feature(coordinates, properties=None) -> str:
    return json.dumps({"type": "Feature", "properties": properties or {},
                       "geometry": {"type": "Polygon", "coordinates": coordinates}})


SQUARE = [[[0, 0], [5, 0], [5, 5], [0, 5], [0, 0]]]
BAD_FILES = {
    "not JSON": ("{ this is not json", "bad JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not UTF-8"),
    "a number": ("42", "expected a FeatureCollection"),
    "features not a list": ('{"type": "FeatureCollection", "features": 3}', "'features' list"),
    "feature not an object": ('["Feature"]', "feature 1: not a JSON object"),
    "NaN": ('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
            '[[[NaN, 0], [1, 1], [1, 0], [NaN, 0]]]}}', "NaN"),
    "Infinity": (_polygon_feature([[[0, 0], [float("inf"), 1], [1, 0], [0, 0]]]), "Infinity"),
    "overflowing number": ('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
                           '[[[0, 0], [1e400, 1], [1, 0], [0, 0]]]}}', "not finite"),
    "text coordinates": (_polygon_feature([[["0", "0"], ["1", "1"], ["1", "0"]]]), "number pairs"),
    "ragged": (_polygon_feature([[[0, 0], [1], [1, 0, 2, 3]]]), "number pairs"),
    "two points": (_polygon_feature([[[0, 0], [1, 1]]]), "fewer than 3"),
    "geometry a string": ('{"type": "Feature", "geometry": "Polygon"}', "not a GeoJSON geometry"),
    "properties a list": (json.dumps({"type": "Feature", "properties": [1],
                                      "geometry": {"type": "Polygon", "coordinates": SQUARE}}),
                          "'properties' is not an object"),
    "class a number": (_polygon_feature(SQUARE, {"classification": {"name": 7}}), "not text"),
    "class with NUL": (_polygon_feature(SQUARE, {"classification": "a\0b"}), "not a name"),
    "deep nesting": ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_line_naming_the_file(tmp_path, case):
    content, reason = BAD_FILES[case]
    path = tmp_path / "bad.geojson"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert reason in message


def test_too_large_files_and_too_many_vertices_are_refused_before_they_are_read(tmp_path):
    path = tmp_path / "big.geojson"
    path.write_text(CMU_ANNOTATIONS.read_text())
    with pytest.raises(AnnotationError, match="larger than 0 MB"):
        read_annotations(path, max_bytes=1000)
    with pytest.raises(AnnotationError, match="more than 10 vertices"):
        read_annotations(path, max_vertices=10)


def test_a_missing_file_or_a_folder_is_one_line(tmp_path):
    for path in (tmp_path / "missing.geojson", tmp_path):
        with pytest.raises(AnnotationError) as err:
            read_annotations(path)
        assert str(err.value).startswith(f"{path}: ")


def test_a_file_of_too_many_vertices_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    import hashview.annotations.qupath as qupath

    path = tmp_path / "many.geojson"
    path.write_text(_polygon_feature([[[0, 0]] * 600_000 + [[1, 1], [1, 0], [0, 0]]]))

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(qupath.json, "loads", no_parsing)
    with pytest.raises(AnnotationError, match="more than 10 vertices"):
        read_annotations(path, max_vertices=10)


@pytest.mark.parametrize("level", ["structure", "bytes"])
def test_mutated_qupath_files_are_read_or_refused_in_one_line(tmp_path, level):
    """The project's JSON and byte mutators on both hand-drawn fixtures, deeper into the
    coordinates: every outcome is a list of valid annotations or one AnnotationError line."""
    import copy
    import random

    from tests.fuzz.mutate_bytes import mutate_bytes
    from tests.fuzz.mutate_json import dumps, mutate_json

    rng = random.Random(f"qupath-{level}")
    originals = [(p.read_bytes(), json.loads(p.read_text()))
                 for p in sorted((DATA / "annotations").glob("*.geojson"))]
    path = tmp_path / "mutated.geojson"
    refused = 0
    for case in range(150):
        raw, document = originals[case % len(originals)]
        if level == "structure":
            mutated, what = mutate_json(rng, copy.deepcopy(document), deeper=0.8)
            path.write_text(dumps(mutated))
        else:
            data = bytearray(raw)
            what = mutate_bytes(rng, data)
            path.write_bytes(bytes(data))
        try:
            annotations = read_annotations(path)
        except AnnotationError as exc:
            refused += 1
            assert "\n" not in str(exc) and str(exc).startswith(f"{path}: "), what
            continue
        for annotation in annotations:
            assert annotation.geometry.is_valid and annotation.geometry.area > 0, what
            assert annotation.label is None or isinstance(annotation.label, str), what
    assert refused  # the mutations did reach the checks
