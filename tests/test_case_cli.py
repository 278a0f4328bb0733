"""``hashview meta`` (case data from a CSV), ``search --where``, and the editing commands
(``remove``, ``relabel``, ``relocate``) on a small library of real Kather patches (two per class,
labelled by class, patients P0/P1: the ``--patient`` tests' library)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_patient_filter import patient_library as indexed  # noqa: F401  (a fixture)
from hashview.cli import main
from hashview.errors import HashViewError
from hashview.library import Library
from hashview.library import case_csv
from hashview.library.case_csv import apply_case_csv, read_case_csv


@pytest.fixture
def library(indexed, tmp_path):
    copy = tmp_path / "lib.h5"
    shutil.copy(indexed[0], copy)
    return copy


def _names(path: Path) -> list[str]:
    with Library.open(path) as lib:
        return [s.name for s in lib.sources()]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_meta_from_csv_then_search_where(library, indexed, tmp_path, capsys):
    names = _names(library)
    cases = tmp_path / "cases.csv"
    cases.write_text("Slide,Patient,Stain,Site\n"
                     f"{names[0]},P1,HE,colon\n"
                     f"{indexed[1] / names[1]},P1,he,colon\n"  # a full path
                     f"{names[2]},P2,IHC,rectum\n"
                     "missing.tif,P3,HE,colon\n", encoding="utf-8")
    assert main(["meta", str(library), "--csv", str(cases)]) == 3  # a row matched nothing
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(
        f"{library}: 3 rows matched, 1 unmatched (missing.tif), {len(names) - 3} sources "
        "without a row;")
    assert main(["meta", str(library), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["keys"] == ["Stain", "Site"]
    assert [s["metadata"] for s in table["sources"][:4]] == [
        {"Stain": "HE", "Site": "colon"}, {"Stain": "he", "Site": "colon"},
        {"Stain": "IHC", "Site": "rectum"}, {}]
    assert [s["patient"] for s in table["sources"][:3]] == ["P1", "P1", "P2"]
    assert table["sources"][3]["patient"] in ("P0", "P1")  # as indexed: no row for it
    assert main(["info", str(library)]) == 0
    assert "metadata keys: Stain, Site\n" in capsys.readouterr().out

    query = str(indexed[1] / names[5])
    assert main(["search", str(library), query, "--where", "stain=HE", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and {h["source_id"] for h in hits} == {0, 1}
    assert main(["search", str(library), query, "--where", "stain=HE", "--where", "site=rectum",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == []
    assert main(["search", str(library), query, "--where", "patient=p2", "--json"]) == 0
    assert {h["source_id"] for h in json.loads(capsys.readouterr().out)["hits"]} == {2}
    assert main(["search", str(library), query, "--where", "scanner=x"]) == 1
    assert _one_error_line(capsys).endswith("no metadata key 'scanner' (known: label, patient, "
                                            "Stain, Site)")
    assert main(["search", str(library), query, "--where", "stain"]) == 2
    assert "KEY=VALUE" in _one_error_line(capsys)


@pytest.mark.parametrize("content, reason", [
    (b"file,stain\n\xff\xfe.tif,HE\n", "not UTF-8 text"),
    (b"name,stain\na.tif,HE\n", "no column naming the slides (file, path, slide)"),
    (b"file,stain\na.tif,HE\na.tif,IHC\n", "'a.tif' is in rows 2 and 3"),
    (b"file,stain,Stain\na.tif,HE,x\n", "column 'Stain' appears twice"),
    (b"file,label,stain,a\0b\na.tif,x,HE,1\n", "has a NUL"),
    (b"file,patient,case\na.tif,1,2\n", "both give the patient"),
    (b"", "empty: no header row"),
    (b"file,stain\nnothing.tif,HE\n", "no row matches a source"),
])
def test_a_bad_case_csv_is_one_line_and_changes_nothing(library, tmp_path, capsys, content,
                                                        reason):
    cases = tmp_path / "cases.csv"
    cases.write_bytes(content)
    with Library.open(library) as lib:
        generation = lib.generation
    assert main(["meta", str(library), "--csv", str(cases)]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"hashview: {cases}: ") and reason in line, line
    with Library.open(library) as lib:
        assert lib.generation == generation


def test_a_huge_case_csv_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(case_csv, "MAX_CSV_BYTES", 100)
    cases = tmp_path / "cases.csv"
    cases.write_text("file,stain\n" + "a.tif,HE\n" * 20)
    with pytest.raises(HashViewError, match="too large"):
        read_case_csv(cases)


def test_csv_rows_match_full_paths_first_and_refuse_ambiguous_names(tmp_path):
    path = tmp_path / "lib.h5"
    with Library.create(path, "m", "hatdh", 64, "a" * 64) as lib:
        for folder in ("/one", "/two"):
            lib.add_source({"path": f"{folder}/same.svs", "fingerprint": folder},
                           np.zeros((1, 8), np.uint8), [0], [0], [224])
    cases = tmp_path / "cases.csv"
    cases.write_text("path,diagnosis\n/two/same.svs,adenoma\n")
    result, match = apply_case_csv(path, read_case_csv(cases))
    assert match.matched == ["/two/same.svs"] and match.without_row == [0]
    with Library.open(path) as lib:
        assert lib.metadata(1) == {"diagnosis": "adenoma"} and lib.metadata(0) == {}
    cases.write_text("path,diagnosis\nsame.svs,carcinoma\n")
    with pytest.raises(HashViewError, match="matches 2 sources by file name; give the full "
                                            "path"):
        apply_case_csv(path, read_case_csv(cases))


def test_remove_relabel_relocate_commands(library, indexed, tmp_path, capsys):
    names = _names(library)
    n = len(names)
    assert main(["remove", str(library), names[0], "1"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{library}: removed 2 sources (2 tiles); {n - 2} sources, {n - 2} tiles left")
    assert _names(library) == names[2:]
    assert main(["remove", str(library), "nothing.tif"]) == 1
    assert "no source 'nothing.tif'" in _one_error_line(capsys)

    assert main(["relabel", str(library), names[2], "--label", "odd", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["action"] == "relabel" and report["sources"] == [0] and report["tiles"] == 1
    assert main(["relabel", str(library), "--tiles", "1,2", "--label", ""]) == 0
    assert capsys.readouterr().out.strip() == f"{library}: relabelled 2 tiles as unknown"
    with Library.open(library) as lib:
        assert [lib.tile(i).label for i in range(3)] == ["odd", None, None]
        assert lib.source(0).label == "odd"
    assert main(["relabel", str(library), "--label", "x"]) == 2
    capsys.readouterr()

    moved = tmp_path / "moved"
    shutil.copytree(indexed[1], moved)
    (moved / names[3]).unlink()
    assert main(["relocate", str(library), str(indexed[1]), str(moved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == [str(moved / names[3])] and len(report["found"]) == n - 3
    with Library.open(library) as lib:
        assert {Path(s.path).parent for s in lib.sources()} == {moved}
