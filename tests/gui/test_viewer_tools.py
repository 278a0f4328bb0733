"""SlideViewer tools: magnification presets, the zoom limit, the ruler, display adjustments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QColor, QImage, QKeyEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hashview.gui.viewer.adjust_dialog import DisplayAdjustDialog  # noqa: E402
from hashview.gui.viewer.display import DisplayAdjustment, apply_lut  # noqa: E402
from hashview.gui.viewer.ruler import format_ruler_length  # noqa: E402
from conftest import VIEWER_SIZE  # noqa: E402
from hashview.slides import open_source  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"           # 0.499 µm/px: a 20x scan
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"   # no scale recorded
SIZE = VIEWER_SIZE  # the shared ``viewer`` fixture's (conftest)


@pytest.fixture
def viewer(viewer, slide, qtbot):
    """The shared viewer (conftest) with the slide open."""
    viewer.open_source(slide)
    qtbot.waitUntil(lambda: not viewer.is_loading(), timeout=10_000)
    return viewer


def press(viewer, key, modifiers=Qt.KeyboardModifier.NoModifier):
    QApplication.sendEvent(viewer, QKeyEvent(QKeyEvent.Type.KeyPress, key, modifiers))


def test_number_keys_jump_to_magnifications_from_the_slides_scale(viewer, slide):
    for key, mag in ((Qt.Key.Key_3, 10), (Qt.Key.Key_4, 20), (Qt.Key.Key_2, 5)):
        centre = viewer.center()
        press(viewer, key)
        assert viewer.downsample() == pytest.approx(10 / mag / slide.mpp)
        assert viewer.magnification() == f"{mag}x"
        assert viewer.center() == pytest.approx(centre)  # zooms about the view's centre
    press(viewer, Qt.Key.Key_1)  # 1x is smaller than the whole slide at this size: fit
    assert viewer.downsample() == pytest.approx(viewer.fit_downsample())


def test_zooming_in_stops_at_twice_the_scan(viewer, slide):
    for _ in range(12):
        viewer.zoom_in()
    assert viewer.downsample() == pytest.approx(0.5)
    assert viewer.magnification_value() == pytest.approx(2 * 10 / slide.mpp)
    reached = viewer.go_to_magnification(80)  # past the limit: the limit
    assert reached == pytest.approx(2 * 10 / slide.mpp)
    press(viewer, Qt.Key.Key_5)  # 40x is the limit of this 20x scan: reachable
    assert viewer.magnification() == "40x"


def test_ruler_measures_in_micrometres_and_esc_clears(qtbot, viewer, slide):
    press(viewer, Qt.Key.Key_M)
    assert viewer.ruler_mode() and not viewer.region_mode()
    viewer.center_on(1000, 1000, 1.0)
    start, end = QPoint(200, 300), QPoint(500, 700)   # 300 x 400 screen px = 500 level-0 px
    qtbot.mousePress(viewer, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(viewer, end)
    qtbot.mouseRelease(viewer, Qt.MouseButton.LeftButton, pos=end)
    x0, y0, x1, y1 = viewer.ruler()
    assert np.hypot(x1 - x0, y1 - y0) == pytest.approx(500, abs=2)
    assert viewer.ruler_text() == format_ruler_length(500, slide.mpp) == "250 µm"
    assert viewer.center() == pytest.approx((1000, 1000))  # measuring does not pan
    viewer.grab()  # paints the line and its label
    press(viewer, Qt.Key.Key_Escape)
    assert viewer.ruler() is None and viewer.ruler_mode()
    press(viewer, Qt.Key.Key_Escape)
    assert not viewer.ruler_mode()


def test_ruler_lengths_and_pixels_when_the_scale_is_unknown(qtbot, viewer):
    assert format_ruler_length(12.4, 0.5) == "6.2 µm"
    assert format_ruler_length(3000, 0.5) == "1.50 mm"
    assert format_ruler_length(812.3, None) == "812 px"
    source = open_source(STRIPED_TIFF)
    try:
        viewer.open_source(source)
        viewer.set_ruler((0, 0, 300, 400))
        assert viewer.ruler_text() == "500 px"
        viewer.set_region_mode(True)
        viewer.set_ruler_mode(True)  # one drag mode at a time
        assert viewer.ruler_mode() and not viewer.region_mode()
    finally:
        viewer.close_source()
        source.close()


def test_display_adjustment_changes_the_screen_not_the_tiles(qtbot, viewer, slide):
    viewer.center_on(1000, 1500, 1.0)
    qtbot.waitUntil(lambda: not viewer.is_loading(), timeout=10_000)
    cache = viewer._loader.cache
    cached = {key: QImage(cache.get(key)) for key in list(cache._items)}
    before = viewer.grab().toImage().pixelColor(400, 300)
    viewer.set_display_adjustment(DisplayAdjustment(brightness=-60))
    after = viewer.grab().toImage().pixelColor(400, 300)
    assert after.lightness() < before.lightness() - 20
    for key, image in cached.items():  # what queries and the index see is untouched
        assert cache.get(key) == image
    region = viewer.find_similar_at(QPointF(400, 300))
    assert region is not None  # a query is a rectangle of the slide, read from the file
    viewer.set_display_adjustment(DisplayAdjustment())
    assert viewer.grab().toImage().pixelColor(400, 300) == before


def test_lookup_table_brightness_contrast_gamma():
    image = QImage(3, 1, QImage.Format.Format_RGB32)
    for x, level in enumerate((0, 128, 255)):
        image.setPixelColor(x, 0, QColor(level, level, level))
    assert DisplayAdjustment().is_identity
    brighter = apply_lut(image, DisplayAdjustment(brightness=50).lut())
    assert brighter.pixelColor(1, 0).red() > 128 and image.pixelColor(1, 0).red() == 128
    lifted = apply_lut(image, DisplayAdjustment(gamma=2.0).lut())
    assert [lifted.pixelColor(x, 0).red() for x in range(3)][::2] == [0, 255]  # ends stay
    assert lifted.pixelColor(1, 0).red() > 170
    flat = DisplayAdjustment(contrast=-100).lut()
    assert 90 < flat[0] <= flat[255] < 170


def test_adjust_dialog_sliders_emit_and_reset(qtbot):
    dialog = DisplayAdjustDialog()
    qtbot.addWidget(dialog)
    seen = []
    dialog.adjustmentChanged.connect(seen.append)
    dialog.contrast.setValue(40)
    dialog.gamma.setValue(50)
    assert seen[-1] == DisplayAdjustment(0, 40, 2.0)
    dialog.reset()
    assert seen[-1] == DisplayAdjustment() and dialog.contrast.value() == 0
    assert not dialog.isModal()


def test_magnified_tiles_join_without_seams(qtbot, viewer):
    """At 2x the scan, tiles scaled one by one left a line at every tile edge."""
    viewer.set_overview_visible(False)
    viewer.center_on(1110, 1483, 0.5)
    qtbot.waitUntil(lambda: not viewer.is_loading(), timeout=10_000)
    image = viewer.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(),
                                                              image.bytesPerLine())
    pixels = rows[:, :3 * image.width()].reshape(image.height(), image.width(), 3)
    column_steps = np.abs(np.diff(pixels[:500].astype(float), axis=1)).mean(axis=(0, 2))
    seam = round(viewer.map_from_level0(1024, 0).x())  # the edge between tiles 3 and 4
    assert 10 < seam < image.width() - 10
    around = np.r_[column_steps[seam - 6:seam - 2], column_steps[seam + 1:seam + 5]].mean()
    assert column_steps[seam - 1] < 2.0 * around
