"""Training from slides with QuPath annotations: the labelled tiles cut from real slides, the
patient-level split, and ``hashview train --annotations`` end to end."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import DATA, SLIDE, TINY_SLIDE
from hashview.annotations.patches import cut_annotated_tiles
from hashview.annotations.tiles import AnnotationOptions
from hashview.cli import main
from hashview.errors import HashViewError
from hashview.tiling import TilingParams
from hashview.training.slide_run import _default_protocol

ANNOTATIONS = DATA / "annotations"
TCGA_SLIDE = DATA / "TCGA-CR-7395-01A-01-TS1-crop.svs"
TILING = TilingParams(tile_size=150, target_mpp=0.495)


def _rows(folder) -> list[dict]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _two_patients(tmp_path):
    """Two copies of the annotated CMU slide, each with its annotations beside it."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("patient-a", "patient-b"):
        shutil.copy(SLIDE, slides / f"{name}.svs")
        shutil.copy(ANNOTATIONS / "CMU-1-Small-Region.geojson", slides / f"{name}.svs.geojson")
    return slides


def test_annotated_tiles_are_cut_with_their_class_and_slide_as_patient(tmp_path):
    bad = tmp_path / "exports"
    bad.mkdir()
    for annotation in ANNOTATIONS.glob("*.geojson"):
        shutil.copy(annotation, bad)
    (bad / "tiny-16px.geojson").write_text("not json")
    out = tmp_path / "tiles"
    cut = cut_annotated_tiles([SLIDE, TINY_SLIDE, TCGA_SLIDE], out, AnnotationOptions(bad),
                              TILING)
    assert len(cut.failed) == 1 and cut.failed[0].startswith(f"{bad / 'tiny-16px.geojson'}: ")
    rows = _rows(out)
    assert len(rows) == cut.tiles == sum(cut.labels.values())
    by_patient = {row["patient_id"]: set() for row in rows}
    for row in rows:
        by_patient[row["patient_id"]].add(row["label"])
        with Image.open(out / row["path"]) as tile:
            assert tile.size == (150, 150)
    assert by_patient == {"CMU-1-Small-Region": {"Dermis", "Epidermis"},
                          "TCGA-CR-7395-01A-01-TS1-crop": {"Tumor", "Stroma"}}
    # a slide's classes are its own: the split cannot be by patient, and says so
    assert _default_protocol(cut) == "hatdh"
    assert any("split by tile, not by patient" in w for w in cut.warnings)


def test_no_annotated_tile_at_all_is_one_line(tmp_path):
    with pytest.raises(HashViewError, match="no annotated tiles to train on .*no annotation "
                                            "file"):
        cut_annotated_tiles([SLIDE], tmp_path / "tiles", AnnotationOptions(tmp_path), TILING)


def test_classes_on_two_patients_give_a_patient_split(tmp_path):
    slides = _two_patients(tmp_path)
    cut = cut_annotated_tiles(sorted(slides.glob("*.svs")), tmp_path / "tiles",
                              AnnotationOptions(), TILING)
    assert set(cut.patients.values()) == {"patient-a", "patient-b"}
    assert _default_protocol(cut) == "patient"
    assert not any("split by tile" in w for w in cut.warnings)


@pytest.mark.slow
def test_train_from_annotated_slides_keeps_each_patient_on_one_side(tmp_path, capsys):
    slides = _two_patients(tmp_path)
    out = tmp_path / "model"
    code = main(["train", str(slides), "--annotations", "--arch", "mth", "--bits", "16",
                 "--out", str(out), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--keep-held-out", "--accept-worse", "--option", "steps_per_epoch=2", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["annotated_tiles"]["labels"] == {"Dermis": 38, "Epidermis": 20}
    split = json.loads((out / "split.json").read_text())
    assert split["protocol"] == "patient"
    sides = [{path.split("/")[0] for path in split[part]} for part in ("train", "test")]
    assert sides[0] and sides[1] and not sides[0] & sides[1]
    card = json.loads((out / summary["model"].rsplit("/", 1)[-1]).with_suffix(".json")
                      .read_text())
    assert (card["tile_size"], card["target_mpp"]) == (150, 0.495)  # the start model's tiling


def test_train_refuses_several_folders_without_annotations(tmp_path, capsys):
    code = main(["train", str(SLIDE), str(TCGA_SLIDE), "--arch", "mth", "--bits", "16",
                 "--out", str(tmp_path)])
    assert code == 2 and "several slides need --annotations" in capsys.readouterr().err
    code = main(["train", str(SLIDE), "--min-cover", "0.6", "--arch", "mth", "--bits", "16",
                 "--out", str(tmp_path)])
    assert code == 2 and "--min-cover needs --annotations" in capsys.readouterr().err


@pytest.mark.slow
def test_a_training_job_takes_annotated_slides(tmp_path):
    from hashview.jobs.runner import run_job
    from hashview.jobs.spec import JobSpec

    slides = _two_patients(tmp_path)
    events: list[dict] = []
    spec = JobSpec("train", {"data_folder": slides, "annotations": {"where": None},
                             "arch": "dch", "bits": 8, "out_dir": tmp_path / "model",
                             "epochs": 1, "batch_size": 8, "input_size": 64,
                             "steps_per_epoch": 1, "device": "cpu", "keep_held_out": True})
    assert run_job(spec, events.append) == "done", events[-1]
    assert Path(events[-1]["result"]["model_path"]).is_file()
    assert any("trained on 58 annotated tiles of 2 slide(s): Dermis 38, Epidermis 20"
               in e.get("message", "") for e in events)


def test_a_case_csv_gives_the_slides_their_patients(tmp_path, monkeypatch, capsys):
    import hashview.training.slide_run as slide_run

    slides = _two_patients(tmp_path)
    cases = tmp_path / "cases.csv"
    cases.write_text("slide,patient,site\npatient-a.svs,P-7,skin\n"
                     f"{slides / 'patient-b.svs'},P-7,skin\n")
    # the same patient on both slides: its tiles may not be split apart
    from hashview.library.case_csv import patients_of, read_case_csv

    cut = cut_annotated_tiles(sorted(slides.glob("*.svs")), tmp_path / "tiles",
                              AnnotationOptions(), TILING, patients_of(read_case_csv(cases)))
    assert set(cut.patients.values()) == {"P-7"}
    assert {row["patient_id"] for row in _rows(tmp_path / "tiles")} == {"P-7"}
    assert _default_protocol(cut) == "hatdh"

    given = {}

    def trainer(**named):
        given.update(named)
        raise HashViewError(None, "stop here")

    monkeypatch.setattr(slide_run, "train_from_annotated_slides", trainer)
    code = main(["train", str(slides), "--annotations", "--cases", str(cases), "--arch", "mth",
                 "--bits", "16", "--out", str(tmp_path / "model")])
    assert code == 1 and "stop here" in capsys.readouterr().err
    assert given["patients"]["patient-a.svs"] == given["patients"]["patient-b.svs"] == "P-7"
    assert main(["train", str(slides), "--cases", str(cases), "--arch", "mth", "--bits", "16",
                 "--out", str(tmp_path / "model")]) == 2
    assert "--cases needs --annotations" in capsys.readouterr().err
