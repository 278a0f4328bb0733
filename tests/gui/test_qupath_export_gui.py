"""Search ▸ Export hits to QuPath…: the shown region and hits as GeoJSON, said in the status
bar."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QFileDialog  # noqa: E402
from shapely.geometry import box  # noqa: E402

from conftest import KATHER, SLIDE  # noqa: E402

SEARCH_MS = 60_000
REGION = (1000, 1000, 300, 300)
ADIPOSE_PATCH = sorted((KATHER / "07_ADIPOSE").iterdir())[0]


def _search_region(qtbot, window):
    assert window.open_slide(SLIDE)
    window.search_region(*REGION)
    qtbot.waitUntil(lambda: window.results.outcome is not None
                    and window.results.outcome.request.kind == "region", timeout=SEARCH_MS)
    return window.results.outcome


def _choose_folder(monkeypatch, folder):
    asked = []

    def choose(parent, caption, start=""):
        asked.append(caption)
        return str(folder)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(choose))
    return asked


def test_search_menu_exports_the_region_and_slide_hits(qtbot, window, tmp_path, monkeypatch,
                                                       message_boxes):
    from hashview.annotations.qupath import read_annotations

    outcome = _search_region(qtbot, window)
    asked = _choose_folder(monkeypatch, tmp_path)
    window.actions_.export_qupath.trigger()
    assert asked and not message_boxes.calls
    written = tmp_path / "CMU-1-Small-Region.hashview.geojson"
    message = window.statusBar().currentMessage()
    assert message.startswith(f"Wrote 1 QuPath file to {tmp_path}: {written.name}")
    query, *hits = read_annotations(written)
    x, y, w, h = REGION
    assert query.geometry.equals(box(x, y, x + w, y + h))
    slide_hits = [hit for hit in outcome.result.hits if hit.source_path == str(SLIDE.resolve())]
    assert [a.properties["name"] for a in hits] == [f"HashView hit {hit.rank + 1}"
                                                   for hit in slide_hits]
    patch_hits = len(outcome.result.hits) - len(slide_hits)
    assert ("on patch images not exported" in message) == (patch_hits > 0)


def test_results_export_menu_asks_for_the_folder_too(qtbot, window, tmp_path, monkeypatch):
    _search_region(qtbot, window)
    asked = _choose_folder(monkeypatch, tmp_path)
    assert window.results.export_button.isEnabled()
    window.results.export_qupath_action.trigger()
    assert asked and (tmp_path / "CMU-1-Small-Region.hashview.geojson").is_file()


def test_a_failed_write_is_one_line_and_not_reported_as_written(qtbot, window, tmp_path,
                                                                message_boxes):
    from hashview.gui.qupath_export import export_hits

    _search_region(qtbot, window)
    (tmp_path / "CMU-1-Small-Region.hashview.geojson").mkdir()  # the file's name is taken
    export = export_hits(window, tmp_path)
    assert export is not None and not export.written
    ((kind, title, text),) = message_boxes.calls
    assert kind == "warning" and title == "Export hits to QuPath"
    assert text.startswith(f"{tmp_path / 'CMU-1-Small-Region.hashview.geojson'}: ")
    assert "\n" not in text and "Wrote" not in window.statusBar().currentMessage()

    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    assert export_hits(window, not_a_folder) is None
    assert message_boxes.calls[-1][2] == f"{not_a_folder}: not a folder; the hits go into a " \
                                         "folder, one file per slide"


def test_without_results_or_slide_hits_nothing_is_written(qtbot, window, tmp_path,
                                                          monkeypatch):
    from hashview.gui.qupath_export import export_hits

    asked = _choose_folder(monkeypatch, tmp_path)
    window.actions_.export_qupath.trigger()  # no search yet
    assert not asked and "Search first" in window.statusBar().currentMessage()

    window.results.set_options(3, False)  # the 3 nearest of a fat patch: fat patches
    window.search_files([str(ADIPOSE_PATCH)])
    qtbot.waitUntil(lambda: window.results.outcome is not None, timeout=SEARCH_MS)
    assert {h.label for h in window.results.outcome.result.hits} == {"07_ADIPOSE"}
    export = export_hits(window, tmp_path / "out")
    assert not export.written and not export.failed
    assert list((tmp_path / "out").iterdir()) == []
    assert window.statusBar().currentMessage() == (
        "Nothing written: no hit is on a slide and the query is not a region; 3 hits on patch "
        "images not exported (a patch is a whole image: nothing on it to outline)")
