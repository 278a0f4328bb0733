"""Search ▸ Install model…: a library made with a model this computer lacks searches once that
model is installed, and the model's held-out warnings are shown when it is."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from conftest import KATHER, TUMOUR_PATCH  # noqa: E402

SEARCH_MS = 60_000


@pytest.fixture
def library_of_an_uninstalled_model(tmp_path):
    from hashview.indexing import index_paths
    from hashview.training import train_from_folder

    run = tmp_path / "run"
    trained = train_from_folder(KATHER, "dch", 8, run, from_scratch=True, keep_held_out=True,
                                input_size=64, epochs=1, batch_size=8, steps_per_epoch=1,
                                device="cpu")
    library = tmp_path / "given.h5"
    index_paths([KATHER], library, model=run, device="cpu")
    return library, trained


def test_a_library_searches_once_its_missing_model_is_installed(
        qtbot, tmp_path, message_boxes, library_of_an_uninstalled_model):
    from hashview.gui.main_window import MainWindow

    library, trained = library_of_an_uninstalled_model
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    assert win.open_library(library)
    win.search_files([str(TUMOUR_PATCH)])
    qtbot.waitUntil(lambda: win.results.title.text() == "Search failed", timeout=SEARCH_MS)
    detail = win.results.detail_label.text()
    assert f"its model {trained.card.name} is not installed here" in detail
    assert "Install model" in detail

    assert win.install_model_file(tmp_path / "nothing.safetensors") is None
    assert "nothing" in message_boxes.of("warning")[-1][2]
    message_boxes.calls.clear()

    card = win.install_model_file(trained.model_path)
    assert card is not None and card.name == trained.card.name
    warned = message_boxes.of("warning")
    if trained.card.warnings():  # a one-epoch model: its report's warnings, never hidden
        assert len(warned) == 1 and trained.card.warnings()[0] in warned[0][2]
    else:
        assert not warned and "Installed model" in win.statusBar().currentMessage()
    win.search_files([str(TUMOUR_PATCH)])
    qtbot.waitUntil(lambda: win.results.outcome is not None, timeout=SEARCH_MS)
    assert len(win.results.outcome.result.hits) == 10
    assert win.results.title.text() != "Search failed"
    win.close()


def test_install_model_is_in_the_search_menu(qtbot):
    from hashview.gui.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    search_menu = next(a.menu() for a in win.menuBar().actions() if a.text() == "&Search")
    assert win.actions_.install_model in search_menu.actions()
    win.close()
