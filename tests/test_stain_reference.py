"""A library made with a stain reference: stored, checked, used by indexing and by search."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import KATHER, SLIDE
from hashview.cli import main
from hashview.cluster import merge_libraries
from hashview.encode import Encoder
from hashview.errors import LibraryError
from hashview.indexing import index_paths
from hashview.library import Library
from hashview.library.editing import remove_sources
from hashview.models import load_model
from hashview.session import LibrarySession
from hashview.stain import StainTransfer, fit_stain_target
from hashview.library.stain_attribute import parse_reference
from hashview.stain_reference import fit_reference_text, normaliser_of, reference_text

MODEL = "dch-16"


def _tiles():
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(KATHER.glob("*/*.tif"))]


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_stored_reference_restains_like_the_fitted_one(method):
    fitted = fit_stain_target(SLIDE, method)
    text = reference_text(fitted)
    assert len(text) < 1000 and json.loads(text)["method"] == method
    stored = normaliser_of(text)
    assert isinstance(stored, StainTransfer) and stored.method == method
    for tile in _tiles()[:4]:
        assert np.array_equal(stored.restain(tile), fitted.restain(tile))


def test_parse_reference_refuses_what_is_not_a_reference():
    good = json.loads(fit_reference_text(SLIDE))
    bad = {"not JSON": "{", "a list": "[1]", "too long": " " * 5000,
           "method": json.dumps({**good, "method": "pickle"}),
           "shape": json.dumps({**good, "he": [[1, 2], [3, 4]]}),
           "NaN": json.dumps({**good, "max_c": [float("nan"), 1.0]}),
           "text": json.dumps({**good, "lab_mean": ["a", "b", "c"]}),
           "zero concentration": json.dumps({**good, "max_c": [0.0, 1.0]})}
    for why, text in bad.items():
        with pytest.raises(ValueError):
            parse_reference(text)
            pytest.fail(why)
    with pytest.raises(LibraryError) as error:
        normaliser_of(bad["shape"], "lib.h5")
    assert "lib.h5" in str(error.value) and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def normalised_library(tmp_path_factory):
    path = tmp_path_factory.mktemp("stain") / "lib.h5"
    report = index_paths([KATHER], path, model=MODEL, device="cpu",
                         stain_reference=fit_reference_text(SLIDE))
    assert len(report.added) == 12 and not report.failed
    return path


def test_tiles_and_queries_are_normalised_to_the_stored_reference(normalised_library):
    with Library.open(normalised_library) as library:
        stored_codes = library.codes()
        reference = library.model.stain_reference
        assert parse_reference(reference)["method"] == "macenko"
    images = [Image.open(p).convert("RGB") for p in sorted(KATHER.glob("*/*.tif"))]
    plain = Encoder(load_model(MODEL), device="cpu").encode(images)
    normalised = Encoder(load_model(MODEL), device="cpu",
                         stain_normaliser=normaliser_of(reference)).encode(images)
    assert sorted(map(bytes, normalised)) == sorted(map(bytes, stored_codes))
    changed = [i for i in range(len(images)) if not np.array_equal(plain[i], normalised[i])]
    assert changed  # the reference moves some codes: else this test could not fail
    session = LibrarySession(normalised_library, device="cpu")
    for i in changed:
        best = session.search(images[i], k=1).hits[0]
        assert best.distance == 0


def test_info_shows_it_and_edits_keep_it(normalised_library, tmp_path, capsys):
    assert main(["info", str(normalised_library)]) == 0
    assert "stain normalised: macenko to CMU-1-Small-Region" in capsys.readouterr().out
    copy = tmp_path / "copy.h5"
    copy.write_bytes(normalised_library.read_bytes())
    remove_sources(copy, [0])
    with Library.open(copy) as library, Library.open(normalised_library) as original:
        assert library.schema_version == 3 and library.n_sources == 11
        assert library.model.stain_reference == original.model.stain_reference


def test_another_reference_or_none_is_refused_in_one_line(normalised_library, tmp_path,
                                                          capsys):
    with pytest.raises(LibraryError, match="another stain reference"):
        index_paths([KATHER], normalised_library, model=MODEL, device="cpu",
                    stain_reference=fit_reference_text(SLIDE, "reinhard"))
    plain = tmp_path / "plain.h5"
    index_paths([KATHER / "01_TUMOR"], plain, model=MODEL, device="cpu")
    report = merge_libraries([plain], normalised_library)
    assert len(report.failed) == 1 and "stain reference differs" in report.failed[0]
    code = main(["index", str(KATHER), "-l", str(plain), "-m", MODEL, "--device", "cpu",
                 "--stain-normalise", str(SLIDE)])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "no stain reference" in err


@pytest.mark.parametrize("stored", ["{not json", '{"method": "macenko"}', 7])
def test_a_damaged_stored_reference_is_one_line(normalised_library, tmp_path, capsys, stored):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(normalised_library.read_bytes())
    with h5py.File(damaged, "r+") as f:
        f.attrs["stain_reference"] = stored
    for command in (["info", str(damaged)],
                    ["search", str(damaged), str(next(KATHER.glob("*/*.tif")))]):
        assert main(command) != 0
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1
        assert "damaged.h5" in err and "stain_reference" in err


def test_cli_index_stain_normalise(tmp_path, capsys):
    path = tmp_path / "cli.h5"
    assert main(["index", str(KATHER / "01_TUMOR"), "-l", str(path), "-m", MODEL, "--device",
                 "cpu", "--stain-normalise", str(SLIDE), "--stain-normalise-method",
                 "reinhard"]) == 0
    with Library.open(path) as library:
        reference = parse_reference(library.model.stain_reference)
    assert (reference["method"], reference["name"]) == ("reinhard", str(SLIDE))
    # --engine ray takes --stain-normalise too: tests/test_cluster.py
