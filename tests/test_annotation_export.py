"""Search hits out to QuPath: GeoJSON in QuPath's schema, read back the same, written safely."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from shapely.geometry import box

from _mounts import small_disk  # noqa: F401  (a fixture)
from conftest import KATHER, SLIDE
from hashview.annotations.export import (HIT_CLASS, QUERY_CLASS, ExportError, QueryRegion,
                                         export_geojson, unique_file_names)
from hashview.annotations.qupath import read_annotations
from hashview.cli import main
from hashview.search.searcher import Hit

DATA = Path(__file__).resolve().parent / "data"
QUPATH_EXAMPLE = DATA / "annotations" / "qupath_export_example.geojson"
REGION = (1000, 1000, 448, 448)


def _hit(rank, x, y, label="TUMOR", source_id=0, path=SLIDE, distance=None, size=224):
    return Hit(rank=rank, tile_index=100 + rank, distance=rank + 2 if distance is None else
               distance, source_id=source_id, source_name=Path(path).name,
               source_path=str(path), x=x, y=y, size=size, label=label)


def _hits(other_slide: Path):
    return [_hit(0, 448, 672), _hit(1, 0, 224, label=None, source_id=1, path=other_slide),
            _hit(2, 0, 0, source_id=2, path=KATHER / "01_TUMOR" / "a.tif", size=150),
            _hit(3, 1120, 224, label="STROMA")]


def _value_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _shape(value):
    """The schema of a JSON value: object keys with their shapes, kinds of the rest."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return _value_kind(value)


def _qupath_shapes():
    example = json.loads(QUPATH_EXAMPLE.read_text(encoding="utf-8"))
    features = example["features"]
    properties = {}
    for feature in features:
        for key, value in feature["properties"].items():
            properties.setdefault(key, []).append(value)
    return example, features, properties


def test_export_has_the_schema_of_a_qupath_export(tmp_path):
    other = tmp_path / "slides" / "other.svs"
    export = export_geojson(_hits(other), tmp_path / "out", QueryRegion(str(SLIDE), REGION),
                            patch_sources=frozenset({2}))
    assert not export.failed and len(export.written) == 2
    example, qupath_features, qupath_properties = _qupath_shapes()
    for written in export.written:
        exported = json.loads(Path(written.path).read_text(encoding="utf-8"))
        assert set(exported) == set(example) and exported["type"] == "FeatureCollection"
        for feature in exported["features"]:
            assert set(feature) == set(qupath_features[0])
            assert str(uuid.UUID(feature["id"])) == feature["id"]
            assert _shape(feature["geometry"]) == _shape(qupath_features[1]["geometry"])
            ring = feature["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1] and len(ring) == 5
            for key, value in feature["properties"].items():
                assert key in qupath_properties, key
                shapes = {json.dumps(_shape(v), sort_keys=True)
                          for v in qupath_properties[key]}
                if key in ("measurements", "metadata"):  # name -> number / name -> text
                    kinds = {_value_kind(v) for m in qupath_properties[key] for v in m.values()}
                    assert {_value_kind(v) for v in value.values()} <= kinds
                else:
                    assert json.dumps(_shape(value), sort_keys=True) in shapes, key
            assert feature["properties"]["objectType"] == "annotation"
    ids = [f["id"] for w in export.written
           for f in json.loads(Path(w.path).read_text())["features"]]
    assert len(set(ids)) == len(ids) == 4


def test_export_reads_back_as_the_same_squares_labels_distances_and_ranks(tmp_path):
    other = tmp_path / "other.svs"
    hits = _hits(other)
    export = export_geojson(hits, tmp_path, QueryRegion(str(SLIDE), REGION),
                            patch_sources=frozenset({2}))
    assert export.skipped_patch_hits == 1 and "1 hit on patch images" in export.note
    by_slide = {Path(w.slide).name: w for w in export.written}
    assert Path(by_slide[SLIDE.name].path).name == "CMU-1-Small-Region.hashview.geojson"
    assert (by_slide[SLIDE.name].hits, by_slide[SLIDE.name].query) == (2, True)
    assert (by_slide["other.svs"].hits, by_slide["other.svs"].query) == (1, False)

    query, *slide_hits = read_annotations(by_slide[SLIDE.name].path)
    x, y, w, h = REGION
    assert query.label == QUERY_CLASS and query.geometry.equals(box(x, y, x + w, y + h))
    (other_hit,) = read_annotations(by_slide["other.svs"].path)
    expected = [hits[0], hits[3], hits[1]]
    for annotation, hit in zip(slide_hits + [other_hit], expected):
        assert annotation.geometry.equals(box(hit.x, hit.y, hit.x + hit.size, hit.y + hit.size))
        assert annotation.label == (hit.label or HIT_CLASS)
        assert annotation.properties["name"] == f"HashView hit {hit.rank + 1}"
        measurements = annotation.properties["measurements"]
        assert measurements == {"HashView distance": hit.distance, "HashView rank": hit.rank + 1}
        assert annotation.properties["metadata"]["HashView tile id"] == str(hit.tile_index)


def test_slides_sharing_a_name_get_files_of_their_own():
    names = unique_file_names(["/a/s1.svs", "/b/s1.svs", "/a/s1.ndpi", "/c/x.ome.tif",
                               "/d/bad\nname?.svs"])
    assert names == ["s1.svs (1).hashview.geojson", "s1.svs (2).hashview.geojson",
                     "s1.ndpi.hashview.geojson", "x.hashview.geojson",
                     "bad_name_.hashview.geojson"]


def test_a_file_that_cannot_be_written_is_one_line_and_the_others_are_written(tmp_path):
    other = tmp_path / "other.svs"
    (tmp_path / "other.hashview.geojson").mkdir()  # a folder where the file should go
    export = export_geojson(_hits(other), tmp_path, QueryRegion(str(SLIDE), REGION),
                            patch_sources=frozenset({2}))
    assert [Path(w.path).name for w in export.written] == ["CMU-1-Small-Region.hashview.geojson"]
    (line,) = export.failed
    assert line.startswith(str(tmp_path / "other.hashview.geojson") + ": ")
    assert "\n" not in line
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_folder_that_is_a_file_is_refused_in_one_line(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(ExportError) as caught:
        export_geojson(_hits(tmp_path / "o.svs"), target)
    assert caught.value.message.startswith(f"{target}: not a folder")


@pytest.mark.parametrize("fault, reason", [("read_only", "read-only file system"),
                                           ("fill", "no space left on device")])
def test_read_only_storage_and_full_disk_fail_in_one_line_each(small_disk, fault, reason):
    getattr(small_disk, fault)()
    export = export_geojson(_hits(small_disk.path / "o.svs"), small_disk.path,
                            QueryRegion(str(SLIDE), REGION), patch_sources=frozenset({2}))
    assert not export.written and len(export.failed) == 2
    assert all(line.endswith(f": {reason}") and "\n" not in line for line in export.failed)
    assert [p.name for p in small_disk.path.iterdir() if p.name != "filler"] == []


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_geojson_writes_the_region_and_hits_for_qupath(slide_library, tmp_path, capsys):
    library, _ = slide_library
    out_dir = tmp_path / "qupath"
    code, out, err = run(capsys, "search", library, SLIDE, "--region", "1000,1000,224,224",
                         "-k", "5", "--json", "--geojson", out_dir)
    assert code == 0, err
    answer = json.loads(out)
    (written,) = answer["geojson"]["files"]  # every hit of this library's slide is on CMU-1
    assert written["query"] and written["path"] == str(
        out_dir / "CMU-1-Small-Region.hashview.geojson")
    slide_hits = [h for h in answer["hits"] if h["source_path"] == str(SLIDE.resolve())]
    assert written["hits"] == len(slide_hits)
    assert answer["geojson"]["skipped_patch_hits"] == len(answer["hits"]) - len(slide_hits)
    query, *hits = read_annotations(written["path"])
    assert query.geometry.equals(box(1000, 1000, 1224, 1224))
    for annotation, hit in zip(hits, slide_hits):
        assert annotation.geometry.bounds == (hit["x"], hit["y"], hit["x"] + hit["size"],
                                              hit["y"] + hit["size"])
        assert annotation.properties["measurements"]["HashView distance"] == hit["distance"]

    code, out, err = run(capsys, "search", library, SLIDE, "--region", "1000,1000,224,224",
                         "-k", "5", "--geojson", out_dir)
    assert code == 0, err
    assert f"wrote {out_dir / 'CMU-1-Small-Region.hashview.geojson'} (the query region, " in out


def test_search_geojson_of_a_patch_query_says_what_was_left_out(slide_library, tmp_path,
                                                                capsys):
    library, _ = slide_library
    query = sorted((KATHER / "07_ADIPOSE").iterdir())[0]
    code, out, err = run(capsys, "search", library, query, "-k", "3", "--geojson", tmp_path)
    assert code == 0, err
    assert "wrote" not in out and list(tmp_path.iterdir()) == []
    assert err.splitlines() == [
        "hashview: 3 hits on patch images not exported (a patch is a whole image: nothing on "
        "it to outline)",
        "hashview: no GeoJSON written: no hit is on a slide and the query is not a slide region"]


def test_search_geojson_failures_are_one_line_and_not_success(slide_library, tmp_path, capsys):
    library, _ = slide_library
    (tmp_path / "CMU-1-Small-Region.hashview.geojson").mkdir()
    code, out, err = run(capsys, "search", library, SLIDE, "--region", "1000,1000,224,224",
                         "--geojson", tmp_path)
    assert code == 1 and "wrote" not in out
    (line,) = err.splitlines()
    assert line.startswith(f"hashview: {tmp_path / 'CMU-1-Small-Region.hashview.geojson'}: ")
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("x")
    code, out, err = run(capsys, "search", library, SLIDE, "--region", "1000,1000,224,224",
                         "--geojson", not_a_folder)
    assert code == 1 and out == "" and err == (f"hashview: {not_a_folder}: not a folder; the "
                                               "hits go into a folder, one file per slide\n")
    code, _, err = run(capsys, "search", library, SLIDE, "--whole-slide", "--geojson", tmp_path)
    assert code == 2 and "--geojson" in err
