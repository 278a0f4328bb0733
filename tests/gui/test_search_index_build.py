"""The app builds a large library's approximate index in the background and keeps searching."""

from __future__ import annotations

import shutil

from _mounts import small_disk  # noqa: F401  (a fixture; tests/ is on sys.path)
from conftest import SLIDE, TUMOUR_PATCH

from hashview.search import sidecar
from hashview.gui.search_controller import SearchController, SearchRequest

WAIT_MS = 120_000


def test_index_is_built_in_the_background_saved_and_used(qtbot, slide_library, tmp_path,
                                                          monkeypatch):
    library = tmp_path / "library.h5"  # a copy: the sidecar must not reach the shared library
    shutil.copy(slide_library[0], library)
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1)  # every library "is large"
    controller = SearchController()
    loaded = []
    controller.libraryLoaded.connect(loaded.append)
    outcomes = []
    controller.finished.connect(outcomes.append)
    controller.set_library(str(library))
    # a search asked for while the index builds is answered (exactly) all the same
    controller.search(SearchRequest(kind="files", paths=(str(TUMOUR_PATCH),)))
    qtbot.waitUntil(lambda: bool(outcomes), timeout=WAIT_MS)
    assert len(outcomes[0].result.hits) == 10
    qtbot.waitUntil(lambda: bool(loaded) and loaded[-1].index == "ivf", timeout=WAIT_MS)
    assert "building" in loaded[0].index or loaded[0].index == "ivf"
    assert sidecar.sidecar_path(library).exists()
    controller.search(SearchRequest(kind="files", paths=(str(TUMOUR_PATCH),)))
    qtbot.waitUntil(lambda: len(outcomes) == 2, timeout=WAIT_MS)
    assert outcomes[1].result.hits[0].distance == outcomes[0].result.hits[0].distance
    # reloading the library (tiles added) reads the saved index instead of rebuilding it
    controller.invalidate()
    controller.set_library(str(library))
    qtbot.waitUntil(lambda: controller.loaded_library is not None, timeout=WAIT_MS)
    assert controller.loaded_library.index == "ivf"
    controller.wait(WAIT_MS)


def test_an_index_that_cannot_be_saved_is_used_and_said_in_one_line(qtbot, slide_library,
                                                                      small_disk, monkeypatch,
                                                                      capfd):
    library = small_disk.path / "library.h5"
    shutil.copy(slide_library[0], library)
    small_disk.read_only()
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1)
    controller = SearchController()
    loaded = []
    controller.libraryLoaded.connect(loaded.append)
    controller.set_library(str(library))
    qtbot.waitUntil(lambda: bool(loaded) and "building" not in loaded[-1].index, timeout=WAIT_MS)
    note = (f"{sidecar.sidecar_path(library)}: not saved (read-only file system); the index "
            "is kept in memory only (built again next time)")
    assert loaded[-1].index == "ivf" and loaded[-1].notes == (note,)  # shown in the status bar
    assert capfd.readouterr().err == f"hashview: {note}\n"  # and logged, one line
    controller.wait(WAIT_MS)


def test_exclude_this_slide_leaves_out_a_copy_of_the_stored_slide(qtbot, slide_library,
                                                                   tmp_path):
    copy = tmp_path / "copy of the slide.svs"
    shutil.copy(SLIDE, copy)
    controller = SearchController()
    outcomes = []
    controller.finished.connect(outcomes.append)
    controller.set_library(str(slide_library[0]))
    controller.search(SearchRequest(kind="region", source_path=str(copy),
                                    region=(1000, 1000, 224, 224), k=5, exclude_source=True))
    qtbot.waitUntil(lambda: bool(outcomes), timeout=WAIT_MS)
    hits = outcomes[0].result.hits
    assert len(hits) == 5 and all(h.source_path != str(SLIDE.resolve()) for h in hits)
    controller.wait(WAIT_MS)


def test_the_status_bar_names_the_index_in_words():
    from hashview.gui.search_controller import describe_index

    assert describe_index("flat") == "exact search"
    assert describe_index("flat-ip") == "exact cosine search"
    assert describe_index("ivf") == "IVF index"
    assert describe_index("flat (ivf building)") == "exact search (IVF index building)"
