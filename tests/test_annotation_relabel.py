"""Corrected QuPath annotations applied to slides already in a library
(``hashview relabel LIB --annotations``): the same labels as indexing with them, codes kept."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import DATA, KATHER, SLIDE, TINY_SLIDE
from hashview.cli import main
from hashview.library import Library

CMU_ANNOTATIONS = DATA / "annotations" / "CMU-1-Small-Region.geojson"


def _labels_and_codes(path):
    with Library.open(path, mode="r") as library:
        names = library.label_names()
        labels = [names[i] if i >= 0 else None for i in library.tile_table()["label_id"]]
        return labels, library.codes().copy()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """The CMU and tiny slides and the Kather patches, indexed without annotations."""
    root = tmp_path_factory.mktemp("relabel")
    slides = root / "slides"
    slides.mkdir()
    for slide in (SLIDE, TINY_SLIDE):
        shutil.copy(slide, slides)
    library = root / "plain.h5"
    assert main(["index", str(slides), str(KATHER), "--library", str(library)]) == 0
    labelled = root / "annotated.h5"  # the reference: the CMU slide indexed with annotations
    assert main(["index", str(slides / SLIDE.name), "--library", str(labelled),
                 "--annotations", str(CMU_ANNOTATIONS)]) == 0
    return slides, library, labelled


@pytest.fixture
def library(indexed, tmp_path):
    copy = tmp_path / "lib.h5"
    shutil.copy(indexed[1], copy)
    return copy


def test_annotations_beside_the_slides_relabel_their_tiles_as_indexing_would(
        indexed, library, tmp_path, capsys):
    slides, _, reference = indexed
    exports = tmp_path / "exports"
    exports.mkdir()
    shutil.copy(CMU_ANNOTATIONS, exports)
    before, codes_before = _labels_and_codes(library)
    capsys.readouterr()
    assert main(["relabel", str(library), "--annotations", str(exports)]) == 0
    out = capsys.readouterr().out
    assert "relabelled the tiles of 1 slides from their annotations" in out
    assert "tiny-16px.svs: no annotation file" in out
    after, codes_after = _labels_and_codes(library)
    np.testing.assert_array_equal(codes_before, codes_after)
    with Library.open(library, mode="r") as lib:
        cmu = next(s for s in lib.sources() if s.name == SLIDE.name)
        rows = slice(cmu.tile_start, cmu.tile_start + cmu.tile_count)
        patches = [s for s in lib.sources() if s.kind == "patch"]
    assert after[rows] == _labels_and_codes(reference)[0]  # as if indexed with them
    assert {"Dermis", "Epidermis"} <= set(after[rows]) and None in after[rows]
    for patch in patches:  # the patches keep their folder labels
        assert patch.label and after[patch.tile_start] == before[patch.tile_start] == patch.label


def test_corrected_outlines_change_the_labels_and_a_bad_file_fails_only_its_slide(
        indexed, library, tmp_path, capsys):
    slides, _, _ = indexed
    exports = tmp_path / "exports"
    exports.mkdir()
    data = json.loads(CMU_ANNOTATIONS.read_text())
    for feature in data["features"]:  # the pathologist renames one class in QuPath
        classification = feature["properties"].get("classification")
        if isinstance(classification, dict) and classification["name"] == "Dermis":
            classification["name"] = "Reticular dermis"
    (exports / "CMU-1-Small-Region.geojson").write_text(json.dumps(data))
    (exports / "tiny-16px.svs.geojson").write_text('{"type": "FeatureCollection"}')
    capsys.readouterr()
    assert main(["relabel", str(library), "--annotations", str(exports)]) == 3
    out = capsys.readouterr().out
    assert "1 unreadable" in out and "tiny-16px.svs.geojson: FeatureCollection without" in out
    labels, _ = _labels_and_codes(library)
    assert "Reticular dermis" in labels and "Dermis" not in labels


def test_wrong_uses_are_one_line_and_leave_the_library_as_it_was(library, capsys):
    before = library.read_bytes()
    capsys.readouterr()
    code = main(["relabel", str(library), "--annotations", str(CMU_ANNOTATIONS)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "one annotation file for 2 slides" in err
    code = main(["relabel", str(library), "10009_CRC-Prim-HE-03_009.tif_Row_301_Col_151.tif",
                 "--annotations", str(CMU_ANNOTATIONS)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "is a patch: annotations label slides" in err
    assert main(["relabel", str(library), SLIDE.name, "--annotations", str(CMU_ANNOTATIONS),
                 "--label", "x"]) == 2
    assert main(["relabel", str(library), SLIDE.name]) == 2
    assert "needs --label (or --annotations)" in capsys.readouterr().err
    assert library.read_bytes() == before


def test_indexing_again_with_annotations_says_how_to_apply_them(indexed, library, capsys):
    slides, _, _ = indexed
    capsys.readouterr()
    assert main(["index", str(slides / SLIDE.name), "--library", str(library),
                 "--annotations", str(CMU_ANNOTATIONS)]) == 0
    out = capsys.readouterr().out
    assert f"hashview relabel {library} --annotations" in out
