"""End to end: real slide and patches -> library -> search, with the one writer path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import KATHER, SLIDE, STRIPED_TIFF, TINY_SLIDE
from hashview.errors import LibraryError
from hashview.indexing import index_paths
from hashview.library import Library
from hashview.models import ModelCard, build_model, save_model
from hashview.tiling import TilingParams


def test_slide_and_patches_are_indexed_with_positions_and_labels(slide_library):
    path, report = slide_library
    n_patches = len(list(KATHER.rglob("*.tif")))
    assert len(report.added) == 1 + n_patches
    with Library.open(path) as lib:
        assert lib.n_sources == 1 + n_patches
        slide = lib.find_source(path=str(SLIDE.resolve()))
        assert slide is not None and slide.kind == "slide"
        assert slide.tile_count > 20  # the CMU region is mostly tissue
        table = lib.tile_table()
        rows = table["source_id"] == slide.id
        width, height = slide.width, slide.height
        assert np.all(table["x"][rows] + table["size"][rows] <= width)
        assert np.all(table["y"][rows] + table["size"][rows] <= height)
        # tiles cover the library's physical size: tile_size px at target_mpp, in level-0 pixels
        expected_side = round(lib.tile_size * lib.target_mpp / slide.mpp)
        assert set(table["size"][rows]) == {expected_side}
        assert sorted(lib.label_names()) == ["01_TUMOR", "02_STROMA", "04_LYMPHO", "07_ADIPOSE"]
        assert lib.codes().shape == (lib.n_tiles, 8)


def test_indexing_twice_adds_nothing(slide_library, tmp_path):
    path, _ = slide_library
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    with Library.open(copy) as lib:
        before = (lib.n_sources, lib.n_tiles)
    report = index_paths([SLIDE, KATHER], copy)
    assert report.added == [] and len(report.skipped) == before[0]
    with Library.open(copy) as lib:
        assert (lib.n_sources, lib.n_tiles) == before


def test_bad_file_in_a_batch_is_reported_and_the_rest_indexed(tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(KATHER / "01_TUMOR", folder / "TUMOR")
    (folder / "TUMOR" / "broken.png").write_bytes(b"not a png at all")
    (folder / "TUMOR" / "empty.tif").write_bytes(b"")
    lib_path = tmp_path / "lib.h5"
    report = index_paths([folder, tmp_path / "missing.svs"], lib_path)
    assert len(report.added) == len(list((KATHER / "01_TUMOR").iterdir()))
    assert len(report.failed) == 3
    assert any("broken.png" in f for f in report.failed)
    assert any("empty.tif" in f for f in report.failed)
    assert any("missing.svs" in f for f in report.failed)
    assert all("\n" not in f for f in report.failed)


def test_library_of_another_model_is_refused_and_kept_intact(slide_library, tmp_path):
    path, _ = slide_library
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    before = copy.read_bytes()
    other = save_model(build_model("dch", 32), ModelCard(name="other", arch="dch", bits=32,
                                                         input_size=128), tmp_path / "other")
    with pytest.raises(LibraryError, match="copy.h5"):
        index_paths([STRIPED_TIFF], copy, model=other.source)
    assert copy.read_bytes() == before


def test_slide_without_mpp_is_indexed_with_a_warning(tmp_path):
    # the striped TIFF is a low-power overview with one small fragment: keep every grid tile
    report = index_paths([STRIPED_TIFF], tmp_path / "lib.h5",
                         params=TilingParams(min_tissue=0.0, max_tiles=4))
    assert len(report.added) == 1 and report.added[0]["tiles"] == 4
    assert any("20x" in w for w in report.warnings)


def test_slide_smaller_than_a_tile_is_stored_with_no_tiles(tmp_path):
    report = index_paths([TINY_SLIDE], tmp_path / "lib.h5")
    assert report.added == [{"path": str(TINY_SLIDE), "tiles": 0}]
    with Library.open(tmp_path / "lib.h5") as lib:
        assert lib.n_sources == 1 and lib.n_tiles == 0
