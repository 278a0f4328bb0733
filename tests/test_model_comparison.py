"""``hashview check --models``: the library's labelled tiles read again from their files,
encoded by each model and judged with the library check (hashview.search.model_comparison)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _patch_folders import turned_patches
from conftest import SLIDE
from hashview.cli import main
from hashview.library import Library
from hashview.search.model_comparison import compare_models
from hashview.search.self_check import check_library


def _same_numbers(a, b) -> bool:
    return [(l.label, l.tiles, l.queries, l.right, l.wrong, l.no_answer) for l in a.labels] == \
        [(l.label, l.tiles, l.queries, l.right, l.wrong, l.no_answer) for l in b.labels]


def test_patches_read_again_give_the_librarys_own_codes_and_other_models_are_ranked(tmp_path):
    library = tmp_path / "lib.h5"
    patches = turned_patches(tmp_path / "patches")
    sorted((patches / "07_ADIPOSE").iterdir())[0].unlink()  # 12 and 11: a label swap shows
    assert main(["index", str(patches), "-l", str(library), "--no-check"]) == 0
    result = compare_models(library, ["mth-64-general", "dch-16", "no-such-model"])
    assert result.tiles == 23 and result.library_model == "mth-64-general"
    names = [s.model for s in result.scores]
    assert sorted(names) == ["dch-16", "mth-64-general", "no-such-model"]
    assert names[-1] == "no-such-model" and "unknown model 'no-such-model'" in (
        result.scores[-1].problem)
    judged = [s.check.balanced_accuracy for s in result.scores[:2]]
    assert judged == sorted(judged, reverse=True)  # best first
    own = next(s.check for s in result.scores if s.model == "mth-64-general")
    assert _same_numbers(own, check_library(library))
    lines = result.lines()
    assert lines[0].startswith("23 labelled tiles of lib.h5 read again")
    assert lines[0].endswith("held out; balanced vote@10 (its range with the sources "
                             "resampled) against chance 0.50:")
    low, high = own.interval
    assert f"  mth-64-general (this library's): {own.balanced_accuracy:.2f} ({low:.2f}-" \
           f"{high:.2f}), {own.queries} queries" in lines
    assert lines[-1].startswith("  no-such-model: not judged: unknown model 'no-such-model'")


def test_models_are_ranked_by_balanced_vote_a_collapsed_one_last():
    from hashview.search import self_check
    from hashview.search.model_comparison import ModelScore, _sort_key

    def scored(name, right, top_share=0.01):
        labels = tuple(self_check.LabelCheck(label, 50, 5, outside=40, queries=50, right=right,
                                             wrong=50 - right) for label in "ab")
        codes = self_check.CodeCheck(100, 80, top_share, 0, 64)
        return ModelScore(name, self_check.LibraryCheck("l.h5", name, 100, 10, "patient",
                                                         codes, labels, 10))
    scores = [scored("weak", 30), ModelScore("missing", problem="unknown model"),
              scored("collapsed", 50, top_share=0.9), scored("good", 45)]
    assert [s.model for s in sorted(scores, key=_sort_key)] == [
        "good", "weak", "collapsed", "missing"]


def test_slide_tiles_are_read_as_indexing_read_them(tmp_path):
    from hashview.encode import Encoder
    from hashview.models import load_model
    from hashview.search.model_comparison import _read_tiles, _stored
    from hashview.tiling import square_tile

    library_path = tmp_path / "slide.h5"
    assert main(["index", str(SLIDE), "-l", str(library_path)]) == 0
    encoder = Encoder(load_model("mth-64-general"), device="cpu")
    warnings = []
    with Library.open(library_path) as library:
        rows = np.arange(library.n_tiles)
        stored = library.codes()
    images = _read_tiles(_stored(library_path), rows, encoder.input_size, warnings)
    assert not warnings and len(images) == len(rows) > 50
    codes = encoder.encode([square_tile(images[row], encoder.input_size) for row in rows])
    assert np.array_equal(codes, stored)


def test_an_unreadable_source_is_one_warning_and_the_others_are_judged(tmp_path, capsys):
    patches = turned_patches(tmp_path / "patches")
    library = tmp_path / "lib.h5"
    assert main(["index", str(patches), "-l", str(library), "--no-check"]) == 0
    gone = sorted((patches / "01_TUMOR").iterdir())[0]
    gone.unlink()
    capsys.readouterr()
    result = compare_models(library, ["mth-64-general"])
    assert result.tiles == 23 and len(result.warnings) == 1 and gone.name in result.warnings[0]
    assert main(["check", str(library), "--models", "mth-64-general"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("23 labelled tiles of lib.h5 read again")
    assert out[-1].startswith("warning: ") and gone.name in out[-1]


def test_cli_json_and_an_empty_model_list(tmp_path, capsys):
    library = tmp_path / "lib.h5"
    assert main(["index", str(turned_patches(tmp_path / "patches")), "-l", str(library),
                 "--no-check"]) == 0
    capsys.readouterr()
    assert main(["check", str(library), "--models", "mth-64-general", "--tiles", "10",
                 "-k", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["tiles"] == 10 and found["library_model"] == "mth-64-general"
    assert [m["model"] for m in found["models"]] == ["mth-64-general"]
    assert found["models"][0]["check"]["k"] == 3
    assert main(["check", str(library), "--models", " , "]) == 2
    assert capsys.readouterr().err.strip() == "hashview: check: --models names no model"
    with pytest.raises(SystemExit):
        main(["check", str(library), "--models", "all", "--tiles", "0"])


def test_every_model_answers_the_same_queries(tmp_path, monkeypatch):
    """A tile one compared model trained on is queried for none of them."""
    from hashview.search import model_comparison

    library = tmp_path / "lib.h5"
    assert main(["index", str(turned_patches(tmp_path / "patches")), "-l", str(library),
                 "--no-check"]) == 0
    monkeypatch.setattr(model_comparison, "trained_sources",
                        lambda sources, card: {0} if card.name == "dch-16" else set())
    result = compare_models(library, ["mth-64-general", "dch-16"])
    assert [s.check.queries for s in result.scores] == [23, 23]
    assert result.tiles == 24


def test_many_unreadable_sources_are_counted_not_listed(tmp_path):
    import shutil

    patches = turned_patches(tmp_path / "patches")
    library = tmp_path / "lib.h5"
    assert main(["index", str(patches), "-l", str(library), "--no-check"]) == 0
    shutil.rmtree(patches / "07_ADIPOSE")  # 12 files gone
    lines = compare_models(library, ["mth-64-general"], k=3).lines()
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 4 and warnings[-1] == (
        "warning: 9 more sources could not be read (hashview relocate LIB.h5 OLD_DIR NEW_DIR "
        "if they moved)")
