"""hashview merge: libraries built separately with one model become the library one run makes."""

from __future__ import annotations

import pytest

from _library_content import library_content
from conftest import KATHER, SLIDE
from hashview.cli import main
from hashview.cluster import merge_libraries
from hashview.indexing import index_paths
from hashview.library import Library
from hashview.tiling import TilingParams

PARAMS = TilingParams(tile_size=150, target_mpp=0.495, max_tiles=20)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Library A holds the slide, B the patches and the slide again; ``all`` both, in one run."""
    root = tmp_path_factory.mktemp("merge")
    for name, paths in (("a", [SLIDE]), ("b", [KATHER, SLIDE]), ("all", [SLIDE, KATHER])):
        assert not index_paths(paths, root / f"{name}.h5", params=PARAMS).failed
    return root


def test_merge_equals_one_run_and_a_rerun_adds_nothing(built, tmp_path):
    into = tmp_path / "merged.h5"
    report = merge_libraries([built / "a.h5", built / "b.h5"], into)
    assert not report.failed
    assert (len(report.added), report.tiles_added) == (13, 32)  # the slide once, 12 patches
    assert len(report.duplicates) == 1  # B's copy of the slide
    expected = library_content(built / "all.h5")
    assert library_content(into) == expected
    again = merge_libraries([built / "a.h5", built / "b.h5"], into)
    assert (len(again.added), len(again.skipped), len(again.duplicates)) == (0, 14, 1)
    assert library_content(into) == expected


def test_merge_refuses_another_model_in_one_line(built, tmp_path, capsys):
    other = tmp_path / "other.h5"
    Library.create(other, "other-model", "dch", 64, "0" * 64, tile_size=150,
                   target_mpp=0.495).close()
    into = tmp_path / "merged.h5"
    code = main(["merge", str(built / "a.h5"), str(other), "--into", str(into)])
    out, err = capsys.readouterr()
    assert code == 3  # partial: A was merged
    assert err.count("\n") == 1 and err.startswith(f"hashview: {other}: made with model "
                                                   "'other-model'")
    assert "added 1 source(s), 20 tiles" in out
    assert library_content(into) == library_content(built / "a.h5")


def test_merge_reports_a_missing_library_and_goes_on(built, tmp_path, capsys):
    into = tmp_path / "merged.h5"
    code = main(["merge", str(tmp_path / "missing.h5"), str(built / "b.h5"), "--into",
                 str(into)])
    assert code == 3
    assert "missing.h5: no such file" in capsys.readouterr().err
    assert library_content(into) == library_content(built / "b.h5")
