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


def test_merge_reads_one_commit_batch_of_tiles_at_a_time(built, tmp_path, monkeypatch):
    import hashview.cluster.merge as merge

    monkeypatch.setattr(merge, "COMMIT_SOURCES", 5)
    read_rows = []
    real_codes = Library.codes

    def counting_codes(self, start=0, stop=None):
        codes = real_codes(self, start, stop)
        read_rows.append(len(codes))
        return codes

    monkeypatch.setattr(Library, "codes", counting_codes)
    report = merge_libraries([built / "a.h5", built / "b.h5"], tmp_path / "merged.h5")
    monkeypatch.undo()
    assert not report.failed and report.tiles_added == 32
    # A's slide (20 tiles) in one read; B's 12 patches in batches of 5 sources (its slide is
    # A's again and never read): never a whole library at once
    assert sorted(read_rows) == [2, 5, 5, 20]
    assert library_content(tmp_path / "merged.h5") == library_content(built / "all.h5")


def test_a_library_reads_a_range_of_tiles_and_refuses_one_out_of_range(built):
    with Library.open(built / "b.h5") as library:
        codes, table = library.codes(), library.tile_table()
        assert (library.codes(3, 9) == codes[3:9]).all()
        assert all((library.tile_table(3, 9)[k] == table[k][3:9]).all() for k in table)
        for start, stop in ((5, 3), (-1, 2), (0, library.n_tiles + 1)):
            with pytest.raises(IndexError, match="out of range"):
                library.codes(start, stop)


def test_sources_with_gaps_between_them_get_their_own_tiles(built):
    from hashview.cluster.merge import _with_tiles

    with Library.open(built / "b.h5") as library:
        records, codes = library.sources(), library.codes()
        chosen = [records[0], records[2], records[3], records[-1]]  # gaps after 0 and 3
        items = _with_tiles(library, chosen, library.label_names())
    assert [item[0].path for item in items] == [r.path for r in chosen]
    for record, item_codes, *_ in items:
        rows = slice(record.tile_start, record.tile_start + record.tile_count)
        assert len(item_codes) == record.tile_count and (item_codes == codes[rows]).all()
