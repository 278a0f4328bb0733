"""The similarity map in the app: follows the last query, threshold and opacity, click to
search from a spot, and a slide not yet in the library indexed first."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from conftest import KATHER, SLIDE, STRIPED_TIFF, TUMOUR_PATCH  # noqa: E402

SEARCH_MS = 60_000
JOB_MS = 120_000


def _map_of(qtbot, window, request):
    """Wait until the viewer shows the map of ``request``'s query; the layer."""
    layer = window.viewer.similarity
    qtbot.waitUntil(lambda: layer.has_map() and window.controller.last_request == request
                    and request.describe() in layer.caption, timeout=SEARCH_MS)
    return layer


def test_the_map_follows_the_last_query_with_threshold_and_opacity(qtbot, window):
    from hashview.search.heatmap import similarity_map

    window.open_slide(SLIDE)
    window.actions_.similarity.trigger()  # View ▸ Similarity map (H)
    assert window.similarity_toolbar.isVisible() and window.viewer.similarity.visible
    assert "Click the slide" in window.similarity_bar.status.text()  # no query yet
    assert not window.viewer.similarity.has_map()

    window.search_region(900, 1300, 300, 300)
    layer = _map_of(qtbot, window, window.controller.last_request)
    expected = similarity_map(window.controller._engine.session, (str(SLIDE), (900, 1300, 300,
                                                                               300)), SLIDE)
    assert sorted(layer.tiles[:, 3].tolist()) == sorted(d for *_, d in expected.tiles)
    assert "nearest" in window.similarity_bar.status.text()
    assert layer.passing().all()  # the threshold starts at "every tile"

    nearest = int(layer.tiles[:, 3].min())
    window.similarity_bar.threshold.setValue(nearest)
    assert layer.threshold == nearest
    assert layer.passing().sum() == (layer.tiles[:, 3] <= nearest).sum() < len(layer.tiles)
    window.similarity_bar.opacity.setValue(80)
    assert layer.opacity == pytest.approx(0.8)
    window.grab()  # paints the map and its legend without error
    x, y, size, distance = layer.tiles[0]
    centre = window.viewer.map_from_level0(x + size / 2, y + size / 2)
    qtbot.mouseMove(window.viewer, centre.toPoint())
    qtbot.waitUntil(lambda: window.viewer.toolTip() != "", timeout=5_000)
    assert window.viewer.toolTip() == f"{layer.distance_at(x + size / 2, y + size / 2)} bits " \
                                      "from the query" and layer.distance_at(-1, -1) is None

    first = window.controller.last_request
    window.search_region(200, 2500, 300, 300)  # another query: the map follows it
    layer = _map_of(qtbot, window, window.controller.last_request)
    assert window.controller.last_request != first

    window.actions_.similarity.trigger()  # off: the map and its bar go
    assert not window.similarity_toolbar.isVisible() and not layer.shown()


def test_a_click_on_the_slide_searches_from_there_and_a_double_click_only_zooms(qtbot, window):
    window.open_slide(SLIDE)
    viewer = window.viewer
    window.actions_.similarity.trigger()
    centre = QPointF(viewer.width() / 2, viewer.height() / 2)
    x, y = viewer.map_to_level0(centre)

    # a real double-click: press and release, then the double-click event and its release
    qtbot.mouseClick(viewer, Qt.MouseButton.LeftButton, pos=centre.toPoint())
    qtbot.mouseDClick(viewer, Qt.MouseButton.LeftButton, pos=centre.toPoint())
    qtbot.wait(QApplication.doubleClickInterval() + 400)
    assert window.controller.last_request is None  # a double-click zooms, it does not search

    qtbot.mouseClick(viewer, Qt.MouseButton.LeftButton, pos=centre.toPoint())
    qtbot.waitUntil(lambda: window.controller.last_request is not None, timeout=5_000)
    request = window.controller.last_request
    rx, ry, rw, rh = request.region
    x, y = viewer.map_to_level0(centre)
    assert request.kind == "region" and rx <= x <= rx + rw and ry <= y <= ry + rh
    _map_of(qtbot, window, request)


def test_a_slide_not_in_the_library_is_indexed_first_then_mapped(qtbot, window, tmp_path,
                                                                 message_boxes):
    from hashview.indexing import index_paths

    patches_only = tmp_path / "patches.h5"
    index_paths([KATHER / "01_TUMOR"], patches_only)
    assert window.open_library(patches_only)
    window.open_slide(SLIDE)
    window.actions_.similarity.trigger()
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        window.search_region(900, 1300, 300, 300)
        qtbot.waitUntil(lambda: bool(message_boxes.of("question")), timeout=SEARCH_MS)
    assert "not in the library" in message_boxes.of("question")[0][2]
    assert finished.args[2] == "done"
    layer = _map_of(qtbot, window, window.controller.last_request)
    assert layer.tiles[:, 3].min() == 0  # the query's own tile, stored now
    window.search_region(300, 300, 300, 300)
    _map_of(qtbot, window, window.controller.last_request)
    assert len(message_boxes.of("question")) == 1  # asked once, not at every search


def test_a_slide_stored_without_tiles_says_so(qtbot, window, tmp_path, message_boxes):
    from hashview.indexing import index_paths

    library = tmp_path / "kidney.h5"
    index_paths([STRIPED_TIFF], library)  # stored, but no tile holds enough tissue
    assert window.open_library(library)
    window.open_slide(STRIPED_TIFF)
    window.actions_.similarity.trigger()
    from hashview.gui.search_controller import SearchRequest

    window.controller.last_request = SearchRequest("files", paths=(str(TUMOUR_PATCH),))
    window.refresh_similarity_map()
    qtbot.waitUntil(lambda: "no tiles to colour" in window.similarity_bar.status.text(),
                    timeout=SEARCH_MS)
    assert not message_boxes.of("question")  # nothing to index: no offer


def test_declining_to_index_is_asked_once_per_slide(qtbot, window, tmp_path, monkeypatch,
                                                    message_boxes):
    from PySide6.QtWidgets import QMessageBox

    from hashview.indexing import index_paths

    asked = []
    monkeypatch.setattr(QMessageBox, "question", staticmethod(
        lambda *args, **kwargs: asked.append(args[2]) or QMessageBox.StandardButton.No))
    patches_only = tmp_path / "patches.h5"
    index_paths([KATHER / "01_TUMOR"], patches_only)
    assert window.open_library(patches_only)
    window.open_slide(SLIDE)
    window.actions_.similarity.trigger()
    for region in ((900, 1300, 300, 300), (300, 300, 300, 300)):
        window.search_region(*region)
        qtbot.waitUntil(lambda: "not in the library" in window.similarity_bar.status.text()
                        and window.results.outcome is not None
                        and window.results.outcome.request.region == region,
                        timeout=SEARCH_MS)
    assert len(asked) == 1 and window.jobs.running_count() == 0  # declined: nothing indexed
