"""Stain normalisation of database and query tiles in evaluation (``hashview eval --normalise``)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import KATHER
from hashview.cli import main
from hashview.evaluation import evaluate_model
from hashview.generalisation import evaluate_cross_folder, evaluate_cross_stain

MODEL = "dch-16"  # the smallest bundled model: 16 bits at 64 px, 12 Kather test images
N_IMAGES = 12


class _Grey:
    """A 'normaliser' that turns every tile into one grey square and records what it saw."""
    name, method = "grey", "test"

    def __init__(self):
        self.counts, self.shapes = Counter(), set()

    def restain(self, rgb):
        self.counts["grey"] += 1
        self.shapes.add(rgb.shape)
        return np.full_like(rgb, 128)

    def summary(self):
        return {"target": self.name, "method": self.method, **self.counts}


class _Identity(_Grey):
    def restain(self, rgb):
        self.counts["same"] += 1
        return rgb


def test_evaluate_model_normalises_every_tile_at_the_model_input_size():
    plain = evaluate_model(MODEL, KATHER, seeds=(0,), device="cpu")
    grey = _Grey()
    normalised = evaluate_model(MODEL, KATHER, seeds=(0,), device="cpu", stain_normaliser=grey)
    assert grey.counts["grey"] == N_IMAGES and grey.shapes == {(64, 64, 3)}
    # every tile the same: all codes tie, so the ranking no longer follows the classes
    assert normalised["mean"]["map"] != plain["mean"]["map"]
    assert normalised["stain_normalised"] == {"target": "grey", "method": "test",
                                              "grey": N_IMAGES}
    assert "stain_normalised" not in plain


def test_cross_stain_normalises_the_database_and_the_restained_queries(monkeypatch):
    import hashview.stain as stain
    monkeypatch.setattr(stain, "StainTransfer", _Grey)  # fit_targets passes fitted ones through
    same = _Identity()
    result = evaluate_cross_stain(MODEL, KATHER, {"same": _Identity()}, seeds=(0,),
                                  device="cpu", stain_normaliser=same)
    assert same.counts["same"] == 2 * N_IMAGES  # database (in-set) once, re-stained once
    assert result["targets"]["same"]["gap"] == {"map": 0.0, "vote_accuracy@10": 0.0}
    folder = _Identity()
    evaluate_cross_folder(MODEL, KATHER, KATHER, device="cpu", stain_normaliser=folder)
    assert folder.counts["same"] == 2 * N_IMAGES


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory):
    """A Kather tumour tile as the reference stain (real tissue, so Macenko fits)."""
    path = tmp_path_factory.mktemp("reference") / "reference.png"
    Image.open(next(KATHER.glob("01_TUMOR/*.tif"))).convert("RGB").save(path)
    return path


def test_cli_eval_normalise(capsys, reference_png, tmp_path):
    code, out, err = _run(capsys, "eval", KATHER, "-m", MODEL, "--seeds", "0", "--device", "cpu",
                          "--normalise", reference_png, "--json")
    assert code == 0, err
    note = json.loads(out)["stain_normalised"]
    assert note["method"] == "macenko" and note["target"] == str(reference_png)
    assert note.get("macenko", 0) + note.get("no_tissue", 0) == N_IMAGES

    code, out, err = _run(capsys, "eval", KATHER, "-m", MODEL, "--seeds", "0", "--device", "cpu",
                          "--normalise", reference_png, "--normalise-method", "reinhard")
    assert code == 0, err
    assert f"stain-normalised to {reference_png} (reinhard" in out

    code, out, err = _run(capsys, "eval", KATHER, "-m", MODEL, "--normalise",
                          tmp_path / "nowhere.png")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "nowhere.png" in err
    code, out, err = _run(capsys, "eval", KATHER, "--baseline", "lsh-pixels", "--normalise",
                          reference_png)
    assert code != 0 and "--normalise" in err
