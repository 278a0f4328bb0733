"""Damaged or hostile ``/metadata`` groups (schema 3): refused at open in one line naming the
file, like every other table (tests/test_hostile_library.py)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from test_hostile_library import MODEL, edit, fill, recreate, refused
from hashview.cli import main as cli_main
from hashview.library import Library, editing


@pytest.fixture
def meta_path(tmp_path: Path) -> Path:
    path = tmp_path / "lib.h5"
    with Library.create(path, **MODEL) as lib:
        fill(lib)
    editing.set_case_data(path, {0: {"stain": "HE"}, 1: {"stain": "IHC", "site": "colon"}})
    return path


def _replace(name: str, data) -> callable:
    def change(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, data=np.asarray(data), maxshape=(None,), chunks=True)
    return change


def _blob(*values: str) -> np.ndarray:
    return np.frombuffer("".join(v + "\0" for v in values).encode(), np.uint8)


def _keys(*names: str) -> callable:
    """Keys ``names`` with consistent offsets (so only their names are wrong)."""
    def change(f: h5py.File) -> None:
        _replace("metadata/keys/text", _blob(*names))(f)
        ends = np.cumsum([len(n.encode()) + 1 for n in names], dtype=np.int64)
        _replace("metadata/keys/text_end", ends)(f)
    return change


def test_a_valid_metadata_group_opens(meta_path):
    with Library.open(meta_path) as lib:
        assert lib.metadata(1) == {"stain": "IHC", "site": "colon"}


@pytest.mark.parametrize("change, reason", [
    (_replace("metadata/keys/text", np.frombuffer(b"st\xffin\0site\0", np.uint8)),
     "/metadata/keys/text is not UTF-8"),
    (_keys("stain", "Stain"), "has a key twice"),
    (_keys("label", "site"), "is reserved"),
    (_keys("stain", ""), "is empty"),
    (_replace("metadata/keys/text_end", np.array([6, 3], np.int64)), "not increasing"),
    (_replace("metadata/keys/text_end", np.arange(1, 300, dtype=np.int64)), "at most 256"),
    (_replace("metadata/text_end", np.array([4, 2], np.int64)), "not increasing"),
    (_replace("metadata/text_end", np.array([4, 10 ** 6], np.int64)), "not increasing"),
    (_replace("metadata/text_end", np.array([3, 4, 14, 14, 14, 14], np.int64)),
     "6 rows for 4 sources"),
    (_replace("metadata/text", np.frombuffer(b"HE\0\0IHC\0colo", np.uint8)),
     "not increasing within the text"),
    (_replace("metadata/text", np.frombuffer(b"HE\0\0IHC\0col\xffn\0", np.uint8)),
     "/metadata/text is not UTF-8"),
    (_replace("metadata/text", _blob("HE", "IHC", "", "colon")), "does not match the values"),
    (_replace("metadata/text", np.frombuffer(b"HE\0\0IHC\0colonX", np.uint8)),
     "does not end with a NUL"),
    (recreate("metadata/text", compression="gzip"), "compressed or filtered"),
    (recreate("metadata/text_end", data=np.array([[4], [14]], np.int64)), "has shape"),
    (recreate("metadata/text", data=np.zeros(14, np.float32)), "expected uint8"),
])
def test_a_hostile_metadata_group_is_refused_in_one_line(meta_path, change, reason):
    edit(meta_path, change)
    message = refused(meta_path)
    assert reason in message, message


def test_metadata_reached_by_a_link_or_missing_a_column_is_refused(meta_path, tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f.create_dataset("text", data=_blob("HE", "", "IHC", "colon"))
    change = _replace("metadata/text", [0])

    def external(f: h5py.File) -> None:
        change(f)
        del f["metadata/text"]
        f["metadata/text"] = h5py.ExternalLink(str(outside), "text")
    edit(meta_path, external)
    assert "link to elsewhere" in refused(meta_path)
    edit(meta_path, lambda f: f.__delitem__("metadata/text"))
    assert "library is incomplete (missing /metadata/text)" in refused(meta_path)


def test_the_cli_reports_a_hostile_metadata_group_in_one_line(meta_path, capsys):
    edit(meta_path, _replace("metadata/text_end", np.array([4, 2], np.int64)))
    assert cli_main(["meta", str(meta_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hashview: {meta_path}: library is damaged")
