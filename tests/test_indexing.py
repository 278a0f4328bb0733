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


def test_stage_timing_sees_every_tile_and_does_not_change_the_codes(slide_library, tmp_path):
    from hashview.timing import StageTimes

    path, _ = slide_library
    with Library.open(path) as lib:
        slide = lib.find_source(path=str(SLIDE.resolve()))
        expected = lib.codes()[slide.tile_start:slide.tile_start + slide.tile_count]
    times = StageTimes()
    report = index_paths([SLIDE], tmp_path / "timed.h5", times=times, batch_size=16)
    n = report.tiles_added
    with Library.open(tmp_path / "timed.h5") as lib:
        np.testing.assert_array_equal(lib.codes(), expected)  # batch size and threads: same codes
    stats = times.to_dict()
    for stage in ("read", "resize", "batch", "forward", "pack", "write"):
        assert stats[stage]["items"] == n, stage
        assert stats[stage]["seconds"] >= 0
    assert stats["tissue mask"]["items"] == 1


def test_encoding_progress_reports_the_measured_rate_per_slide(tmp_path):
    events = []
    index_paths([SLIDE], tmp_path / "lib.h5", batch_size=8,
                params=TilingParams(tile_size=150, target_mpp=0.495, max_tiles=24),
                progress=events.append)
    encoding = [e for e in events if e.stage == "encoding"]
    assert [e.done for e in encoding] == [8, 16, 24] and {e.total for e in encoding} == {24}
    assert all(e.message.startswith("CMU-1-Small-Region.svs · ") for e in encoding)
    assert all(e.message.endswith(" tiles/s") for e in encoding)


def test_cancel_during_encoding_waits_for_reads_and_stores_nothing(tmp_path):
    from hashview.progress import Cancelled

    def cancel_after_first_batch(p):
        if p.stage == "encoding" and p.done >= 8:
            raise Cancelled()

    with pytest.raises(Cancelled):
        index_paths([SLIDE], tmp_path / "lib.h5", batch_size=8,
                    progress=cancel_after_first_batch)
    with Library.open(tmp_path / "lib.h5") as lib:
        assert lib.n_sources == 0 and lib.n_tiles == 0


def test_prefetch_keeps_order_and_bounds_reads_ahead():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from hashview.indexing import _prefetched

    started, lock = [], threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        return i * i

    with ThreadPoolExecutor(2) as pool:
        gen = _prefetched(load, range(100), pool, depth=5)
        assert next(gen) == 0
        gen.close()  # waits for loads in flight; none beyond the depth was submitted
        assert len(started) <= 7
        assert list(_prefetched(load, range(20), pool, depth=3)) == [i * i for i in range(20)]


def test_batchwise_reading_keeps_order_and_reads_nothing_while_the_caller_works():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from hashview.indexing import _batchwise

    running, lock = [0], threading.Lock()
    seen_running = []

    def load(i):
        with lock:
            running[0] += 1
        try:
            time.sleep(0.01 * (i % 5))  # later items of a batch still read when the first is done
            return i * i
        finally:
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(2) as pool:
        out = []
        for value in _batchwise(load, range(23), pool, batch=5):
            seen_running.append(running[0])  # the caller "encodes" here
            out.append(value)
        assert out == [i * i for i in range(23)]
        assert set(seen_running) == {0}
        gen = _batchwise(load, range(100), pool, batch=5)
        assert next(gen) == 0
        gen.close()
        assert running[0] == 0


def test_numpy_morphology_matches_pillow_rank_filters():
    from PIL import Image, ImageFilter

    from hashview.tiling import _morphology

    def pillow(mask, size):  # the definition: Max, Min, Min, Max filters on a 0/255 image
        image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
        for f in (ImageFilter.MaxFilter, ImageFilter.MinFilter, ImageFilter.MinFilter,
                  ImageFilter.MaxFilter):
            image = image.filter(f(size))
        return np.asarray(image) > 127

    rng = np.random.default_rng(0)
    for shape, density in [((40, 70), 0.5), ((200, 33), 0.3), ((3, 90), 0.8), ((1, 5), 0.5)]:
        mask = rng.random(shape) < density
        for size in (3, 5):
            np.testing.assert_array_equal(_morphology(mask, size), pillow(mask, size))


def test_a_single_query_tile_is_encoded_on_one_thread_and_the_setting_restored(monkeypatch):
    import torch

    from hashview.encode import Encoder
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.tiling import load_patch

    encoder = Encoder(load_model(DEFAULT_MODEL), device="cpu")
    seen = []
    forward = encoder.net.forward
    monkeypatch.setattr(encoder.net, "forward",
                        lambda x: (seen.append((len(x), torch.get_num_threads())), forward(x))[1])
    before = torch.get_num_threads()
    image = load_patch(next(KATHER.rglob("*.tif")), encoder.input_size)
    one = encoder.encode([image])
    many = encoder.encode([image] * 8)
    assert seen[0] == (1, 1) and seen[1] == (8, before)
    assert torch.get_num_threads() == before
    assert one.shape == (1, encoder.bits // 8) and many.shape == (8, encoder.bits // 8)


def test_region_query_reads_a_tile_exactly_as_indexing_did_from_a_coarser_level(tmp_path):
    """A 150 px tile at 1.6 µm/px seen by the 64 px default model spans 485 level-0 px: both
    indexing and a region query read it from the 4x level (not level 0), resampled once, so
    querying an indexed tile gives back its own code at distance 0."""
    from hashview.bench.synthetic import make_synthetic_slide
    from hashview.encode import Encoder
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.search.query import region_tiles
    from hashview.slides import open_source
    from hashview.tiling import plan_geometry

    slide = make_synthetic_slide(tmp_path / "pyramid.tiff", KATHER, 2400)
    loaded = load_model(DEFAULT_MODEL)
    params = TilingParams(tile_size=150, target_mpp=1.6, min_tissue=0.3)
    encoder = Encoder(loaded, device="cpu")
    with open_source(slide) as source:
        assert source.level_downsamples[:2] == (1.0, 4.0)
        assert plan_geometry(source, params).level == 0  # enough pixels only at level 0 for 150
        assert plan_geometry(source, params, encoder.input_size).level == 1  # 64 px: 4x will do
    report = index_paths([slide], tmp_path / "lib.h5", model=loaded, params=params)
    assert report.tiles_added >= 4 and not report.failed
    with Library.open(tmp_path / "lib.h5") as lib:
        table, codes = lib.tile_table(), lib.codes()
    with open_source(slide) as source:
        tiles = [region_tiles(source, (int(x), int(y), int(s), int(s)), params,
                              encoder.input_size)[0]
                 for x, y, s in zip(table["x"], table["y"], table["size"])]
    assert {t.size for t in tiles} == {(encoder.input_size, encoder.input_size)}
    np.testing.assert_array_equal(encoder.encode(tiles), codes)
