"""The Train dialog offers slides with QuPath annotations as training input."""

from __future__ import annotations

import shutil

from conftest import DATA, SLIDE


def test_train_dialog_offers_annotated_slides(qtbot, tmp_path, message_boxes):
    from hashview.gui.dialogs import TrainDialog
    from hashview.jobs import JobSpec

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(SLIDE, slides)
    dialog = TrainDialog(folder=str(slides))
    qtbot.addWidget(dialog)
    assert dialog.input_kind.currentData() == "patches"  # the default stays patch folders
    assert "annotations" not in dialog.job_args()
    dialog.input_kind.setCurrentIndex(dialog.input_kind.findData("slides"))
    assert "QuPath" in dialog.input_kind.currentText()
    assert "SLIDE.geojson" in dialog.folder.placeholderText()

    dialog._accept()  # no annotation file yet: refused with one line
    assert not dialog.result()
    (_, _, text), = message_boxes.of("warning")
    assert text == f"{slides}: no QuPath annotations (SLIDE.geojson) in it"

    shutil.copy(DATA / "annotations" / "CMU-1-Small-Region.geojson", slides)
    dialog._accept()
    assert dialog.result() and len(message_boxes.of("warning")) == 1
    args = dialog.job_args()
    assert args["annotations"] == {"where": None} and args["data_folder"] == str(slides)
    spec = JobSpec("train", args)  # what the app submits to the worker
    assert spec.args["annotations"] == {"where": None}
