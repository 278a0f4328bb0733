"""hashview.tiling: tissue mask, tile plans on real slides, reading tiles."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hashview.slides import open_source
from hashview.tiling import (MPP_UNKNOWN_WARNING, Tile, TilingParams, plan_tiles, read_tile,
                             tissue_mask)

DATA = Path(__file__).resolve().parent / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"
TINY_SLIDE = DATA / "tiny-16px.svs"
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"


@pytest.fixture(scope="module")
def cmu_plan():
    with open_source(SLIDE) as source:
        return plan_tiles(source, TilingParams())


def _pink_disc(size=200, centre=(120, 90), radius=40):
    image = Image.new("RGB", (size, size), (245, 245, 245))
    cx, cy = centre
    ImageDraw.Draw(image).ellipse([cx - radius, cy - radius, cx + radius, cy + radius],
                                  fill=(220, 120, 180))
    return np.asarray(image)


# --- tissue mask -----------------------------------------------------------------------------

def test_tissue_mask_finds_pink_disc():
    rgb = _pink_disc()
    mask = tissue_mask(rgb)
    assert mask.dtype == bool and mask.shape == (200, 200)
    yy, xx = np.mgrid[:200, :200]
    disc = (xx - 120) ** 2 + (yy - 90) ** 2 <= 40 ** 2
    inside = mask[(xx - 120) ** 2 + (yy - 90) ** 2 <= 37 ** 2]
    outside = mask[(xx - 120) ** 2 + (yy - 90) ** 2 >= 43 ** 2]
    assert inside.all() and not outside.any()
    assert abs(int(mask.sum()) - int(disc.sum())) < 0.05 * disc.sum()


def test_tissue_mask_removes_specks_and_ignores_black_ink():
    rgb = _pink_disc().copy()
    rgb[10, 10] = (220, 120, 180)  # a single stained pixel: dust, not tissue
    rgb[150:190, 20:60] = (5, 5, 5)  # pen ink / scanner border
    mask = tissue_mask(rgb)
    assert not mask[10, 10]
    assert not mask[150:190, 20:60].any()
    assert mask[90, 120]


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (240, 238, 241)])
def test_tissue_mask_uniform_background_is_empty(colour):
    assert not tissue_mask(np.full((64, 48, 3), colour, np.uint8)).any()


def test_tissue_mask_uniform_tissue_is_full():
    assert tissue_mask(np.full((64, 64, 3), (200, 100, 160), np.uint8)).all()


def test_tissue_mask_rejects_bad_shape():
    with pytest.raises(ValueError):
        tissue_mask(np.zeros((4, 4, 2), np.uint8))


# --- plans on the real slide ---------------------------------------------------------------

def test_cmu_defaults_give_inside_tissue_tiles(cmu_plan):
    plan = cmu_plan
    assert len(plan.tiles) > 10
    assert plan.mpp == pytest.approx(0.499, abs=1e-3) and not plan.mpp_assumed
    assert plan.warnings == []
    assert plan.level == 0 and plan.read_size == 224 and plan.tile_size == 224
    for tile in plan.tiles:
        assert tile.size == 224  # 224 px * 0.5 µm / 0.499 µm/px
        assert 0 <= tile.x and tile.x + tile.size <= 2220
        assert 0 <= tile.y and tile.y + tile.size <= 2967
    assert plan.tissue_count == len(plan.tiles) < plan.grid_count == 9 * 13
    assert plan.mask is not None and plan.mask.shape[0] > plan.mask.shape[1]  # portrait slide


def test_plan_is_deterministic_and_row_major(cmu_plan):
    with open_source(SLIDE) as source:
        again = plan_tiles(source, TilingParams())
    assert again.tiles == cmu_plan.tiles
    keys = [(t.y, t.x) for t in cmu_plan.tiles]
    assert keys == sorted(keys)


def test_background_tiles_are_excluded(cmu_plan):
    # The top-left corner and the left edge of CMU-1-Small-Region are empty glass.
    positions = {(t.x, t.y) for t in cmu_plan.tiles}
    assert (0, 0) not in positions
    assert (0, 1120) not in positions
    with open_source(SLIDE) as source:
        corner = np.asarray(source.read_region((0, 0), 0, (224, 224)))
        assert corner.min(axis=2).mean() > 200  # really background
        # ...and every planned tile really holds stained tissue.
        for tile in cmu_plan.tiles[::5]:
            assert tissue_mask(np.asarray(read_tile(source, tile, cmu_plan))).mean() > 0.3


def test_min_tissue_zero_keeps_the_whole_grid():
    with open_source(SLIDE) as source:
        plan = plan_tiles(source, TilingParams(min_tissue=0.0))
    assert len(plan.tiles) == plan.grid_count == 9 * 13


def test_max_tiles_is_seeded_sorted_subset(cmu_plan):
    with open_source(SLIDE) as source:
        first = plan_tiles(source, TilingParams(max_tiles=5, seed=1))
        same = plan_tiles(source, TilingParams(max_tiles=5, seed=1))
        other = plan_tiles(source, TilingParams(max_tiles=5, seed=2))
    assert len(first.tiles) == 5 and first.tiles == same.tiles
    assert other.tiles != first.tiles
    assert set(first.tiles) <= set(cmu_plan.tiles)
    assert first.tiles == [t for t in cmu_plan.tiles if t in set(first.tiles)]  # row-major
    assert first.tissue_count == len(cmu_plan.tiles)


def test_coarser_target_mpp_and_stride(cmu_plan):
    with open_source(SLIDE) as source:
        coarse = plan_tiles(source, TilingParams(target_mpp=1.0, min_tissue=0.0))
        overlap = plan_tiles(source, TilingParams(stride=112, min_tissue=0.0))
        tile = read_tile(source, coarse.tiles[0], coarse)
    assert coarse.tiles[0].size == round(224 * 1.0 / 0.499)
    assert coarse.read_size == coarse.tiles[0].size  # single level: read at 0, then shrink
    assert tile.size == (224, 224) and tile.mode == "RGB"
    assert overlap.stride == 112 and overlap.grid_count > 3 * cmu_plan.grid_count


def test_read_tile_matches_region(cmu_plan):
    with open_source(SLIDE) as source:
        tile = cmu_plan.tiles[0]
        image = read_tile(source, tile, cmu_plan)
        region = source.read_region((tile.x, tile.y), 0, (224, 224))
    assert image.size == (224, 224)
    assert np.array_equal(np.asarray(image), np.asarray(region))


# --- unknown mpp and small images -----------------------------------------------------------

def test_unknown_mpp_is_assumed_and_warned():
    with open_source(STRIPED_TIFF) as source:
        assert source.mpp is None
        plan = plan_tiles(source, TilingParams(min_tissue=0.0))
    assert plan.mpp_assumed and plan.mpp == 0.5
    assert MPP_UNKNOWN_WARNING in plan.warnings
    assert plan.tiles[0] == Tile(0, 0, 224)
    assert len(plan.tiles) == (1493 // 224) * (901 // 224)


def test_mostly_blank_image_keeps_only_its_tissue(tmp_path):
    image = Image.fromarray(_pink_disc(size=600, centre=(450, 450), radius=140))
    image.save(tmp_path / "disc.png")
    with open_source(tmp_path / "disc.png") as source:
        plan = plan_tiles(source, replace(TilingParams(), tile_size=100, min_tissue=0.9))
    assert plan.mpp_assumed
    # Only the tile fully inside the disc (centre 450,450, radius 140) survives.
    assert plan.tiles == [Tile(400, 400, 100)]


def test_slide_smaller_than_a_tile_gives_no_tiles():
    with open_source(TINY_SLIDE) as source:
        plan = plan_tiles(source, TilingParams())
    assert plan.tiles == [] and plan.grid_count == 0
    assert any("smaller than one tile" in w for w in plan.warnings)


def test_invalid_params_rejected():
    with open_source(TINY_SLIDE) as source:
        with pytest.raises(ValueError):
            plan_tiles(source, TilingParams(min_tissue=1.5))
        with pytest.raises(ValueError):
            plan_tiles(source, TilingParams(tile_size=0))


@pytest.mark.parametrize("field, value, words", [
    ("tile_size", 0, "tile_size"), ("tile_size", 1, "tile_size"), ("tile_size", 15, "16"),
    ("tile_size", 100_000, "tile_size"), ("tile_size", 224.0, "tile_size"),
    ("target_mpp", 0, "target_mpp"), ("target_mpp", -1, "target_mpp"),
    ("target_mpp", float("nan"), "target_mpp"), ("target_mpp", float("inf"), "target_mpp"),
    ("min_tissue", 2, "min_tissue"), ("min_tissue", -0.1, "min_tissue"),
    ("stride", 0, "stride"), ("stride", -1, "stride"), ("stride", 1, "1/8"),
    ("stride", 27, "at least 28"), ("max_tiles", 0, "max_tiles"), ("max_tiles", -5, "max_tiles"),
    ("seed", -1, "seed"),
])
def test_params_are_refused_when_made_not_only_when_planned(field, value, words):
    """The API refuses what the CLI refuses: on construction, and on dataclasses.replace."""
    with pytest.raises(ValueError, match=words):
        TilingParams(**{field: value})
    with pytest.raises(ValueError, match=words):
        replace(TilingParams(), **{field: value})


def test_params_at_the_bounds_are_accepted():
    TilingParams(tile_size=16, target_mpp=0.01, min_tissue=0.0, stride=2, max_tiles=1, seed=0)
    TilingParams(tile_size=224, stride=28, min_tissue=1.0, target_mpp=np.float32(0.5))


def test_explicit_zero_tiling_is_refused_not_replaced_by_the_model_default():
    from hashview.indexing import model_tiling
    from hashview.models import ModelCard

    card = ModelCard("m", "mth", 64, 64, tile_size=150, target_mpp=0.5)
    assert model_tiling(card).tile_size == 150
    with pytest.raises(ValueError, match="tile_size"):
        model_tiling(card, tile_size=0)
    with pytest.raises(ValueError, match="target_mpp"):
        model_tiling(card, target_mpp=0.0)


def test_a_grid_of_too_many_tiles_is_refused_before_it_is_built(monkeypatch):
    import hashview.tiling as tiling
    from hashview.errors import SourceError

    monkeypatch.setattr(tiling, "MAX_GRID_TILES", 100)  # the CMU slide has 9 x 13 = 117
    with open_source(SLIDE) as source:
        with pytest.raises(SourceError, match="117 tiles, more than 100"):
            plan_tiles(source, TilingParams(min_tissue=0.0))
