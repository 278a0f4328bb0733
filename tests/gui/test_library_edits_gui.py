"""Editing the library from the app: case data from a CSV, metadata in the library panel and its
filter, removing and relabelling sources and tiles, the Where filter of the results, locating a
moved slide. Each test edits its own copy of the session library."""

from __future__ import annotations

import csv
import os
import shutil

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QFileDialog, QInputDialog  # noqa: E402

from conftest import KATHER, TUMOUR_PATCH  # noqa: E402

EDIT_MS = 60_000
SEARCH_MS = 60_000
# case data of the Kather patches: stain HE for all, site by class, patient by class
SITES = {"01_TUMOR": "colon", "02_STROMA": "colon", "04_LYMPHO": "node", "07_ADIPOSE": "fat"}


@pytest.fixture
def library_path(tmp_path, slide_library):
    """A copy of the session library (the edits rewrite it): what ``window`` opens here."""
    path = tmp_path / "library.h5"
    shutil.copyfile(slide_library[0], path)
    return path


def _case_csv(tmp_path):
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file", "patient", "stain", "site"])
        for folder, site in SITES.items():
            for patch in sorted((KATHER / folder).iterdir()):
                out.writerow([patch.name, f"P-{folder[:2]}", "HE", site])
        out.writerow(["not-in-the-library.svs", "P-9", "HE", "colon"])
    return path


def _run_edit(qtbot, window, start):
    """Start an edit with ``start()`` and wait for its end; the result or the failure text."""
    outcome = []
    window.edits.finished.connect(outcome.append)
    window.edits.failed.connect(outcome.append)
    assert start() is not False
    qtbot.waitUntil(lambda: bool(outcome), timeout=EDIT_MS)
    return outcome[0]


def _choose(menu, text):
    """Trigger the menu's action ``text`` (a click on it); the menu's texts."""
    texts = [a.text() for a in menu.actions()]
    assert text in texts, texts
    next(a for a in menu.actions() if a.text() == text).trigger()
    return texts


def _import_cases(qtbot, window, tmp_path, monkeypatch):
    csv_path = _case_csv(tmp_path)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(csv_path), "")))
    return _run_edit(qtbot, window, window.actions_.import_cases.trigger)


def _library(window):
    from hashview.library import Library

    return Library.open(window.library_path, mode="r")


def test_case_data_import_shows_metadata_and_the_filter_takes_key_value(
        qtbot, window, tmp_path, monkeypatch, message_boxes):
    panel = window.library_panel
    edit, match = _import_cases(qtbot, window, tmp_path, monkeypatch)
    assert len(match.matched) == 12 and match.unmatched == ["not-in-the-library.svs"]
    info = message_boxes.of("information")
    assert info and "12 rows matched, 1 unmatched (not-in-the-library.svs)" in info[-1][2]
    assert "metadata keys: stain, site" in info[-1][2]
    with _library(window) as lib:
        assert lib.metadata_keys() == ["stain", "site"]

    rows = {rec.name: panel.model.index(i) for i, rec in enumerate(panel.records())}
    stroma = next(n for n in rows if "CRC-Prim-HE-04.tif_Row_1501" in n)
    tooltip = rows[stroma].data(Qt.ItemDataRole.ToolTipRole)
    assert "patient: P-02" in tooltip and "stain: HE" in tooltip and "site: colon" in tooltip
    assert rows[stroma].data(Qt.ItemDataRole.DisplayRole).endswith("· P-02")

    panel.filter.setText("stain=HE site=colon")  # conditions: looked up after a pause
    qtbot.waitUntil(lambda: panel.visible_count() == 6)
    assert not panel.filter_note.isVisibleTo(panel)
    panel.filter.setText("site=node")
    qtbot.waitUntil(lambda: panel.visible_count() == 3)
    panel.filter.setText("fat")  # a free word matches metadata values too, at once
    assert panel.visible_count() == 3
    panel.filter.setText("site=colon p-01")
    qtbot.waitUntil(lambda: not panel._condition_timer.isActive())
    assert panel.visible_count() == 3
    panel.filter.setText("sight=colon")
    qtbot.waitUntil(lambda: panel.visible_count() == 0)
    assert "no metadata key 'sight'" in panel.filter_note.text()
    panel.filter.setText("")
    assert panel.visible_count() == 13 and not panel.filter_note.isVisibleTo(panel)


def test_typing_a_condition_reads_the_library_once_after_the_pause(
        qtbot, window, tmp_path, monkeypatch, message_boxes):
    import hashview.gui.library_panel as library_panel

    panel = window.library_panel
    _import_cases(qtbot, window, tmp_path, monkeypatch)
    reads = []
    real = library_panel.sources_matching
    monkeypatch.setattr(library_panel, "sources_matching",
                        lambda *a: reads.append(a[1]) or real(*a))
    for end in range(1, len("site=node") + 1):  # one keystroke at a time, no pause
        panel.filter.setText("site=node"[:end])
    assert reads == []
    qtbot.waitUntil(lambda: panel.visible_count() == 3)
    assert len(reads) == 1
    panel.filter.setText("site=node ")  # the same condition: no new read, filtered at once
    assert not panel._condition_timer.isActive()
    assert len(reads) == 1 and panel.visible_count() == 3


def test_remove_from_the_context_menu_keeps_the_other_sources(
        qtbot, window, monkeypatch, message_boxes):
    panel = window.library_panel
    with _library(window) as lib:
        before = {s.path: lib.source_tiles(s.id).tolist() for s in lib.sources()}
        n_tiles = lib.n_tiles
    doomed = [r for r in panel.records() if r.kind == "patch"][:2]
    panel.view.clearSelection()
    for rec in doomed:
        row = panel.records().index(rec)
        panel.view.selectionModel().select(panel.proxy.index(row, 0),
                                           panel.view.selectionModel().SelectionFlag.Select)
    point = panel.view.visualRect(panel.proxy.index(panel.records().index(doomed[0]), 0))
    shown = []
    result = _run_edit(qtbot, window, lambda: shown.extend(_choose(
        panel.context_menu_at(point.center()), "Remove from library…")))
    assert "Relabel…" in shown
    question = message_boxes.of("question")[-1][2]
    assert "2 sources" in question and doomed[0].name in question and doomed[1].name in question
    assert f"{sum(r.tile_count for r in doomed)} tiles" in question
    assert result.summary.startswith("removed 2 sources")

    kept = {p: t for p, t in before.items() if p not in {r.path for r in doomed}}
    with _library(window) as lib:
        assert {s.path: lib.source_tiles(s.id).tolist() for s in lib.sources()} == kept
        assert lib.n_tiles == n_tiles - sum(r.tile_count for r in doomed)
    assert {r.path for r in panel.records()} == set(kept)
    assert str(len(kept)) + " sources" in panel.header.text()


def test_the_delete_key_asks_and_a_no_removes_nothing(qtbot, window, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    panel = window.library_panel
    asked = []
    monkeypatch.setattr(QMessageBox, "question", staticmethod(
        lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No))
    panel.view.setFocus()
    panel.view.setCurrentIndex(panel.proxy.index(0, 0))
    qtbot.keyClick(panel.view, Qt.Key.Key_Delete)
    assert asked and panel.records()[0].name in asked[0]
    assert not window.edits.busy and len(panel.records()) == 13


def test_an_edit_of_a_library_in_use_fails_in_one_line_and_loses_nothing(
        qtbot, window, message_boxes):
    from hashview.library import Library

    panel = window.library_panel
    panel.view.setCurrentIndex(panel.proxy.index(0, 0))
    window.controller.wait()  # the search thread's first load of the library is done
    with Library.open(window.library_path, "a"):  # as an indexing run would hold it
        message = _run_edit(qtbot, window, panel.remove_action.trigger)
    assert message.startswith(f"{window.library_path}: ") and "\n" not in message
    assert message_boxes.of("warning")[-1][2] == message
    assert len(panel.records()) == 13 and not window.edits.progress.isVisible()


def test_relabel_sources_from_the_panel_menu(qtbot, window, monkeypatch):
    panel = window.library_panel
    offered = []
    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(
        lambda parent, title, prompt, items, *a: offered.append(items) or ("09_NECROSIS", True)))
    target = next(r for r in panel.records() if r.kind == "patch")
    row = panel.records().index(target)
    panel.view.setCurrentIndex(panel.proxy.index(row, 0))
    point = panel.view.visualRect(panel.proxy.index(row, 0)).center()
    result = _run_edit(qtbot, window,
                       lambda: _choose(panel.context_menu_at(point), "Relabel…"))
    assert "01_TUMOR" in offered[0] and "(unlabelled)" in offered[0]
    assert result.summary.startswith("relabelled 1 sources (1 tiles) as '09_NECROSIS'")
    with _library(window) as lib:
        assert lib.find_source(path=target.path).label == "09_NECROSIS"
    assert next(r for r in panel.records() if r.path == target.path).label == "09_NECROSIS"
    assert "09_NECROSIS" in [window.results.refine.label.itemText(i)
                             for i in range(window.results.refine.label.count())]


def test_slide_labels_from_qupath_annotations_via_the_panel_menu(
        qtbot, window, monkeypatch, message_boxes):
    from conftest import DATA

    panel = window.library_panel
    annotations = DATA / "annotations" / "CMU-1-Small-Region.geojson"
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(
        lambda parent, title, *a: asked.append(title) or (str(annotations), "")))
    slide = next(r for r in panel.records() if r.kind == "slide")
    row = panel.records().index(slide)
    panel.view.setCurrentIndex(panel.proxy.index(row, 0))
    point = panel.view.visualRect(panel.proxy.index(row, 0)).center()
    result = _run_edit(qtbot, window, lambda: _choose(
        panel.context_menu_at(point), "Labels from QuPath annotations…"))
    assert slide.name in asked[0]
    assert result.summary.startswith("relabelled the tiles of 1 slides from their annotations")
    assert message_boxes.of("information")[-1][2].endswith(result.summary)
    with _library(window) as lib:
        names = lib.label_names()
        stored = lib.source(slide.id)
        rows = slice(stored.tile_start, stored.tile_start + stored.tile_count)
        labels = {names[i] for i in lib.tile_table()["label_id"][rows] if i >= 0}
    assert labels == {"Dermis", "Epidermis"}
    assert "Dermis" in [window.results.refine.label.itemText(i)
                        for i in range(window.results.refine.label.count())]
    patch = next(r for r in panel.records() if r.kind == "patch")  # patches: no such entry
    row = panel.records().index(patch)
    panel.view.setCurrentIndex(panel.proxy.index(row, 0))
    point = panel.view.visualRect(panel.proxy.index(row, 0)).center()
    assert "Labels from QuPath annotations…" not in [
        a.text() for a in panel.context_menu_at(point).actions()]


def _search(qtbot, window, check=lambda r: True):
    window.search_files([str(TUMOUR_PATCH)])
    qtbot.waitUntil(lambda: window.results.outcome is not None
                    and check(window.results.outcome.request), timeout=SEARCH_MS)
    return window.results.outcome


def test_relabel_a_tile_from_the_results_menu(qtbot, window, monkeypatch):
    outcome = _search(qtbot, window)
    grid = window.results.grid
    item = window.results.hit_items()[0]
    hit = item.data(Qt.ItemDataRole.UserRole)
    grid.clearSelection()
    item.setSelected(True)
    monkeypatch.setattr(QInputDialog, "getItem",
                        staticmethod(lambda *a: ("checked", True)))
    result = _run_edit(qtbot, window, lambda: _choose(
        window.results.marks.context_menu_at(grid.visualItemRect(item).center()),
        "Relabel tile…"))
    assert result.summary.startswith("relabelled 1 tiles as")
    with _library(window) as lib:
        labels = lib.label_names()
        ids = lib.tile_table()["label_id"]
        assert [i for i, v in enumerate(ids) if v >= 0 and labels[v] == "checked"] == \
            [hit.tile_index]
    qtbot.waitUntil(lambda: window.results.outcome is not outcome, timeout=SEARCH_MS)
    relabelled = [h for h in window.results.hits() if h.tile_index == hit.tile_index]
    assert relabelled and relabelled[0].label == "checked"  # the search ran again


def test_where_filter_restricts_hits_and_an_unknown_key_is_one_line(
        qtbot, window, tmp_path, monkeypatch):
    _import_cases(qtbot, window, tmp_path, monkeypatch)
    _search(qtbot, window)
    refine = window.results.refine
    refine.where.setText("site=node")
    refine.where.editingFinished.emit()
    outcome = _search(qtbot, window, lambda r: "where site=node" in r.filter_text)
    with _library(window) as lib:
        node = {s.path for s in lib.sources() if lib.metadata(s.id).get("site") == "node"}
    assert outcome.result.hits and {h.source_path for h in outcome.result.hits} <= node

    last = window.controller.last_request
    refine.where.setText("sight=node")
    refine.where.editingFinished.emit()
    assert "no metadata key 'sight'" in refine.where_problem()
    assert "\n" not in refine.where_problem()
    assert window.controller.last_request is last  # no search with it
    # a new search while the line shows runs unfiltered, and its results say so
    outcome = _search(qtbot, window, lambda r: "Where not applied" in r.filter_text)
    assert {h.source_path for h in outcome.result.hits} - node


def test_a_missing_slide_is_located_with_its_folder(qtbot, window, tmp_path, monkeypatch,
                                               message_boxes):
    from hashview.library.editing import relocate

    # the patches as if their folder had been moved away: the library points at old/kather
    window.controller.wait()
    relocate(window.library_path, KATHER, tmp_path / "old" / "kather")
    window.open_library(window.library_path)
    shutil.copytree(KATHER, tmp_path / "new" / "kather")
    panel = window.library_panel
    missing = next(r for r in panel.records() if "01_TUMOR" in r.path)
    found = tmp_path / "new" / "kather" / "01_TUMOR" / missing.path.rsplit("/", 1)[1]
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(found), "")))
    row = panel.records().index(missing)
    result = _run_edit(qtbot, window,
                       lambda: panel.view.activated.emit(panel.proxy.index(row, 0)))
    assert "no longer at" in message_boxes.of("question")[-1][2]
    assert result.summary.endswith("12 found there, 0 missing")
    assert all(os.path.exists(r.path) for r in panel.records())
    assert window.source_path == str(found)


def test_relocation_moves_a_gone_folder_and_only_the_file_from_a_folder_still_there(tmp_path):
    from hashview.gui.library_edits import relocation_dirs

    (tmp_path / "kept").mkdir()
    assert relocation_dirs(str(tmp_path / "gone/kather/01/a.tif"),
                           str(tmp_path / "new/kather/01/a.tif")) == \
        (str(tmp_path / "gone"), str(tmp_path / "new"))
    assert relocation_dirs(str(tmp_path / "kept/sub/a.svs"), str(tmp_path / "x/sub/a.svs")) == \
        (str(tmp_path / "kept/sub"), str(tmp_path / "x/sub"))
    assert relocation_dirs(str(tmp_path / "kept/a.svs"), str(tmp_path / "x/a.svs")) == \
        (str(tmp_path / "kept/a.svs"), str(tmp_path / "x/a.svs"))
    assert relocation_dirs(str(tmp_path / "gone/a.svs"), str(tmp_path / "x/b.svs")) == \
        (str(tmp_path / "gone/a.svs"), str(tmp_path / "x/b.svs"))


def test_a_csv_naming_no_slide_is_one_line_and_the_library_unchanged(
        qtbot, window, tmp_path, monkeypatch, message_boxes):
    from hashview.library import Library

    bad = tmp_path / "cases.csv"
    bad.write_text("patient,stain\nP1,HE\n")
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(bad), "")))
    with Library.open(window.library_path) as lib:
        generation = lib.generation
    message = _run_edit(qtbot, window, window.actions_.import_cases.trigger)
    assert message.startswith(f"{bad}: no column naming the slides") and "\n" not in message
    assert message_boxes.of("warning")[-1][2] == message
    with Library.open(window.library_path) as lib:
        assert lib.generation == generation and lib.metadata_keys() == []


def test_slide_filter_offers_every_extension_the_core_opens():
    import re

    from hashview.gui.library_edits import SLIDE_FILTER
    from hashview.slides.folders import IMAGE_EXTENSIONS, SLIDE_EXTENSIONS

    offered = set(re.findall(r"\*(\.\w+)", SLIDE_FILTER.split(";;")[0]))
    assert offered == set(SLIDE_EXTENSIONS) | set(IMAGE_EXTENSIONS)
    assert SLIDE_FILTER.endswith(";;All files (*)")
