"""Editing a library copy-on-write: case metadata (schema 3), removing, relabelling and relocating
sources, and what readers, the search index sidecar and the schema versions make of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hashview.errors import LibraryError
from hashview.library import Library, editing
from hashview.library.legacy import write_schema1
from hashview.library.metadata import sources_where

MODEL = dict(model_name="hatdh-64", model_arch="hatdh", bits=64, model_sha256="a" * 64)
# (file name, tiles, label, patient); source 2 has no tiles
SOURCES = [("a.svs", 4, "tumor", "P1"), ("b.svs", 5, "stroma", "P2"), ("c.svs", 0, None, None),
           ("d.svs", 6, "tumor", "P1"), ("e.svs", 3, "lymph", None)]


def _make(path: Path, folder: str = "/data") -> Path:
    with Library.create(path, **MODEL) as lib:
        for i, (name, n, label, patient) in enumerate(SOURCES):
            codes = np.random.default_rng(i).integers(0, 256, (n, 8), dtype=np.uint8)
            lib.add_source({"path": f"{folder}/{name}", "fingerprint": f"fp-{name}",
                            "label": label, "patient_id": patient},
                           codes, np.arange(n) * 224, np.full(n, 448), np.full(n, 224))
    return path


def _state(path: Path) -> dict:
    with Library.open(path) as lib:
        table = lib.tile_table()
        labels = lib.label_names()
        return {
            "sources": [(s.path, s.name, s.fingerprint, s.label, s.patient_id, s.tile_count,
                         s.added) for s in lib.sources()],
            "codes": lib.codes(), "x": table["x"], "y": table["y"], "size": table["size"],
            "labels": [labels[i] if i >= 0 else None for i in table["label_id"]],
            "metadata": [lib.metadata(s.id) for s in lib.sources()],
            "generation": lib.generation, "version": lib.schema_version,
        }


def _tiles_of(state: dict, fingerprint: str) -> dict:
    start = 0
    for src in state["sources"]:
        if src[2] == fingerprint:
            rows = slice(start, start + src[5])
            return {k: state[k][rows] for k in ("codes", "x", "y", "size", "labels")}
        start += src[5]
    raise KeyError(fingerprint)


@pytest.fixture
def lib_path(tmp_path: Path) -> Path:
    return _make(tmp_path / "lib.h5")


# ------------------------------------------------------------------ metadata, schema 3
def test_case_metadata_round_trip_upgrades_a_schema_2_file(lib_path):
    before = _state(lib_path)
    assert before["version"] == 2  # appends and new libraries stay schema 2
    reader = Library.open(lib_path)
    result = editing.set_case_data(lib_path, {0: {"stain": "HE", "Site": "colon"},
                                              3: {"stain": "IHC", "patient": "P9"},
                                              1: {"label": "necrosis", "scanner": "Aperio"}})
    assert reader.has_changed()  # the app notices and reloads
    after = _state(lib_path)
    assert after["version"] == 3 and after["generation"] == before["generation"] + 1
    assert result.generation == after["generation"] and result.changed == 3
    assert after["metadata"] == [{"stain": "HE", "Site": "colon"}, {"scanner": "Aperio"}, {},
                                 {"stain": "IHC"}, {}]
    with Library.open(lib_path) as lib:
        assert lib.metadata_keys() == ["stain", "Site", "scanner"]
        assert lib.stats()["metadata_keys"] == ["stain", "Site", "scanner"]
        assert lib.source(3).patient_id == "P9" and lib.source(1).label == "necrosis"
        table = lib.metadata_table()
        assert len(table.rows) == 4  # the last source has none: no row stored for it
    # the new label reached the tiles of source 1; codes, positions and other labels did not move
    assert _tiles_of(after, "fp-b.svs")["labels"] == ["necrosis"] * 5
    np.testing.assert_array_equal(after["codes"], before["codes"])
    assert [s[:3] + s[5:] for s in after["sources"]] == [s[:3] + s[5:] for s in before["sources"]]
    # an empty value clears; keys no source uses any more disappear
    editing.set_case_data(lib_path, {1: {"scanner": ""}})
    with Library.open(lib_path) as lib:
        assert lib.metadata_keys() == ["stain", "Site"] and lib.metadata(1) == {}
    # an append to a schema-3 file keeps its metadata; the new source has none
    with Library.open(lib_path, "a") as lib:
        lib.add_source({"path": "/data/f.svs", "fingerprint": "fp-f"},
                       np.zeros((2, 8), np.uint8), [0, 1], [0, 0], [224, 224])
    with Library.open(lib_path) as lib:
        assert lib.schema_version == 3 and lib.metadata(0) == {"stain": "HE", "Site": "colon"}
        assert lib.metadata(5) == {}


def test_bad_metadata_keys_and_values_are_refused_before_writing(lib_path):
    before = _state(lib_path)
    for cases, reason in [({0: {"patient_id": "x"}}, "reserved"), ({0: {" x": "1"}}, "spaces"),
                          ({0: {"k": "a\0b"}}, "NUL"), ({0: {"k": "v" * 5000}}, "over 4096"),
                          ({9: {"k": "v"}}, "no source with id 9")]:
        with pytest.raises(LibraryError, match=reason):
            editing.set_case_data(lib_path, cases)
    assert _state(lib_path)["generation"] == before["generation"]


def test_sources_where_matches_label_patient_and_metadata(lib_path):
    editing.set_case_data(lib_path, {0: {"stain": "HE"}, 1: {"stain": "he "},
                                     3: {"stain": "IHC"}})
    with Library.open(lib_path) as lib:
        assert sources_where(lib, [("STAIN", "he")]) == {0, 1}
        assert sources_where(lib, [("stain", "he"), ("patient", "p2")]) == {1}
        assert sources_where(lib, [("label", "tumor")]) == {0, 3}
        assert sources_where(lib, [("patient_id", "P1"), ("stain", "ihc")]) == {3}
        assert sources_where(lib, [("stain", "")]) == {2, 4}  # no value
        with pytest.raises(LibraryError, match=r"no metadata key 'scanner' \(known: label, "
                                               r"patient, stain\)"):
            sources_where(lib, [("scanner", "x")])


# ------------------------------------------------------------------ remove, relabel, relocate
def test_removing_sources_keeps_the_others_exactly_and_a_removed_one_can_come_back(lib_path):
    editing.set_case_data(lib_path, {1: {"stain": "HE"}, 3: {"stain": "IHC"}})
    before = _state(lib_path)
    result = editing.remove_sources(lib_path, ["b.svs", 2])
    assert result.summary == "removed 2 sources (5 tiles); 3 sources, 13 tiles left"
    after = _state(lib_path)
    assert [s[2] for s in after["sources"]] == ["fp-a.svs", "fp-d.svs", "fp-e.svs"]
    for fp in ("fp-a.svs", "fp-d.svs", "fp-e.svs"):
        want, got = _tiles_of(before, fp), _tiles_of(after, fp)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{fp} {key}")
    assert after["metadata"] == [{}, {"stain": "IHC"}, {}]  # metadata followed the renumbering
    with Library.open(lib_path) as lib:
        assert "stroma" not in lib.label_names()  # no tile uses it any more
        table = lib.tile_table()
        assert table["source_id"].tolist() == [0] * 4 + [1] * 6 + [2] * 3
        assert not lib.contains("fp-b.svs")
    with Library.open(lib_path, "a") as lib:  # indexed again: a new source at the end
        codes = np.random.default_rng(1).integers(0, 256, (5, 8), dtype=np.uint8)
        rec = lib.add_source({"path": "/data/b.svs", "fingerprint": "fp-b.svs",
                              "label": "stroma"}, codes, np.arange(5) * 224,
                             np.full(5, 448), np.full(5, 224))
    assert rec.id == 3 and rec.tile_start == 13
    np.testing.assert_array_equal(_tiles_of(_state(lib_path), "fp-b.svs")["codes"],
                                  _tiles_of(before, "fp-b.svs")["codes"])


def test_relabelling_sources_and_tiles_changes_labels_only(lib_path):
    before = _state(lib_path)
    editing.relabel_sources(lib_path, ["/data/a.svs"], "normal")
    editing.relabel_tiles(lib_path, [4, 5], "")  # first two tiles of b.svs: unknown
    editing.relabel_tiles(lib_path, [6], "odd")
    after = _state(lib_path)
    assert after["labels"][:9] == ["normal"] * 4 + [None, None, "odd", "stroma", "stroma"]
    assert after["labels"][9:] == before["labels"][9:]
    assert after["sources"][0][3] == "normal" and after["sources"][1][3] == "stroma"
    for key in ("codes", "x", "y", "size"):
        np.testing.assert_array_equal(after[key], before[key])
    with pytest.raises(LibraryError, match="no tile with id 99"):
        editing.relabel_tiles(lib_path, [99], "x")


def test_relocate_rewrites_path_prefixes_and_says_which_files_are_there(tmp_path):
    path = _make(tmp_path / "lib.h5", folder="/old/place")
    new = tmp_path / "new"
    new.mkdir()
    (new / "a.svs").write_bytes(b"x")
    (new / "d.svs").write_bytes(b"x")
    result = editing.relocate(path, "/old/place/", new)
    assert sorted(result.details["found"]) == [str(new / "a.svs"), str(new / "d.svs")]
    assert len(result.details["missing"]) == 3 and "2 found there, 3 missing" in result.summary
    with Library.open(path) as lib:
        assert [s.path for s in lib.sources()] == [str(new / n) for n, *_ in SOURCES]
        assert lib.find_source(path=new / "a.svs").fingerprint == "fp-a.svs"
    # a folder that only shares a prefix of its name is not under it
    assert editing.relocate(path, str(new)[:-1], "/x").changed == 0


def test_sources_are_named_by_id_path_or_unambiguous_file_name(tmp_path):
    path = tmp_path / "lib.h5"
    with Library.create(path, **MODEL) as lib:
        for folder in ("/one", "/two"):
            lib.add_source({"path": f"{folder}/same.svs", "fingerprint": folder},
                           np.zeros((1, 8), np.uint8), [0], [0], [224])
    with pytest.raises(LibraryError, match=r"'same.svs' names 2 sources \(ids 0, 1\)"):
        editing.remove_sources(path, ["same.svs"])
    with pytest.raises(LibraryError, match="no source 'other.svs'"):
        editing.remove_sources(path, ["other.svs"])
    editing.remove_sources(path, ["/two/same.svs"])
    with Library.open(path) as lib:
        assert [s.path for s in lib.sources()] == ["/one/same.svs"]


def test_a_schema_1_library_is_edited_into_schema_3(lib_path, tmp_path):
    old = tmp_path / "v1.h5"
    with Library.open(lib_path) as lib:
        write_schema1(lib, old)
    editing.remove_sources(old, [0])
    with Library.open(old) as lib:
        assert lib.schema_version == 3 and lib.n_sources == 4 and lib.n_tiles == 14


_HOLD = textwrap.dedent("""
    import sys
    from hashview.library import Library
    with Library.open(sys.argv[1], "a"):
        print("open", flush=True)
        sys.stdin.readline()
""")


def test_a_library_open_for_writing_elsewhere_is_busy(lib_path):
    with Library.open(lib_path, "a"):
        with pytest.raises(LibraryError, match="already open for writing in this program"):
            editing.remove_sources(lib_path, [0])
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lib_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LibraryError) as busy:
            editing.relabel_sources(lib_path, [0], "x")
        assert str(busy.value).startswith(f"{lib_path}: busy: the library is open for writing")
    finally:
        holder.communicate("\n", timeout=60)
    assert _state(lib_path)["generation"] == 5


# ------------------------------------------------------------------ the search index sidecar
def test_a_sidecar_is_never_used_stale_after_a_removal_and_kept_after_a_relabel(tmp_path,
                                                                               monkeypatch):
    from test_sidecar import clustered_codes, make_library

    from hashview.search import Searcher, sidecar

    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    codes = clustered_codes(6000, np.random.default_rng(5))
    path = make_library(tmp_path / "lib.h5", codes)
    queries = sidecar.tuning_queries(codes, 64, n=20, seed=2)
    with Library.open(path) as lib:
        Searcher(lib).build_index()
    built = sidecar.sidecar_path(path).read_bytes()

    editing.relabel_sources(path, [1], "c")  # codes unchanged: the index stays valid
    with Library.open(path) as lib:
        kept = Searcher(lib)
    assert kept.index_kind == "ivf" and sidecar.sidecar_path(path).read_bytes() == built

    for removed in ([5], [0]):  # the last source (a prefix stays), then the first
        editing.remove_sources(path, removed)
        with Library.open(path) as lib:
            auto, exact = Searcher(lib), Searcher(lib, index="flat")
        assert auto.index_kind == "flat"  # the old index describes other codes
        assert auto.search(queries, k=10) == exact.search(queries, k=10)
        auto.build_index()  # rebuilt for the new codes; its hits are true tiles
        hits = auto.search(queries, k=10)
        with Library.open(path) as lib:
            now = lib.codes()
        for row, query in zip(hits, queries):
            ids = [h.tile_index for h in row]
            assert [h.distance for h in row] == np.unpackbits(
                np.bitwise_xor(now[ids], query), axis=1).sum(axis=1).tolist()


def test_the_documented_plain_h5py_reading_example_reads_schema_2_and_3(lib_path, monkeypatch):
    """Runs the example of docs/library-format.md ("Reading") on the file it describes."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "library-format.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(lib_path.parent)
    seen = {}
    exec(compile(example, "library-format.md", "exec"), seen)  # schema 2: no metadata
    assert seen["paths"][0] == "/data/a.svs" and "cases" not in seen
    editing.set_case_data(lib_path, {1: {"stain": "HE", "site": "lung"}})
    seen = {}
    exec(compile(example, "library-format.md", "exec"), seen)
    assert seen["cases"] == [{"stain": "", "site": ""}, {"stain": "HE", "site": "lung"}]
    assert seen["labels"] == ["tumor", "stroma", "lymph"] and len(seen["codes"]) == 18
    assert not [p for p in os.listdir(lib_path.parent) if p.endswith(".tmp")]


def test_a_float_library_keeps_its_descriptors_and_can_be_emptied(tmp_path):
    path = tmp_path / "float.h5"
    rng = np.random.default_rng(0)
    with Library.create(path, "lgffem-32", "lgffem", 32, "f" * 64, code_kind="float") as lib:
        for i in range(3):
            lib.add_source({"path": f"/d/{i}.svs", "fingerprint": f"f{i}"},
                           rng.normal(size=(4, 32)), np.arange(4), np.zeros(4), np.full(4, 224))
        stored = lib.codes()
    editing.remove_sources(path, [1])
    with Library.open(path) as lib:
        assert lib.code_kind == "float"
        np.testing.assert_array_equal(lib.codes(), np.concatenate([stored[:4], stored[8:]]))
    editing.remove_sources(path, [0, 1])
    with Library.open(path) as lib:
        assert (lib.n_sources, lib.n_tiles, lib.label_names()) == (0, 0, [])
