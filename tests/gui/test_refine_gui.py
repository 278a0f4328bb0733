"""Refining a search in the results panel: good/bad marks and Search again, filters, crop."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

from conftest import KATHER, SLIDE, TUMOUR_PATCH  # noqa: E402

SEARCH_MS = 60_000


def _outcome_of(qtbot, window, check):
    qtbot.waitUntil(lambda: window.results.outcome is not None
                    and check(window.results.outcome.request), timeout=SEARCH_MS)
    return window.results.outcome


def test_marks_by_key_then_search_again_refines_with_them(qtbot, window):
    from hashview.search.refine import RefinedResult

    window.search_files([str(TUMOUR_PATCH)])
    _outcome_of(qtbot, window, lambda r: r.kind == "files")
    results, grid = window.results, window.results.grid
    assert not results.refine.search_again.isEnabled()  # nothing marked yet
    items = results.hit_items()
    good = [i for i in items if i.data(Qt.ItemDataRole.UserRole).label == "01_TUMOR"][:2]
    bad = [i for i in items if i.data(Qt.ItemDataRole.UserRole).label != "01_TUMOR"][:1]
    assert good and bad
    grid.setFocus()
    for item, key in [*((i, Qt.Key.Key_G) for i in good), *((i, Qt.Key.Key_B) for i in bad)]:
        grid.clearSelection()
        item.setSelected(True)
        qtbot.keyClick(grid, key)
    good_ids = {i.data(Qt.ItemDataRole.UserRole).tile_index for i in good}
    bad_ids = {i.data(Qt.ItemDataRole.UserRole).tile_index for i in bad}
    assert set(results.marks.good()) == good_ids and set(results.marks.bad()) == bad_ids
    assert good[0].text().startswith("✓") and bad[0].text().startswith("✗")
    assert "Marked 2 good, 1 bad" in results.refine.summary.text()
    assert results.refine.search_again.isEnabled()

    results.refine.search_again.click()
    outcome = _outcome_of(qtbot, window, lambda r: bool(r.positive))
    assert set(outcome.request.positive) == good_ids and set(outcome.request.negative) == bad_ids
    assert isinstance(outcome.result, RefinedResult)
    assert "refined by 2 good, 1 bad" in results.title.text()
    for item in results.hit_items():  # marks stay on their tiles in the new results
        tile = item.data(Qt.ItemDataRole.UserRole).tile_index
        assert item.text().startswith("✓") == (tile in good_ids)

    grid.clearSelection()
    window.search_files([str(TUMOUR_PATCH)])  # a new query: the marks go
    assert results.marks.good() == [] and not results.refine.search_again.isEnabled()


def test_a_mark_toggles_and_u_clears(qtbot, window):
    window.search_files([str(TUMOUR_PATCH)])
    _outcome_of(qtbot, window, lambda r: r.kind == "files")
    results, grid = window.results, window.results.grid
    item = results.hit_items()[0]
    grid.setFocus()
    item.setSelected(True)
    qtbot.keyClick(grid, Qt.Key.Key_G)
    assert len(results.marks.good()) == 1
    qtbot.keyClick(grid, Qt.Key.Key_G)  # the same key again: unmarked
    assert results.marks.good() == []
    qtbot.keyClick(grid, Qt.Key.Key_B)
    qtbot.keyClick(grid, Qt.Key.Key_U)
    assert results.marks.bad() == [] and not item.text().startswith("✗")


def test_filters_keep_hits_of_a_label_or_a_slide_and_rerun(qtbot, window):
    window.search_files([str(TUMOUR_PATCH)])
    _outcome_of(qtbot, window, lambda r: r.kind == "files")
    refine = window.results.refine
    assert not refine.patient.isVisibleTo(window)  # the test library has no patient ids
    refine.label.setCurrentText("02_STROMA")
    outcome = _outcome_of(qtbot, window, lambda r: r.labels == frozenset({"02_STROMA"}))
    assert outcome.result.hits and {h.label for h in outcome.result.hits} == {"02_STROMA"}
    assert "[label 02_STROMA]" in window.results.title.text()
    refine.label.setCurrentIndex(0)
    refine.slide.setCurrentText(SLIDE.name)
    outcome = _outcome_of(qtbot, window, lambda r: r.sources is not None and r.labels is None)
    assert {h.source_path for h in outcome.result.hits} == {str(SLIDE)}
    window.search_files([str(TUMOUR_PATCH)])  # a new query keeps the filters
    outcome = _outcome_of(qtbot, window, lambda r: r.sources is not None and not r.positive)
    assert {h.source_path for h in outcome.result.hits} == {str(SLIDE)}


def test_whole_slide_results_take_no_marks(qtbot, window):
    window.open_slide(SLIDE)
    window.find_similar_cases()
    _outcome_of(qtbot, window, lambda r: r.kind == "case")
    results = window.results
    results.grid.setFocus()
    results.hit_items()[0].setSelected(True)
    qtbot.keyClick(results.grid, Qt.Key.Key_G)
    assert results.marks.good() == [] and "not whole-slide" in results.refine.summary.text()


def test_crop_searches_with_part_of_the_query(qtbot, window):
    window.open_slide(SLIDE)
    window.search_region(800, 1200, 600, 400)
    last = _outcome_of(qtbot, window, lambda r: r.kind == "region").request
    picture = window._query_picture(last)
    assert picture.size == (600, 400)  # read at full resolution: small enough
    assert window.search_crop(last, (300, 0, 300, 200), picture.size)
    assert window.controller.last_request.region == (1100, 1200, 300, 200)

    window.search_files([str(TUMOUR_PATCH)])
    last = _outcome_of(qtbot, window, lambda r: r.kind == "files").request
    picture = window._query_picture(last)
    assert window.search_crop(last, (0, 0, picture.width // 2, picture.height // 2),
                              picture.size)
    request = window.controller.last_request
    assert request.kind == "pixels" and request.images[0].size == (picture.width // 2,
                                                                   picture.height // 2)
    assert request.describe().startswith("crop ") and TUMOUR_PATCH.name in request.describe()
    assert not window.search_crop(last, None, picture.size)  # nothing dragged: no search


def test_the_crop_dialog_gives_the_box_in_image_pixels(qtbot):
    from PIL import Image

    from hashview.gui.crop_dialog import CropDialog

    dialog = CropDialog(Image.new("RGB", (960, 480), "white"))  # shown at half size
    qtbot.addWidget(dialog)
    assert dialog.crop_box() is None  # nothing dragged yet
    dialog.set_box((100, 40, 400, 200))
    assert dialog.crop_box() == (100, 40, 400, 200)
    dialog.set_box((0, 0, 4, 4))
    assert dialog.crop_box() is None  # a click, not a crop
