"""The main window end to end, offscreen: open, drop, find similar, compare, export, jobs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from conftest import KATHER, SLIDE, TUMOUR_PATCH, StallMeter  # noqa: E402

SEARCH_MS = 60_000
JOB_MS = 120_000


def drop_files(widget, paths) -> QDropEvent:
    """A drag entering ``widget`` then a drop of file URLs, as from a file manager."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier)
    try:
        enter = QDragEnterEvent(pos, *args)
    except TypeError:  # some PySide6 builds only take the (deprecated) QPoint
        enter = QDragEnterEvent(pos.toPoint(), *args)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos, *args)
    QApplication.sendEvent(widget, drop)
    drop.mime = mime  # the event only points to it: keep it alive as long as the event
    return drop


def tile_side(window) -> int:
    """Level-0 side of one library tile on the test slide (the library's tiling)."""
    from hashview.tiling import TilingParams, plan_geometry

    tile_size, mpp = window.tiling()
    return plan_geometry(window.source, TilingParams(tile_size=tile_size,
                                                     target_mpp=mpp)).tile_level0


def wait_for_results(qtbot, window, tiles=None):
    qtbot.waitUntil(lambda: window.results.outcome is not None
                    and (tiles is None or window.results.outcome.result.query_tiles == tiles),
                    timeout=SEARCH_MS)
    return window.results.outcome


def test_open_slide_shows_it_in_the_viewer(qtbot, window):
    assert window.open_slide(SLIDE)
    source = window.viewer.current_source()
    assert source is not None and Path(source.path) == SLIDE
    assert source.dimensions == (2220, 2967)
    assert "CMU-1-Small-Region.svs" in window.windowTitle()
    assert window.viewer.query_tile_side() == tile_side(window)  # the library's tile
    assert window.library_panel.visible_count() == 13
    window.library_panel.filter.setText("tumor")
    assert window.library_panel.visible_count() == 3
    assert "13 sources" in window.library_panel.header.text()
    assert "3 of 13 shown" in window.library_panel.header.text()
    window.library_panel.filter.setText("")
    assert "shown" not in window.library_panel.header.text()
    window.library_panel.filter.setText("tumor")
    stats = window.library_info
    qtbot.waitUntil(lambda: window.status_tiles.text()
                    == f"{stats['n_tiles']:,} tiles · exact search", timeout=30_000)
    slide_tiles = stats["n_tiles"] - 12  # all but the 12 patches
    assert len(window.viewer._outlines) == slide_tiles  # for View ▸ Show tile outlines

    # double-click (activate) a patch in the library panel: the viewer shows the patch
    panel = window.library_panel
    panel.view.activated.emit(panel.proxy.index(0, 0))
    assert window.viewer.current_source().path.parent.name == "01_TUMOR"
    # dropping a slide opens it
    drop_files(window, [SLIDE])
    assert Path(window.viewer.current_source().path) == SLIDE
    qtbot.waitUntil(lambda: panel.model.thumbnails_loaded() == 13, timeout=SEARCH_MS)


def test_dropping_a_patch_shows_k_hits(qtbot, window):
    event = drop_files(window, [TUMOUR_PATCH])
    assert event.isAccepted()
    outcome = wait_for_results(qtbot, window)
    hits = outcome.result.hits
    assert len(hits) == 10 == len(window.results.hit_items())
    assert any(h.source_path == str(TUMOUR_PATCH) and h.distance == 0 for h in hits)  # itself
    # the headline is the core's wording of the vote over the shown hits (tested there), and
    # the status bar says the same, never a bare count
    assert window.results.vote_label.text() == outcome.result.summary
    assert window.statusBar().currentMessage().endswith(f": {outcome.result.summary}")
    labelled = sum(1 for h in hits if h.label)
    assert outcome.result.vote.total == labelled
    qtbot.waitUntil(lambda: window.results.thumbnails_loaded() == 10, timeout=SEARCH_MS)

    # top-k and "Exclude this slide" re-run the same search
    window.results.top_k.setValue(4)
    qtbot.waitUntil(lambda: len(window.results.hits()) == 4, timeout=SEARCH_MS)
    window.results.exclude.setChecked(True)
    qtbot.waitUntil(lambda: window.results.outcome.request.exclude_source, timeout=SEARCH_MS)
    assert all(h.source_path != str(TUMOUR_PATCH) for h in window.results.hits())


def test_a_cut_inside_a_run_of_equal_distances_is_said_under_the_vote(qtbot, window):
    from hashview.search.query import CutTie

    drop_files(window, [TUMOUR_PATCH])
    outcome = wait_for_results(qtbot, window)
    outcome.result.cut_tie = CutTie(distance=outcome.result.hits[-1].distance, count=4,
                                    exact=False, labels={"02_STROMA": 3, "": 1})
    window.results.show_outcome(outcome)
    # a long vote headline wraps instead of widening the results panel over the slide
    wide = window.results.minimumSizeHint().width()
    window.results.vote_label.setText(outcome.result.summary + "; not settled: " + "x " * 200)
    assert window.results.minimumSizeHint().width() <= wide
    detail = window.results.detail_label.text()
    assert ("at least 4 more tiles past the 10 shown are as near as the last" in detail
            and "02_STROMA 3, unlabelled 1; the tie order chose which are shown" in detail)


def test_dropping_several_patches_merges_their_hits(qtbot, window):
    patches = [sorted((KATHER / name).iterdir())[0] for name in ("01_TUMOR", "07_ADIPOSE")]
    window.handle_dropped_paths([str(p) for p in patches])
    outcome = wait_for_results(qtbot, window, tiles=2)
    per_tile = outcome.result.per_tile
    assert len(per_tile) == 2 and len(outcome.result.hits) == 10
    # the vote counts the labelled hits that are shown, not every query tile's top-k
    assert outcome.result.vote.total == sum(1 for h in outcome.result.hits if h.label)
    distances = [h.distance for h in outcome.result.hits]
    assert distances == sorted(distances)
    assert distances[0] == min(hits[0].distance for hits in per_tile)


def test_right_click_find_similar_region(qtbot, window):
    window.open_slide(SLIDE)
    viewer = window.viewer
    region = viewer.find_similar_at(viewer.map_from_level0(1100, 1500))  # the menu's action
    side = tile_side(window)
    assert region == (1100 - side // 2, 1500 - side // 2, side, side)
    outcome = wait_for_results(qtbot, window, tiles=1)
    assert len(outcome.result.hits) == 10
    assert outcome.request.region == region and outcome.request.source_path == str(SLIDE)


def test_rubber_band_region_is_tiled_and_voted(qtbot, window):
    window.open_slide(SLIDE)
    side = tile_side(window)  # 224 px at 0.5 µm/px: a 448x448 region
    window.viewer.set_selection((1000, 1000, 2 * side, 2 * side))
    window.viewer.find_similar_selection()  # Enter / "Find similar (selected region)"
    outcome = wait_for_results(qtbot, window, tiles=4)
    assert len(outcome.result.per_tile) == 4
    assert len(outcome.query_images) == 4 and len(window.results.grid.findItems(
        "Query", Qt.MatchFlag.MatchStartsWith)) == 4
    # the vote covers the shown hits only: here all from the unlabelled slide itself
    labelled = [h for h in outcome.result.hits if h.label]
    assert (outcome.result.vote is None) == (not labelled)
    assert window.results.vote_label.text() == outcome.result.summary


def test_clicking_a_hit_opens_it_beside_the_query(qtbot, window):
    window.open_slide(SLIDE)
    window.search_region(1000, 1000, tile_side(window), tile_side(window))
    outcome = wait_for_results(qtbot, window)
    hit = next(h for h in outcome.result.hits if h.source_path == str(SLIDE))
    window.results.grid.itemClicked.emit(window.results.hit_items()[hit.rank])
    assert window.compare.isVisible()
    assert Path(window.compare_viewer.current_source().path) == SLIDE
    cx, cy = window.compare_viewer.center()
    assert (cx, cy) == (hit.x + hit.size / 2, hit.y + hit.size / 2)

    window.compare.sync.setChecked(True)
    window.viewer.zoom_in()
    assert window.compare_viewer.downsample() == pytest.approx(window.viewer.downsample())
    window.compare_viewer.zoom_in()
    assert window.viewer.downsample() == pytest.approx(window.compare_viewer.downsample())
    window.compare.sync.setChecked(False)
    before = window.compare_viewer.downsample()
    window.viewer.zoom_out()
    assert window.compare_viewer.downsample() == before

    window.close_comparison()
    assert not window.compare.isVisible() and window.compare_viewer.current_source() is None


def test_export_csv_and_png_sheet(qtbot, window, tmp_path):
    window.handle_dropped_paths([str(TUMOUR_PATCH)])
    outcome = wait_for_results(qtbot, window)
    qtbot.waitUntil(lambda: window.results.thumbnails_loaded() == 10, timeout=SEARCH_MS)
    window.results.export_csv(tmp_path / "hits.csv")
    rows = list(csv.DictReader(open(tmp_path / "hits.csv", encoding="utf-8")))
    assert len(rows) == 10 and rows[0]["rank"] == "1" and rows[0]["distance"] == "0"
    assert rows[0]["source_path"] == outcome.result.hits[0].source_path
    assert set(rows[0]) == {"rank", "distance", "label", "source_path", "x", "y", "size"}
    assert window.results.export_png(tmp_path / "sheet.png")
    sheet = QImage(str(tmp_path / "sheet.png"))
    assert sheet.width() > 500 and sheet.height() > 300


def test_bad_dropped_file_warns_and_the_window_still_works(qtbot, window, tmp_path,
                                                           message_boxes):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    window.handle_dropped_paths([str(bad)])
    qtbot.waitUntil(lambda: bool(message_boxes.of("warning")), timeout=SEARCH_MS)
    kind, title, text = message_boxes.of("warning")[0]
    assert "notes.png" in text and "\n" not in text and "Traceback" not in text
    assert "notes.png" in window.statusBar().currentMessage()
    window.handle_dropped_paths([str(TUMOUR_PATCH)])  # still searches
    assert len(wait_for_results(qtbot, window).result.hits) == 10

    window.open_slide(tmp_path / "missing.svs")  # a bad slide: one line too
    assert "missing.svs: no such file" in message_boxes.of("warning")[-1][2]


def test_explain_overlays_follow_the_grid(qtbot, window):
    """Toggling Explain eventually changes a hit's displayed pixmap (and the query's)."""
    results = window.results
    assert results.explain.isEnabled() and results.explain_opacity.isEnabled()
    window.handle_dropped_paths([str(TUMOUR_PATCH)])
    wait_for_results(qtbot, window)
    qtbot.waitUntil(lambda: results.thumbnails_loaded() == 10, timeout=SEARCH_MS)
    item = results.hit_items()[0]
    before = item.icon().pixmap(96, 96).toImage()
    results.explain.setChecked(True)
    qtbot.waitUntil(lambda: results.explained_count() == 10, timeout=SEARCH_MS)
    qtbot.waitUntil(lambda: item.icon().pixmap(96, 96).toImage() != before, timeout=SEARCH_MS)
    query_item = results.grid.item(0)
    assert query_item.data(Qt.ItemDataRole.UserRole) is None
    blended = item.icon().pixmap(96, 96).toImage()
    results.explain_opacity.setValue(100)   # cached: re-blended at once, no recomputation
    assert item.icon().pixmap(96, 96).toImage() != blended
    results.explain.setChecked(False)
    assert item.icon().pixmap(96, 96).toImage() == before


@pytest.mark.slow
def test_index_job_with_progress_and_cancel_keeps_the_ui_responsive(qtbot, window, tmp_path,
                                                                     message_boxes):
    assert window.create_library(tmp_path / "new.h5")
    assert window.library_panel.visible_count() == 0
    progress = []
    window.jobs.jobEvent.connect(lambda _id, e: progress.append(e)
                                 if e.get("event") == "progress" else None)
    meter = StallMeter()
    ticks_at_finish = []
    window.jobs.jobFinished.connect(lambda *_: ticks_at_finish.append(meter.ticks))
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        window.handle_dropped_paths([str(KATHER)])  # a folder: "Add to library?" -> Yes
        assert message_boxes.of("question")
        ticks_at_submit = meter.ticks
        # searching the open library while the job runs stays possible (and off the UI thread)
    meter.stop()
    spec, result, status = finished.args
    assert status == "done", window.jobs.log_text(spec.id)
    assert spec.kind == "index" and len(result["added"]) == 12
    assert any(e["done"] == e["total"] == 12 for e in progress)
    assert window.library_panel.visible_count() == 12  # refreshed when the job finished
    qtbot.waitUntil(lambda: window.status_tiles.text() == "12 tiles · exact search",
                    timeout=30_000)
    print(f"max UI stall while the job ran: {meter.max_gap * 1000:.0f} ms (not asserted)")
    # The event loop turned while the worker indexed (a job run on the UI thread gives 0).
    assert ticks_at_finish[0] - ticks_at_submit >= 3

    window.open_slide(SLIDE)
    with qtbot.waitSignal(window.jobs.jobEvent, timeout=JOB_MS,
                          check_params_cb=lambda _id, e: e.get("stage") == "encoding"):
        spec = window.add_current_slide_to_library()
    with qtbot.waitSignal(window.jobs.jobFinished, timeout=JOB_MS) as finished:
        window.jobs.cancel(spec.id)
    assert finished.args[2] == "cancelled"
    assert window.library_panel.visible_count() == 12


def test_settings_and_recent_files_persist(qtbot, window, library_path):
    from hashview.gui.settings import AppSettings

    window.results.top_k.setValue(7)
    window.close()
    settings = AppSettings()
    assert settings.last_library == str(library_path.resolve())
    assert str(library_path.resolve()) in settings.recent()
    assert settings.window_state()[0] is not None


def test_a_new_start_reopens_the_last_library_and_slide(qtbot, window, library_path,
                                                        message_boxes):
    from hashview.gui.app import open_initial
    from hashview.gui.main_window import MainWindow

    assert window.open_slide(SLIDE)
    window.close()
    again = MainWindow()
    qtbot.addWidget(again)
    open_initial(again, [])  # no paths: where the user left off
    assert again.library_path == str(library_path.resolve())
    assert Path(again.viewer.current_source().path) == SLIDE.resolve()
    again.close()


def test_a_last_slide_that_no_longer_opens_is_one_status_line_not_a_box(
        qtbot, window, library_path, tmp_path, message_boxes):
    from hashview.gui.app import open_initial
    from hashview.gui.main_window import MainWindow

    damaged = tmp_path / "moved.svs"
    damaged.write_bytes(b"not a slide")
    window.settings.last_slide = str(damaged)
    window.close()
    again = MainWindow()
    qtbot.addWidget(again)
    open_initial(again, [])
    assert again.library_path == str(library_path.resolve())  # the library still opens
    assert again.viewer.current_source() is None
    assert "Last slide not reopened" in again.statusBar().currentMessage()
    assert "moved.svs" in again.statusBar().currentMessage()
    assert not message_boxes.calls
    again.close()


def test_first_run_builds_the_demo_library_in_the_background(qtbot):
    from hashview.demo import DEMO_SLIDE, default_demo_library
    from hashview.gui.app import open_initial
    from hashview.gui.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    meter = StallMeter()
    open_initial(win, [])  # no paths, no last library: the demo
    assert win.library_path != str(default_demo_library())  # still building, on a worker thread
    ticks_at_start = meter.ticks
    assert Path(win.viewer.current_source().path) == DEMO_SLIDE  # shown at once
    assert "demo library" in win.statusBar().currentMessage()
    qtbot.waitUntil(lambda: win.library_path == str(default_demo_library()), timeout=JOB_MS)
    meter.stop()
    assert meter.ticks - ticks_at_start >= 3  # the event loop turned while the demo was built
    assert win.library_info["n_sources"] > 1
    win.demo_builder.wait()
    win.close()


def test_pasting_an_image_searches_with_it(qtbot, window):
    from PySide6.QtGui import QGuiApplication

    QGuiApplication.clipboard().setImage(QImage(str(TUMOUR_PATCH)))
    window.actions_.paste.trigger()  # Ctrl+V
    outcome = wait_for_results(qtbot, window)
    assert outcome.request.kind == "pixels" and len(outcome.result.hits) == 10


def test_dialogs_settings_training_and_about(qtbot, window, tmp_path, monkeypatch):
    from hashview.gui.dialogs import SCRATCH, SettingsDialog, TrainDialog, about_html
    from hashview.models import build_model, list_models, save_model
    from hashview.models.cards import ModelCard
    from hashview.training.defaults import DEFAULT_START

    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    dialog.top_k.setValue(25)
    dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
    dialog.apply()
    window.apply_settings()
    assert window.settings.top_k == 25 == window.results.k()
    assert window.settings.device == "cpu"

    train = TrainDialog(window, folder=str(KATHER))
    qtbot.addWidget(train)
    # first and default: fine-tune the recommended (default) model with its recipe
    from hashview.models import DEFAULT_MODEL

    assert train.plan.currentData() == "recommended" and DEFAULT_MODEL in train.plan.currentText()
    assert train.advanced.isHidden()
    args = train.job_args()
    default_card = next(c for c in list_models() if c.name == DEFAULT_MODEL)
    assert (args["arch"], args["bits"]) == (default_card.arch, default_card.bits)
    assert DEFAULT_START[args["arch"]] == DEFAULT_MODEL and "init_from" not in args
    assert "from_scratch" not in args and "epochs" not in args
    # advanced: the architectures, code length, epochs and start
    train.plan.setCurrentIndex(train.plan.findData("advanced"))
    assert not train.advanced.isHidden()
    train.arch.setCurrentIndex(train.arch.findData("hatdh"))
    train.bits.setValue(32)
    args = train.job_args()
    assert args["arch"] == "hatdh" and args["bits"] == 32 and args["name"] == "hatdh-32-kather"
    train.folder.setText(str(KATHER.parent / "idc"))  # DCH 64 bits on it: a bundled name
    train.arch.setCurrentIndex(train.arch.findData("dch"))
    train.bits.setValue(64)
    assert train.job_args()["name"] == "dch-64-idc-own"
    assert train.name.placeholderText() == "dch-64-idc-own (default)"
    train.folder.setText(str(KATHER))
    train.arch.setCurrentIndex(train.arch.findData("hatdh"))
    train.bits.setValue(32)
    assert args["data_folder"] == str(KATHER) and "epochs" not in args  # the recipe's
    # hatdh starts from its default model unless random weights are picked
    assert "init_from" not in args and "from_scratch" not in args and "method" not in args
    assert train.start_from.currentData() == DEFAULT_START["hatdh"]
    train.whole_network.setChecked(True)  # every layer, not only the refitted hash layer
    assert train.job_args()["method"] == "network"
    train.start_from.setCurrentIndex(train.start_from.findData(SCRATCH))
    assert train.job_args()["from_scratch"] is True and "method" not in train.job_args()
    assert not train.whole_network.isEnabled()
    train.epochs.setValue(7)
    assert train.job_args()["epochs"] == 7
    train.folder.setText(str(tmp_path / "my patches"))  # model names are plain names
    assert train.job_args()["name"] == "hatdh-32-my_patches"
    train.name.setText(".hidden/../name")
    assert train.job_args()["name"] == "hidden_.._name"
    train.name.setText("")
    train.folder.setText(str(KATHER))
    # the start choices follow the arch (any code length): the default start comes first
    train.arch.setCurrentIndex(train.arch.findData("mth"))
    train.bits.setValue(32)
    starts = [train.start_from.itemData(i) for i in range(train.start_from.count())]
    assert starts[:2] == [DEFAULT_START["mth"], SCRATCH]
    assert {"mth-64", "mth-64-idc"} <= set(starts)
    train.start_from.setCurrentIndex(starts.index("mth-64"))
    assert train.job_args()["init_from"] == "mth-64"

    # a finished training job: its model is installed and listed
    net = build_model("dch", 16, input_size=32)
    out = tmp_path / "run" / "dch-16-test"
    save_model(net, ModelCard(name="x", arch="dch", bits=16, input_size=32, trained=True), out)
    from hashview.jobs import JobSpec

    spec = JobSpec("train", {"data_folder": str(KATHER), "arch": "dch", "bits": 16,
                             "out_dir": str(out.parent)})
    window._on_job_finished(spec, {"model_path": str(out) + ".safetensors"}, "done")
    assert "dch-16-test" in {card.name for card in list_models()}
    assert "dch-16-test" in window.statusBar().currentMessage()
    # a collapsed model is a loud warning, never "ready"
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: warned.append(a[2]))
    window._on_job_finished(spec, {"model_path": str(out) + ".safetensors",
                                   "warning": "WARNING: model dch-16-test COLLAPSED: 3 codes"},
                            "done")
    assert len(warned) == 1 and "COLLAPSED" in warned[0] and "ready" not in warned[0]
    assert "marked in Settings" in warned[0]
    # usable, but a bundled model did better on the held-out patches: a warning too
    titles = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: (warned.append(a[2]),
                                                            titles.append(a[1])))
    window._on_job_finished(spec, {"model_path": str(out) + ".safetensors", "quality": "ok",
                                   "warning": "NOTE: model dch-16-test: bundled model x as "
                                              "it is scored higher"}, "done")
    assert "bundled model x" in warned[-1] and "marked in Settings" not in warned[-1]
    assert titles == ["Training finished: a bundled model did better"]

    card = next(c for c in list_models() if c.name == window.library_info["model"]["name"])
    html = about_html(card)
    assert card.name in html and ("untrained" in html) != card.trained and "CC-BY 4.0" in html



def _in_thread(target):
    """Run a blocking client beside the Qt event loop (the server side needs the loop). The
    client is a plain socket: PySide6's blocking waits hold the GIL, the loop's slots need it."""
    import threading

    done: list = []
    threading.Thread(target=lambda: done.append(target()), daemon=True).start()
    return done


def send_raw(name: str, data: bytes) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(name)
        client.sendall(data)
        return client.recv(100)


def test_a_second_start_opens_its_file_in_the_running_window(qtbot, window, library_path,
                                                             tmp_path, monkeypatch):
    """``hashview slide.svs`` (a desktop double-click) while the app runs: the running window
    opens the slide and the new process exits without a window of its own."""
    import subprocess
    import sys

    from hashview.gui.app import serve_later_starts

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # the socket lives in this test's folder
    server = serve_later_starts(window)
    assert server.server.isListening() and server.name.startswith(str(tmp_path))
    assert window.source is None
    # A relative path, as a shell gives it: the running app has another working folder.
    second = subprocess.Popen([sys.executable, "-m", "hashview", SLIDE.name], cwd=SLIDE.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        qtbot.waitUntil(lambda: second.poll() is not None, timeout=60_000)
        assert second.returncode == 0, second.stderr.read()
        qtbot.waitUntil(lambda: window.source_path == str(SLIDE.resolve()), timeout=10_000)
        assert window.library_path == str(library_path.resolve())  # the library stays open
    finally:
        if second.poll() is None:
            second.kill()
        second.communicate()


def test_instance_server_takes_over_a_stale_socket_and_checks_messages(qtbot, tmp_path):
    import socket

    from hashview.gui.single_instance import InstanceServer, encode_message, send_to_running

    name = str(tmp_path / "hashview.sock")
    stale = socket.socket(socket.AF_UNIX)  # the socket file of a HashView that crashed
    stale.bind(name)
    stale.close()
    assert not send_to_running(["slide.svs"], name)  # nobody answers: open a window
    server = InstanceServer(name)
    assert server.listen()  # and take the name over

    message = encode_message(["slide.svs", "/data/x.h5"])
    with qtbot.waitSignal(server.paths_received, timeout=20_000) as received:
        reply = _in_thread(lambda: send_raw(name, message))
    assert received.args[0] == [str(Path("slide.svs").absolute()), "/data/x.h5"]
    qtbot.waitUntil(lambda: reply == [b"ok\n"], timeout=10_000)

    emitted = []
    server.paths_received.connect(emitted.append)
    for bad in (b"not json\n", b'{"paths": ["relative/path"]}\n', b'{"paths": "x"}\n'):
        reply = _in_thread(lambda: send_raw(name, bad))
        qtbot.waitUntil(lambda: bool(reply), timeout=10_000)
        assert reply == [b"error\n"]
    qtbot.wait(50)
    assert emitted == []
    server.close()


def test_a_region_explains_each_hit_against_the_query_tile_that_found_it(qtbot, window):
    window.open_slide(SLIDE)
    side = tile_side(window)
    window.viewer.set_selection((1000, 1000, 2 * side, 2 * side))
    window.viewer.find_similar_selection()
    outcome = wait_for_results(qtbot, window, tiles=4)
    results = window.results
    found_by = outcome.result.found_by
    assert len(found_by) == len(outcome.result.hits) and len(set(found_by)) > 1
    for hit, tile in zip(outcome.result.hits, found_by):  # the finder's list holds the hit
        assert any(h.tile_index == hit.tile_index and h.distance == hit.distance
                   for h in outcome.result.per_tile[tile])
    assert not any(part.isVisible() for part in results._legend_parts)
    results.explain.setChecked(True)
    assert all(part.isVisible() for part in results._legend_parts)  # the colour legend
    qtbot.waitUntil(lambda: results.explained_count() == len(found_by), timeout=SEARCH_MS)
    digests = results._query_digests
    assert len(set(digests)) == 4
    for hit, tile in zip(outcome.result.hits, found_by):
        assert (digests[tile], f"hit:{hit.tile_index}") in results._maps
    # hits at equal distance carry the same rank group in their captions
    captions = [item.text().split()[0] for item in results.hit_items()]
    from hashview.search.result_summary import rank_marks
    assert captions == [f"#{mark}" for mark in rank_marks(outcome.result.hits)]


def test_dropping_a_slide_sized_image_opens_it_as_a_slide(qtbot, window):
    from hashview.gui.window_search import classify_paths

    striped = SLIDE.parent / "kidney-48-5-striped.tif"  # 1493x901 px: a slide by the one rule
    dropped = classify_paths([striped, TUMOUR_PATCH])
    assert (dropped.slides, dropped.images) == ([str(striped)], [str(TUMOUR_PATCH)])
    window.handle_dropped_paths([str(striped)])
    assert Path(window.viewer.current_source().path) == striped
    assert window.results.outcome is None  # nothing was searched


def test_adding_the_current_slide_asks_first(qtbot, window, monkeypatch, message_boxes):
    window.open_slide(SLIDE)
    monkeypatch.setattr(QMessageBox, "question",
                        staticmethod(lambda *a, **k: QMessageBox.StandardButton.No))
    assert window.add_current_slide_to_library() is None  # declined: nothing runs
    assert window.jobs.running_count() == 0


def test_the_title_names_slide_and_library_once(qtbot, window, library_path):
    window.open_slide(SLIDE)
    # Qt appends the application's display name (" — HashView") itself
    assert window.windowTitle() == f"{SLIDE.name} — {Path(library_path).name}"


def test_switching_library_clears_the_previous_results(qtbot, window, tmp_path):
    window.handle_dropped_paths([str(TUMOUR_PATCH)])
    wait_for_results(qtbot, window)
    assert window.results.hits()
    assert window.create_library(tmp_path / "other.h5")
    assert window.results.outcome is None and window.results.hits() == []


def test_recent_entries_with_the_same_name_show_their_folders():
    from hashview.gui.menus import recent_labels

    labels = recent_labels(["/a/CMU-1.svs", "/b/CMU-1.svs", "/c/lib.h5"])
    assert labels == ["CMU-1.svs  — /a", "CMU-1.svs  — /b", "lib.h5  (library)"]


def test_new_library_asks_for_model_and_tiling(qtbot, window, tmp_path, monkeypatch):
    from hashview.gui import dialogs
    from hashview.library import Library
    from hashview.models import list_models

    other = next(c for c in list_models() if c.name != window.settings.model)
    path = tmp_path / "asked"

    def choose(dialog):
        assert dialog.model.count() == len(list_models())
        dialog.path.setText(str(path))
        dialog.model.setCurrentIndex(dialog.model.findData(other.name))
        dialog.tile_size.setValue(96)
        dialog.target_mpp.setValue(0)  # "The model's"
        return True

    monkeypatch.setattr(dialogs.NewLibraryDialog, "exec", choose)
    assert window.ask_new_library() == f"{path}.h5"
    with Library.open(f"{path}.h5") as library:
        assert (library.model_name, library.tile_size) == (other.name, 96)
        assert library.target_mpp == (other.target_mpp or 0.5)
    assert window.library_path == str(Path(f"{path}.h5").resolve())


def test_find_similar_cases_ranks_slides_by_their_best_tiles(qtbot, window):
    window.open_slide(SLIDE)
    window.actions_.find_cases.trigger()  # Search ▸ Find similar cases (Ctrl+Shift+F)
    outcome = wait_for_results(qtbot, window)
    assert outcome.request.kind == "case" and "whole slide" in window.results.title.text()
    hits = outcome.result.hits
    assert hits[0].source_path == str(SLIDE) and hits[0].distance == 0  # itself, first
    assert len({h.source_id for h in hits}) == len(hits)  # one hit per ranked slide
    assert outcome.query_images == [] and window.results.hit_items()[0].data(
        Qt.ItemDataRole.UserRole) == hits[0]  # the ranked slides lead the grid
    assert any(f"{outcome.result.query_tiles}-tile mosaic" in w for w in outcome.warnings)
    window.results.exclude.setChecked(True)  # re-runs without the open slide
    qtbot.waitUntil(lambda: window.results.outcome.request.exclude_source, timeout=SEARCH_MS)
    assert all(h.source_path != str(SLIDE) for h in window.results.hits())
