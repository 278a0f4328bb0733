"""Tiles labelled by QuPath annotations: coverage rules, matching files to slides, and
``hashview index --annotations`` on the real CMU slide."""

from __future__ import annotations

import json
import shutil

import pytest
from shapely.geometry import Polygon, box

from conftest import DATA, SLIDE, TINY_SLIDE
from hashview.annotations import Annotation
from hashview.annotations.qupath import read_annotations
from hashview.annotations.tiles import annotation_file_for, label_tiles
from hashview.cli import main
from hashview.library import Library
from hashview.slides import open_source
from hashview.tiling import TilingParams, plan_tiles

CMU_ANNOTATIONS = DATA / "annotations" / "CMU-1-Small-Region.geojson"


def _labels(annotations, tiles, min_cover=0.5):
    return label_tiles(annotations, [t[0] for t in tiles], [t[1] for t in tiles],
                       [t[2] for t in tiles], min_cover)


def test_a_tile_takes_the_class_covering_enough_of_it_and_none_inside_a_hole():
    ring = Polygon([(0, 0), (400, 0), (400, 400), (0, 400)], [[(100, 100), (300, 100),
                                                               (300, 300), (100, 300)]])
    tumour = Annotation(ring, "Tumor")
    tiles = [(0, 0, 100),      # wholly inside the ring
             (150, 150, 100),  # inside the hole
             (340, 0, 100),    # 60% inside
             (370, 0, 100)]    # 30% inside
    assert _labels([tumour], tiles) == ["Tumor", None, "Tumor", None]
    assert _labels([tumour], tiles, min_cover=0.7) == ["Tumor", None, None, None]
    assert _labels([tumour], tiles, min_cover=0.3) == ["Tumor", None, "Tumor", "Tumor"]


def test_the_class_covering_most_wins_and_one_class_is_not_counted_twice():
    tile = [(0, 0, 100)]
    stroma = Annotation(box(0, 0, 40, 100), "Stroma")     # 40% of the tile
    tumour = Annotation(box(40, 0, 100, 100), "Tumor")    # 60%
    assert _labels([stroma, tumour], tile, min_cover=0.3) == ["Tumor"]
    # two overlapping outlines of one class cover 40% together, not 80%
    twice = [stroma, Annotation(box(0, 0, 40, 100), "Stroma")]
    assert _labels(twice, tile) == [None]
    # ...while two outlines of one class side by side add up: 30% + 30%
    halves = [Annotation(box(0, 0, 30, 100), "Stroma"), Annotation(box(70, 0, 100, 100), "Stroma")]
    assert _labels(halves, tile) == ["Stroma"]
    assert _labels([Annotation(box(0, 0, 100, 100), None)], tile) == [None]  # no class


def test_real_slide_tiles_follow_the_drawn_regions():
    with open_source(SLIDE) as source:
        tiles = plan_tiles(source, TilingParams(tile_size=150, target_mpp=0.495)).tiles
    dermis, epidermis, _ = read_annotations(CMU_ANNOTATIONS)
    labels = _labels([dermis, epidermis], [(t.x, t.y, t.size) for t in tiles])
    hole = Polygon(dermis.geometry.interiors[0])
    in_hole = [lab for t, lab in zip(tiles, labels)
               if box(t.x, t.y, t.x + t.size, t.y + t.size).within(hole)]
    assert in_hole and set(in_hole) == {None}
    for tile, label in zip(tiles, labels):
        square = box(tile.x, tile.y, tile.x + tile.size, tile.y + tile.size)
        if square.within(epidermis.geometry):
            assert label == "Epidermis"
        if label == "Dermis":
            assert square.intersection(dermis.geometry).area >= 0.5 * square.area
    assert {"Dermis", "Epidermis", None} <= set(labels)


def test_annotation_files_are_matched_to_slides_by_name(tmp_path):
    slide = tmp_path / "case7.svs"
    assert annotation_file_for(slide) is None
    (tmp_path / "case7.svs.geojson").write_text("[]")
    assert annotation_file_for(slide) == tmp_path / "case7.svs.geojson"
    (tmp_path / "case7.geojson").write_text("[]")
    assert annotation_file_for(slide) == tmp_path / "case7.geojson"
    elsewhere = tmp_path / "exports"
    elsewhere.mkdir()
    assert annotation_file_for(slide, elsewhere) is None
    (elsewhere / "case7.geojson").write_text("[]")
    assert annotation_file_for(slide, elsewhere) == elsewhere / "case7.geojson"
    assert annotation_file_for(slide, tmp_path / "case7.svs.geojson") == \
        tmp_path / "case7.svs.geojson"


def _library_labels(path) -> list:
    with Library.open(path, mode="r") as library:
        names = library.label_names()
        return [names[i] if i >= 0 else None for i in library.tile_table()["label_id"]]


def test_index_with_annotations_stores_tile_labels(tmp_path, capsys):
    library = tmp_path / "lib.h5"
    code = main(["index", str(SLIDE), "--library", str(library), "--annotations",
                 str(CMU_ANNOTATIONS), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    stored = _library_labels(library)
    counts = report["tile_labels"]
    assert counts["Dermis"] == stored.count("Dermis") > 0
    assert counts["Epidermis"] == stored.count("Epidermis") > 0
    assert counts["unlabelled"] == stored.count(None) > 0
    assert any("Point skipped" in w for w in report["warnings"])


def test_annotated_only_keeps_the_labelled_tiles_and_a_bad_file_fails_only_its_slide(
        tmp_path, capsys):
    slides, exports = tmp_path / "slides", tmp_path / "exports"
    slides.mkdir()
    exports.mkdir()
    for slide in (SLIDE, TINY_SLIDE):
        shutil.copy(slide, slides)
    shutil.copy(CMU_ANNOTATIONS, exports)
    (exports / "tiny-16px.svs.geojson").write_text('{"type": "FeatureCollection"}')
    library = tmp_path / "lib.h5"
    code = main(["index", str(slides), "--library", str(library), "--annotations", str(exports),
                 "--annotated-only", "--min-cover", "0.75"])
    out, err = capsys.readouterr()
    assert code == 3  # partial: one slide failed
    assert f"hashview: {exports / 'tiny-16px.svs.geojson'}: FeatureCollection without" in err
    stored = _library_labels(library)
    assert stored and None not in stored and set(stored) == {"Dermis", "Epidermis"}
    assert f"tile labels: Dermis {stored.count('Dermis')}, Epidermis " in out


def test_one_annotation_file_for_several_slides_and_stray_options_are_refused(tmp_path, capsys):
    library = tmp_path / "lib.h5"
    code = main(["index", str(SLIDE), str(TINY_SLIDE), "--library", str(library),
                 "--annotations", str(CMU_ANNOTATIONS)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "one annotation file for 2 slides" in err
    assert not library.exists()
    assert main(["index", str(SLIDE), "--library", str(library), "--annotated-only"]) == 2
    assert "--annotated-only needs --annotations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", str(SLIDE), "--library", str(library), "--annotations", "x",
              "--min-cover", "0"])
    # "--annotations" between slides: the next slide is not taken for the annotation file
    assert main(["index", str(TINY_SLIDE), "--annotations", str(SLIDE),
                 "--library", str(library)]) == 2
    err = capsys.readouterr().err
    assert "not 'CMU-1-Small-Region.svs'" in err.strip().splitlines()[-1]
    assert not library.exists()


def test_an_indexing_job_takes_annotation_options(tmp_path):
    from hashview.jobs.runner import run_job
    from hashview.jobs.spec import JobSpec

    events: list[dict] = []
    options = {"where": str(CMU_ANNOTATIONS.parent), "min_cover": 0.5, "annotated_only": True}
    spec = JobSpec("index", {"paths": [SLIDE], "library_path": tmp_path / "lib.h5",
                             "annotations": options})
    assert run_job(spec, events.append) == "done", events[-1]
    labels = events[-1]["result"]["tile_labels"]
    assert set(labels) == {"Dermis", "Epidermis"}
    assert events[-1]["result"]["tiles_added"] == sum(labels.values())
    events.clear()
    bad = JobSpec("index", {**spec.args, "annotations": {"min_cover": 2}})
    assert run_job(bad, events.append) == "failed"
    assert "bad annotation options" in events[-1]["message"]


def test_the_python_api_takes_annotations(tmp_path):
    from hashview.annotations.tiles import AnnotationOptions
    from hashview.session import LibrarySession

    session = LibrarySession(tmp_path / "lib.h5")
    report = session.add(SLIDE, annotations=AnnotationOptions(CMU_ANNOTATIONS, min_cover=0.9,
                                                              annotated_only=True))
    assert not report.failed and report.tile_labels
    assert report.tiles_added == sum(report.tile_labels.values())
    assert _library_labels(tmp_path / "lib.h5").count("Dermis") == report.tile_labels["Dermis"]
