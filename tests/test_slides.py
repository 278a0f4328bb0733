"""hashview.slides: opening real slides and images, conversions, every bad input, patch folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashview.errors import SourceError
from hashview.slides import (ImageSource, InputItem, OpenSlideSource, PatchEntry, expand_inputs,
                             open_source, scan_patch_folder)
from hashview.tiling import load_patch

DATA = Path(__file__).resolve().parent / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"
TINY_SLIDE = DATA / "tiny-16px.svs"
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"
KATHER = DATA / "kather"
KATHER_CLASSES = ["01_TUMOR", "02_STROMA", "04_LYMPHO", "07_ADIPOSE"]


def assert_one_line_error(excinfo, path, *fragments):
    text = str(excinfo.value)
    assert "\n" not in text
    assert str(path) in text
    for fragment in fragments:
        assert fragment in text, text


# --- real slides ---------------------------------------------------------------------------

def test_open_svs_geometry_mpp_and_associated_images():
    with open_source(SLIDE) as source:
        assert isinstance(source, OpenSlideSource)
        assert source.kind == "openslide"
        assert source.path == SLIDE
        assert source.dimensions == (2220, 2967)
        assert source.level_count == 1
        assert source.level_dimensions == ((2220, 2967),)
        assert source.level_downsamples == (1.0,)
        assert source.mpp == pytest.approx(0.499, abs=1e-3)
        assert source.properties["openslide.vendor"] == "aperio"
        with pytest.raises(TypeError):
            source.properties["openslide.vendor"] = "x"  # read-only
        associated = source.associated_images
        assert {"label", "macro", "thumbnail"} <= set(associated)
        assert all(image.mode == "RGB" for image in associated.values())
        assert source.get_best_level_for_downsample(8.0) == 0


def test_read_region_and_thumbnail_shapes():
    with open_source(SLIDE) as source:
        region = source.read_region((1000, 1500), 0, (64, 48))
        assert region.mode == "RGB" and region.size == (64, 48)
        # A region hanging over the edge is padded with white, not black or transparent.
        edge = source.read_region((2200, 2950), 0, (40, 40))
        assert edge.mode == "RGB" and edge.getpixel((39, 39)) == (255, 255, 255)
        thumbnail = source.get_thumbnail((256, 256))
        assert thumbnail.mode == "RGB"
        assert thumbnail.size == (round(2220 * 256 / 2967), 256)  # aspect kept, fits the box
        assert np.asarray(thumbnail).mean() < 250  # real tissue, not a blank image
    with pytest.raises(SourceError, match="closed"):
        source.read_region((0, 0), 0, (8, 8))


def test_tiny_svs():
    with open_source(TINY_SLIDE) as source:
        assert source.kind == "openslide"
        assert source.dimensions == (16, 16)
        assert source.read_region((0, 0), 0, (16, 16)).size == (16, 16)
        assert source.get_thumbnail((100, 100)).size == (16, 16)  # never upscaled


def test_striped_tiff_falls_back_to_pillow():
    with open_source(STRIPED_TIFF) as source:
        assert isinstance(source, ImageSource)
        assert source.kind == "image"
        assert source.dimensions == (1493, 901)
        assert source.level_count == 1 and source.level_downsamples == (1.0,)
        assert source.mpp is None  # the file carries a 1 dpi placeholder, not a calibration
        assert source.associated_images == {}
        region = source.read_region((1480, 890), 0, (20, 20))
        assert region.size == (20, 20) and region.getpixel((19, 19)) == (255, 255, 255)
        assert source.get_thumbnail((300, 300)).size == (300, 181)
        with pytest.raises(ValueError):
            source.read_region((0, 0), 1, (4, 4))  # a single-level source has no level 1


# --- plain image conversions -----------------------------------------------------------------

def _open_pixels(path):
    with open_source(path) as source:
        assert source.kind == "image"
        return np.asarray(source.read_region((0, 0), 0, source.dimensions))


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels = _open_pixels(tmp_path / "a.png")
    assert pixels.shape == (8, 8, 3)
    assert tuple(pixels[0, 0]) == (200, 0, 0)
    assert tuple(pixels[7, 7]) == (255, 255, 255)


def test_greyscale_and_la(tmp_path):
    Image.fromarray(np.full((5, 7), 90, np.uint8), "L").save(tmp_path / "g.png")
    assert tuple(_open_pixels(tmp_path / "g.png")[2, 3]) == (90, 90, 90)
    Image.new("LA", (4, 4), (10, 0)).save(tmp_path / "la.png")  # fully transparent black
    assert tuple(_open_pixels(tmp_path / "la.png")[0, 0]) == (255, 255, 255)


def test_sixteen_bit_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 257 * 100], [65535, 32768]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "s.png")  # mode I;16
    pixels = _open_pixels(tmp_path / "s.png")[..., 0]
    assert pixels.tolist() == [[0, 100], [255, 128]]


def test_cmyk_and_palette(tmp_path):
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    red = _open_pixels(tmp_path / "c.jpg")[3, 3]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert tuple(_open_pixels(tmp_path / "p.png")[1, 1]) == (10, 200, 30)


def test_tiff_resolution_gives_mpp_only_when_plausible(tmp_path):
    image = Image.new("RGB", (10, 10), (200, 100, 150))
    image.save(tmp_path / "cm.tif", resolution=40000.0, resolution_unit="cm")  # 0.25 µm/px
    image.save(tmp_path / "screen.tif", dpi=(72, 72))  # 352 µm/px: a placeholder
    with open_source(tmp_path / "cm.tif") as source:
        assert source.mpp == pytest.approx(0.25)
    with open_source(tmp_path / "screen.tif") as source:
        assert source.mpp is None


# --- bad inputs --------------------------------------------------------------------------------

def test_missing_path():
    path = DATA / "no-such-slide.svs"
    with pytest.raises(SourceError) as excinfo:
        open_source(path)
    assert_one_line_error(excinfo, path, "no such file")


def test_folder_given_as_source(tmp_path):
    with pytest.raises(SourceError) as excinfo:
        open_source(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "is a folder")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(SourceError) as excinfo:
        open_source(path)
    assert_one_line_error(excinfo, path, "empty file (0 bytes)")


def test_text_file_named_svs(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\nsecond line\n")
    with pytest.raises(SourceError) as excinfo:
        open_source(path)
    assert_one_line_error(excinfo, path, "not a slide or image file")


def test_truncated_svs(tmp_path):
    path = tmp_path / "half.svs"
    data = SLIDE.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError) as excinfo:
        open_source(path)
    assert_one_line_error(excinfo, path, "truncated or corrupt")


def test_truncated_jpeg(tmp_path):
    full, path = tmp_path / "full.jpg", tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError) as excinfo:
        open_source(path)
    assert_one_line_error(excinfo, path, "truncated or corrupt")


@pytest.mark.parametrize("pixels", [120 * 100, 250 * 100])  # within 2x of the limit, and beyond
def test_decompression_bomb_refused(tmp_path, monkeypatch, pixels):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (pixels // 100, 100), "white").save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(SourceError) as excinfo:
        open_source(path)
    assert_one_line_error(excinfo, path, f"image too large ({pixels} pixels, limit 10000)")
    with pytest.raises(SourceError, match="too large"):
        load_patch(path, 32)
    assert Image.MAX_IMAGE_PIXELS == 10_000  # the limit is never switched off


def test_empty_folder(tmp_path):
    with pytest.raises(SourceError) as excinfo:
        scan_patch_folder(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "no images found")
    items, errors = expand_inputs([tmp_path])
    assert items == [] and len(errors) == 1 and "no slides or images found" in str(errors[0])


# --- patch folders and inputs ---------------------------------------------------------------

def test_patch_folder_labels_from_subfolders():
    entries = scan_patch_folder(KATHER)
    assert len(entries) == 12
    assert [entry.label for entry in entries] == [c for c in KATHER_CLASSES for _ in range(3)]
    assert all(entry.patient_id is None for entry in entries)
    assert entries == sorted(entries, key=lambda e: e.path.relative_to(KATHER).as_posix())
    assert entries == scan_patch_folder(KATHER)  # deterministic


def test_patch_folder_labels_csv_by_column_name(tmp_path):
    (tmp_path / "IDC").mkdir()
    for name in ["IDC/a.png", "IDC/b.png", "loose.png"]:
        Image.new("RGB", (50, 50), (200, 120, 180)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text(  # the header of the IDC breast set, label last
        "path,patient_id,x,y,label\nIDC/a.png,10253,1,2,non-IDC\nloose.png,9,0,0,IDC\n")
    entries = {e.path.relative_to(tmp_path).as_posix(): e for e in scan_patch_folder(tmp_path)}
    assert entries["IDC/a.png"] == PatchEntry(tmp_path / "IDC/a.png", "non-IDC", "10253")
    assert entries["loose.png"].label == "IDC" and entries["loose.png"].patient_id == "9"
    assert entries["IDC/b.png"].label == "IDC"  # not listed: falls back to the subfolder


def test_labels_csv_missing_label_column(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,patient_id\na.png,1\n")
    with pytest.raises(SourceError) as excinfo:
        scan_patch_folder(tmp_path)
    assert_one_line_error(excinfo, tmp_path / "labels.csv", "missing column 'label'")


def test_files_in_root_have_no_label_and_hidden_files_skipped(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "root.png")
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("x")
    assert scan_patch_folder(tmp_path) == [PatchEntry(tmp_path / "root.png", None, None)]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_terminates(tmp_path):
    (tmp_path / "A").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "A" / "x.png")
    try:
        os.symlink(tmp_path, tmp_path / "A" / "loop", target_is_directory=True)
    except OSError:
        pytest.skip("cannot create symlinks here")
    assert [e.path.name for e in scan_patch_folder(tmp_path)] == ["x.png"]


def test_expand_inputs_mixed(tmp_path):
    shutil.copytree(KATHER / "01_TUMOR", tmp_path / "patches" / "01_TUMOR")
    shutil.copy(TINY_SLIDE, tmp_path / "patches" / "tiny.svs")
    # not a pyramid, but 1493x901 px: larger than a patch, so tiled as a slide (image_kind)
    shutil.copy(STRIPED_TIFF, tmp_path / "patches" / "striped.tif")
    missing = tmp_path / "missing.svs"
    items, errors = expand_inputs([SLIDE, tmp_path / "patches", missing, SLIDE])
    assert items[0] == InputItem(SLIDE, "slide")
    # SLIDE once (deduplicated), tiny.svs and the large striped image
    assert [i.kind for i in items].count("slide") == 3
    patches = [i for i in items if i.kind == "patch"]
    assert len(patches) == 3
    assert {i.label for i in patches if i.path.suffix == ".tif" and "01_TUMOR" in str(i.path)} \
        == {"01_TUMOR"}
    assert InputItem(tmp_path / "patches" / "striped.tif", "slide") in items
    assert InputItem(tmp_path / "patches" / "tiny.svs", "slide") in items
    assert len(errors) == 1 and str(missing) in str(errors[0]) and "no such file" in str(errors[0])
    assert expand_inputs([SLIDE, tmp_path / "patches", missing, SLIDE])[0] == items


def test_plain_image_given_directly_is_a_slide_item():
    path = KATHER / "01_TUMOR" / sorted(os.listdir(KATHER / "01_TUMOR"))[0]
    assert expand_inputs([path]) == ([InputItem(path, "slide")], [])


def test_load_patch_resizes_to_rgb_tile():
    entry = scan_patch_folder(KATHER)[0]
    tile = load_patch(entry.path, 224)
    assert tile.mode == "RGB" and tile.size == (224, 224)
    with pytest.raises(SourceError, match="no such file"):
        load_patch(KATHER / "nope.png", 224)


def test_one_rule_says_whether_an_image_is_a_patch_or_a_slide(tmp_path):
    from hashview.slides import PATCH_MAX_SIDE, image_kind

    kather_tile = KATHER / "01_TUMOR" / sorted(os.listdir(KATHER / "01_TUMOR"))[0]
    assert image_kind(kather_tile) == "patch"  # a striped 150 px TIFF
    assert image_kind(STRIPED_TIFF) == "slide"  # a striped 1493x901 px TIFF
    assert image_kind(SLIDE) == image_kind(TINY_SLIDE) == "slide"  # slide formats, any size
    Image.new("RGB", (PATCH_MAX_SIDE, 40)).save(tmp_path / "edge.png")
    Image.new("RGB", (40, PATCH_MAX_SIDE + 1)).save(tmp_path / "tall.png")
    assert (image_kind(tmp_path / "edge.png"), image_kind(tmp_path / "tall.png")) == \
        ("patch", "slide")
    (tmp_path / "broken.png").write_bytes(b"not an image")  # its reader says why, later
    assert image_kind(tmp_path / "broken.png") == "patch"
