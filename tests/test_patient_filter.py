"""``hashview search --patient``: hits only from that patient's slides; an unknown patient is
one line."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import KATHER
from hashview.cli import main


@pytest.fixture(scope="module")
def patient_library(tmp_path_factory):
    from hashview.indexing import index_paths

    folder = tmp_path_factory.mktemp("patients")
    rows = ["path,label,patient_id"]
    for i, cls in enumerate(sorted(p for p in KATHER.iterdir() if p.is_dir())):
        for j, patch in enumerate(sorted(cls.iterdir())[:2]):
            shutil.copy(patch, folder / patch.name)
            rows.append(f"{patch.name},{cls.name},P{(i + j) % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    library = folder / "library.h5"
    index_paths([folder], library)
    return library, folder


def test_hits_come_only_from_the_patients_slides(patient_library, capsys):
    import hashview

    library, folder = patient_library
    of_p1 = {s.id for s in hashview.open_library(library).sources if s.patient_id == "P1"}
    assert of_p1 and len(of_p1) < len(hashview.open_library(library).sources)
    query = next(folder.glob("*.tif"))
    assert main(["search", str(library), str(query), "--patient", "P1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and {h["source_id"] for h in hits} <= of_p1


def test_an_unknown_patient_is_one_line(patient_library, capsys):
    library, folder = patient_library
    query = next(folder.glob("*.tif"))
    assert main(["search", str(library), str(query), "--patient", "P9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no slide of patient 'P9'" in err[0] and "P0, P1" in err[0]
