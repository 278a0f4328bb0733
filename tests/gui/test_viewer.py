"""SlideViewer: tiled rendering off the UI thread, zoom/pan geometry, queries, overview, HUD."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hashview.gui.viewer import magnification_text, scale_bar  # noqa: E402
from hashview.gui.viewer.painting import BACKGROUND, HIGHLIGHT_COLOUR  # noqa: E402
from conftest import VIEWER_SIZE  # noqa: E402
from hashview.slides import open_source  # noqa: E402
from hashview.slides.base import Source  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"
SIZE = VIEWER_SIZE  # the shared ``viewer`` fixture's (conftest)


class ThreadCheckingSource(Source):
    """Delegates to a real source; records every read made on the main thread."""

    def __init__(self, inner: Source, delay: float = 0.0):
        super().__init__(inner.path)
        self.inner, self.delay = inner, delay
        self.kind = inner.kind
        self.reads = 0
        self.main_thread_reads: list[tuple] = []

    level_dimensions = property(lambda self: self.inner.level_dimensions)
    level_downsamples = property(lambda self: self.inner.level_downsamples)
    mpp = property(lambda self: self.inner.mpp)
    properties = property(lambda self: self.inner.properties)

    def _read_region(self, location, level, size):
        if threading.current_thread() is threading.main_thread():
            self.main_thread_reads.append((location, level, size))
        self.reads += 1
        if self.delay:
            time.sleep(self.delay)
        return self.inner.read_region(location, level, size)


def open_and_wait(qtbot, viewer, source):
    viewer.open_source(source)
    qtbot.waitUntil(lambda: not viewer.is_loading(), timeout=10_000)


def wait_idle(qtbot, viewer):
    qtbot.waitUntil(lambda: not viewer.is_loading(), timeout=10_000)
    QApplication.processEvents()


def pixel(image, x, y):
    colour = image.pixelColor(int(x), int(y))
    return colour.red(), colour.green(), colour.blue()


def test_empty_state_has_hint_and_no_view(viewer):
    image = viewer.grab().toImage()
    assert image.width() == SIZE[0]
    assert viewer.current_source() is None
    assert viewer.find_similar_at(QPoint(10, 10)) is None
    viewer.zoom_in()  # harmless without a slide
    assert viewer.downsample() == 1.0


def test_renders_tiles_from_the_pyramid(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    assert len(viewer._loader.cache) > 0
    image = viewer.grab().toImage()
    centre = pixel(image, SIZE[0] / 2, SIZE[1] / 2)
    background = (BACKGROUND.red(), BACKGROUND.green(), BACKGROUND.blue())
    assert centre != background
    # At downsample 1 the pixel under the screen centre is the level-0 pixel at the view centre.
    viewer.center_on(1000, 1500, 1.0)
    wait_idle(qtbot, viewer)
    image = viewer.grab().toImage()
    shown = np.array([pixel(image, SIZE[0] / 2 + dx, SIZE[1] / 2 + dy)
                      for dx in range(-2, 3) for dy in range(-2, 3)], dtype=float).mean(axis=0)
    truth = np.asarray(slide.read_region((998, 1498), 0, (5, 5)), dtype=float)
    assert np.abs(shown - truth.reshape(-1, 3).mean(axis=0)).max() < 8


def test_read_region_never_runs_on_the_main_thread(qtbot, viewer, slide):
    source = ThreadCheckingSource(slide)
    open_and_wait(qtbot, viewer, source)
    viewer.zoom_in()
    viewer.center_on(500, 700, 0.5)
    viewer.grab()
    wait_idle(qtbot, viewer)
    viewer.fit()
    wait_idle(qtbot, viewer)
    assert source.reads > 0
    assert source.main_thread_reads == []


def test_stale_requests_are_skipped_when_the_view_moves_fast(qtbot, viewer, slide):
    source = ThreadCheckingSource(slide, delay=0.03)
    open_and_wait(qtbot, viewer, source)
    reads_before = source.reads
    for step in range(25):  # each view wants ~12-20 new tiles
        viewer.center_on(200 + 80 * step, 300 + 100 * step, 1.0)
    wait_idle(qtbot, viewer)
    assert source.reads - reads_before < 100
    assert not viewer.is_loading()


def test_fit_zoom_in_zoom_out_and_limits(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    width, height = slide.dimensions
    fit = max(width / SIZE[0], height / SIZE[1])
    assert viewer.downsample() == pytest.approx(fit)
    assert viewer.center() == pytest.approx((width / 2, height / 2))
    with qtbot.waitSignal(viewer.viewChanged) as blocker:
        viewer.zoom_in()
    assert viewer.downsample() == pytest.approx(fit / 2)
    assert blocker.args[2] == pytest.approx(fit / 2)
    viewer.zoom_out()
    assert viewer.downsample() == pytest.approx(fit)
    viewer.zoom_out()  # never beyond fit
    assert viewer.downsample() == pytest.approx(fit)
    for _ in range(10):
        viewer.zoom_in()
    # the zoom limit: twice the scan's resolution (40x on this 20x scan), not endless blur
    assert viewer.downsample() == pytest.approx(0.5)
    assert viewer.magnification() == "40x"
    QApplication.sendEvent(viewer, _key(Qt.Key.Key_0))
    assert viewer.downsample() == pytest.approx(fit)
    QApplication.sendEvent(viewer, _key(Qt.Key.Key_Plus))
    assert viewer.downsample() == pytest.approx(fit / 2)
    cx, cy = viewer.center()
    QApplication.sendEvent(viewer, _key(Qt.Key.Key_Right))
    assert viewer.center()[0] > cx and viewer.center()[1] == pytest.approx(cy)


def _key(key):
    from PySide6.QtGui import QKeyEvent

    return QKeyEvent(QKeyEvent.Type.KeyPress, key, Qt.KeyboardModifier.NoModifier)


def _wheel(viewer, pos: QPointF, notches: float):
    event = QWheelEvent(pos, viewer.mapToGlobal(pos), QPoint(0, 0), QPoint(0, int(120 * notches)),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(viewer, event)


def test_wheel_zoom_keeps_the_point_under_the_cursor(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    for pos, notches in ((QPointF(330, 240), 1), (QPointF(500, 420), 2), (QPointF(250, 200), -1)):
        before_ds = viewer.downsample()
        before = viewer.map_to_level0(pos)
        _wheel(viewer, pos, notches)
        assert (viewer.downsample() < before_ds) == (notches > 0)
        after = viewer.map_to_level0(pos)
        assert abs(after[0] - before[0]) < 1.5 and abs(after[1] - before[1]) < 1.5


def test_double_click_zooms_in_and_drag_pans(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    fit = viewer.downsample()
    qtbot.mouseDClick(viewer, Qt.MouseButton.LeftButton, pos=QPoint(400, 300))
    assert viewer.downsample() == pytest.approx(fit / 2)
    cx, cy = viewer.center()
    qtbot.mousePress(viewer, Qt.MouseButton.LeftButton, pos=QPoint(400, 300))
    qtbot.mouseMove(viewer, QPoint(350, 260))
    qtbot.mouseRelease(viewer, Qt.MouseButton.LeftButton, pos=QPoint(350, 260))
    ds = viewer.downsample()
    assert viewer.center() == pytest.approx((cx + 50 * ds, cy + 40 * ds))


def test_find_similar_region_under_the_cursor(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    viewer.set_query_tile_side(224)
    viewer.center_on(1000, 1500, 1.0)
    centre = QPoint(SIZE[0] // 2, SIZE[1] // 2)
    with qtbot.waitSignal(viewer.findSimilarRequested) as blocker:
        viewer.find_similar_at(centre)
    assert blocker.args == [888, 1388, 224, 224]
    # Near the slide's corner the square is moved inside the slide.
    viewer.center_on(0, 0, 1.0)
    assert viewer.find_similar_at(QPoint(SIZE[0] // 2 + 10, SIZE[1] // 2 + 5)) == (0, 0, 224, 224)
    width, height = slide.dimensions
    viewer.center_on(width, height, 1.0)
    assert viewer.find_similar_at(centre) == (width - 224, height - 224, 224, 224)
    # Through the context menu, as a right-click would do it.
    viewer.center_on(1000, 1500, 1.0)
    menu = viewer.context_menu(centre)
    texts = [action.text() for action in menu.actions()]
    assert "Find similar region" in texts and "Copy coordinates" in texts
    with qtbot.waitSignal(viewer.findSimilarRequested) as blocker:
        next(a for a in menu.actions() if a.text() == "Find similar region").trigger()
    assert blocker.args == [888, 1388, 224, 224]
    next(a for a in menu.actions() if a.text() == "Copy coordinates").trigger()
    assert QApplication.clipboard().text() == "1000, 1500"


def test_default_query_side_is_the_tilers_field_of_view(qtbot, viewer, slide):
    viewer.open_source(slide)
    assert viewer.query_tile_side() == round(224 * 0.5 / slide.mpp)


def test_rubber_band_selection_emits_the_rectangle(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    viewer.center_on(1000, 1500, 2.0)
    shift = Qt.KeyboardModifier.ShiftModifier
    qtbot.mousePress(viewer, Qt.MouseButton.LeftButton, shift, QPoint(300, 200))
    qtbot.mouseMove(viewer, QPoint(450, 300))
    qtbot.mouseRelease(viewer, Qt.MouseButton.LeftButton, shift, QPoint(500, 350))
    assert viewer.center() == pytest.approx((1000, 1500))  # selecting did not pan
    expected = (1000 - 100 * 2, 1500 - 100 * 2, 200 * 2, 150 * 2)
    assert viewer.selection() == expected
    menu = viewer.context_menu(QPoint(10, 10))
    action = next(a for a in menu.actions() if a.text().startswith("Find similar (selected"))
    with qtbot.waitSignal(viewer.findSimilarRequested) as blocker:
        action.trigger()
    assert tuple(blocker.args) == expected
    # Region mode (R): a plain drag selects too; Esc clears.
    QApplication.sendEvent(viewer, _key(Qt.Key.Key_R))
    assert viewer.region_mode()
    qtbot.mousePress(viewer, Qt.MouseButton.LeftButton, pos=QPoint(400, 300))
    qtbot.mouseRelease(viewer, Qt.MouseButton.LeftButton, pos=QPoint(420, 340))
    assert viewer.selection() == (1000, 1500, 40, 80)
    QApplication.sendEvent(viewer, _key(Qt.Key.Key_Escape))
    assert viewer.selection() is None


def test_magnification_and_scale_bar_text(qtbot, viewer, slide):
    assert magnification_text(0.499, 1.0) == "20x"
    assert magnification_text(0.25, 1.0) == "40x"
    assert magnification_text(0.25, 4.0) == "10x"
    assert magnification_text(0.5, 4.0) == "5x"
    assert magnification_text(0.5, 8.0) == "2.5x"
    assert magnification_text(None, 1.0) == "20x (assumed)"
    assert magnification_text(None, 4.0) == "5x (assumed)"
    assert scale_bar(0.5, 1.0)[2] == "50 µm"
    assert scale_bar(0.5, 1.0)[1] == pytest.approx(100)
    assert scale_bar(0.5, 16.0)[2] == "1 mm"
    assert scale_bar(0.25, 0.25)[2] == "5 µm"
    assert scale_bar(None, 1.0) is None
    for mpp in (0.1, 0.25, 0.499, 2.0):
        for ds in (0.25, 1, 3, 10, 64):
            _length, pixels, label = scale_bar(mpp, ds)
            assert pixels <= 140 and label.split()[0] in {"1", "2", "5", "10", "20", "50", "100",
                                                        "200", "500"}
    viewer.open_source(slide)
    viewer.center_on(1000, 1000, 1.0)
    assert viewer.magnification() == "20x"


def test_overview_click_recentres(qtbot, viewer, slide):
    open_and_wait(qtbot, viewer, slide)
    viewer.center_on(200, 200, 1.0)
    wait_idle(qtbot, viewer)
    overview = viewer.overview
    assert overview.isVisible()
    target = overview.image_rect()
    qtbot.mouseClick(overview, Qt.MouseButton.LeftButton,
                     pos=target.center().toPoint())
    width, height = slide.dimensions
    tolerance = width / target.width() * 1.5
    assert viewer.center() == pytest.approx((width / 2, height / 2), abs=tolerance)
    assert viewer.downsample() == 1.0


def test_outlines_highlight_and_cache_limit(qtbot, viewer, slide):
    viewer.set_cache_mb(1)
    open_and_wait(qtbot, viewer, slide)
    for x in (500, 1000, 1500):  # a 1 MB cache holds less than one screenful:
        viewer.center_on(x, 1500, 1.0)  # the visible tiles stay (pinned), the others go
        wait_idle(qtbot, viewer)
    cache = viewer._loader.cache
    assert viewer.grab().toImage().pixelColor(400, 300) != BACKGROUND
    pinned = sum(cache.get(key).sizeInBytes() for key in cache.pinned if key in cache)
    assert 0 < cache.bytes_used <= max(1024 * 1024, pinned)
    viewer.set_tile_outlines([(x, y, 224) for y in range(0, 2700, 224) for x in range(0, 2000, 224)])
    viewer.set_highlight((900, 1400, 200, 200))
    viewer.center_on(1000, 1500, 1.0)
    wait_idle(qtbot, viewer)
    image = viewer.grab().toImage()
    edge = viewer.map_from_level0(900, 1500)  # middle of the highlight's left edge
    r, g, b = pixel(image, round(edge.x()), round(edge.y()))
    assert (r, g, b) == (HIGHLIGHT_COLOUR.red(), HIGHLIGHT_COLOUR.green(), HIGHLIGHT_COLOUR.blue())
    viewer.set_outlines_visible(False)
    assert not viewer.outlines_visible()
    viewer.grab()
    viewer.close_source()
    assert viewer.current_source() is None and not viewer.is_loading()


def test_plain_image_without_calibration(qtbot, viewer):
    source = ThreadCheckingSource(open_source(STRIPED_TIFF))
    try:
        assert source.kind == "image" and source.mpp is None
        open_and_wait(qtbot, viewer, source)
        image = viewer.grab().toImage()
        assert image.pixelColor(SIZE[0] // 2, SIZE[1] // 2) != BACKGROUND
        assert viewer.magnification().endswith("(assumed)")
        viewer.center_on(700, 450, 0.5)
        wait_idle(qtbot, viewer)
        assert source.main_thread_reads == [] and source.reads > 0
    finally:
        viewer.close_source()
        source.inner.close()


