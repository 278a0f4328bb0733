"""hashview.slides.scale_overrides: a scale entered for a file without one reaches open_source
and tiling; the file's own scale wins; a damaged store never stops a slide from opening."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hashview.slides import open_source
from hashview.slides.scale_overrides import scales_path, store_mpp, stored_mpp
from hashview.tiling import TilingParams, plan_geometry

DATA = Path(__file__).resolve().parent / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHVIEW_HOME", str(tmp_path / "home"))


def test_a_stored_scale_is_used_by_open_source_and_tiling(tmp_path):
    image = tmp_path / "scan.tif"
    shutil.copy(STRIPED_TIFF, image)
    with open_source(image) as source:
        assert source.mpp is None
        assumed = plan_geometry(source, TilingParams())
        assert assumed.mpp_assumed
    store_mpp(image, 0.25)
    assert stored_mpp(image) == 0.25
    moved = tmp_path / "renamed.tif"
    image.rename(moved)  # keyed by content: the scale follows the file
    with open_source(moved) as source:
        assert source.mpp == 0.25 and source.mpp_from_user
        geometry = plan_geometry(source, TilingParams())
        assert not geometry.mpp_assumed and geometry.mpp == 0.25
        assert geometry.tile_level0 == 2 * assumed.tile_level0  # 40x: twice the pixels
    store_mpp(moved, None)
    with open_source(moved) as source:
        assert source.mpp is None and not source.mpp_from_user


def test_the_files_own_scale_wins_and_bad_values_are_refused(tmp_path):
    slide = tmp_path / "slide.svs"
    shutil.copy(SLIDE, slide)
    with open_source(slide) as source:
        recorded = source.mpp
    store_mpp(slide, 2.0)
    with open_source(slide) as source:
        assert source.mpp == pytest.approx(recorded) and not source.mpp_from_user
    for bad in (0, -1, float("nan"), 1e6):
        with pytest.raises(ValueError, match="µm per pixel"):
            store_mpp(slide, bad)


def test_a_damaged_scales_file_reads_as_none(tmp_path):
    image = tmp_path / "scan.tif"
    shutil.copy(STRIPED_TIFF, image)
    scales_path().parent.mkdir(parents=True, exist_ok=True)
    scales_path().write_text("{not json", encoding="utf-8")
    with open_source(image) as source:
        assert source.mpp is None
    store_mpp(image, 0.5)  # rewrites the damaged file
    assert stored_mpp(image) == 0.5
