"""Similarity heat-map of a slide: distances per indexed tile, the rendered map, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SLIDE, TINY_SLIDE
from hashview.encode import hamming_distance


@pytest.fixture(scope="module")
def session(slide_library):
    import hashview

    return hashview.open_library(slide_library[0], device="cpu")


def _a_stored_tile(session):
    searcher = session.load()
    ids = np.flatnonzero(np.isin(searcher.tile_sources, list(searcher.source_ids_of_file(SLIDE))))
    return searcher, ids, searcher.hits_at(ids[40:41], [0])[0]


def test_every_indexed_tile_gets_its_distance_and_the_query_tile_is_nearest(session):
    from hashview.search.heatmap import similarity_map

    searcher, ids, tile = _a_stored_tile(session)
    simmap = similarity_map(session, (SLIDE, (tile.x, tile.y, tile.size, tile.size)), SLIDE)
    assert len(simmap.tiles) == len(ids) and simmap.query_tiles == 1
    by_place = {(x, y): d for x, y, _, d in simmap.tiles}
    assert by_place[(tile.x, tile.y)] == 0  # read as indexing read it: the same code
    query = session.encoder.encode(session.query_tiles(
        (SLIDE, (tile.x, tile.y, tile.size, tile.size)))[0])
    expected = hamming_distance(query, searcher.codes[ids]).reshape(-1)
    assert sorted(by_place.values()) == sorted(expected.tolist())


def test_a_slide_not_in_the_library_is_one_line(session):
    import hashview
    from hashview.search.heatmap import similarity_map

    with pytest.raises(hashview.SourceError, match="not in the library") as raised:
        similarity_map(session, (SLIDE, (0, 0, 100, 100)), TINY_SLIDE)
    assert str(TINY_SLIDE) in str(raised.value)


def test_the_rendered_map_colours_indexed_tiles_and_has_a_legend(session):
    from hashview.explain import jet
    from hashview.search.heatmap import LEGEND_HEIGHT, OPACITY, render_map, similarity_map
    from hashview.slides import open_source

    _, _, tile = _a_stored_tile(session)
    simmap = similarity_map(session, (SLIDE, (tile.x, tile.y, tile.size, tile.size)), SLIDE)
    with open_source(SLIDE) as source:
        image = render_map(source, simmap, max_side=512)
        thumb = source.get_thumbnail((512, 512)).convert("RGB")
    assert image.size == (thumb.width, thumb.height + LEGEND_HEIGHT)
    scale = thumb.width / 2220
    cx, cy = int((tile.x + tile.size / 2) * scale), int((tile.y + tile.size / 2) * scale)
    # the query's own tile (distance 0) is blended with the scale's red end
    expected = (1 - OPACITY) * np.asarray(thumb)[cy, cx] + OPACITY * jet(np.float32(1.0))
    assert np.abs(np.asarray(image)[cy, cx] - expected).max() <= 1
    assert np.array_equal(np.asarray(image)[2, 2], np.asarray(thumb)[2, 2])  # glass: as it is


def test_the_cli_writes_the_map_and_its_json(slide_library, tmp_path, capsys):
    from hashview.cli import main

    out = tmp_path / "map.png"
    assert main(["heatmap", str(slide_library[0]), f"{SLIDE}@1100,1500,150,150",
                 "--slide", str(SLIDE), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Image.open(out).format == "PNG"
    assert result["bits"] == 64 and result["scale"] == [0, 32] and len(result["tiles"]) > 50
    assert result["min_distance"] == min(t["distance"] for t in result["tiles"])
    assert main(["heatmap", str(slide_library[0]), f"{SLIDE}@1,2", "--slide", str(SLIDE),
                 "--out", str(out)]) == 2  # a bad region is a usage error
