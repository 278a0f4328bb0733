"""Library file: roundtrip, duplicates, labels, model checks, bad files and crash safety."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hashview.errors import LibraryError, SourceError
from hashview.library import Library, ModelInfo, SourceRecord, fingerprint_file
from hashview.library.files import CONCURRENT_READS

SHA_A = "a" * 64
SHA_B = "b" * 64
MODEL_A = dict(model_name="hatdh-64", model_arch="hatdh", bits=64, model_sha256=SHA_A)


def make_codes(n: int, nbytes: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def add(lib: Library, name: str, n: int, seed: int = 0, **fields) -> SourceRecord:
    record = {"path": f"/data/{name}", "fingerprint": f"fp-{name}", **fields}
    return lib.add_source(record, make_codes(n, lib.code_bytes, seed), np.arange(n) * 224,
                          np.full(n, 448), np.full(n, 224))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lib_path(tmp_path: Path) -> Path:
    return tmp_path / "lib.h5"


def test_create_append_reopen_roundtrip(lib_path):
    with Library.create(lib_path, **MODEL_A, tile_size=256, target_mpp=0.25) as lib:
        a = add(lib, "a.svs", 5, seed=1, label="tumor", mpp=0.25, width=1000, height=800,
                byte_size=123, mtime=1.5, patient_id="P1")
        b = lib.add_source({"path": "/data/b.png", "fingerprint": "fp-b", "kind": "patch"},
                           make_codes(3, seed=2), [0, 1, 2], [0, 0, 0], [10, 10, 10],
                           tile_labels=["stroma", None, "tumor"])
        empty = add(lib, "empty.svs", 0)
        assert (a.id, b.id, empty.id) == (0, 1, 2)
        assert (b.tile_start, b.tile_count, empty.tile_start, empty.tile_count) == (5, 3, 8, 0)

    with Library.open(lib_path) as lib:
        assert (lib.bits, lib.model_name, lib.model_arch, lib.model_sha256) == (
            64, "hatdh-64", "hatdh", SHA_A)
        assert (lib.tile_size, lib.target_mpp, lib.n_tiles, lib.n_sources) == (256, 0.25, 8, 3)
        assert lib.created.endswith("Z") and lib.updated >= lib.created
        codes = lib.codes()
        assert codes.dtype == np.uint8 and codes.shape == (8, 8)
        np.testing.assert_array_equal(codes[:5], make_codes(5, seed=1))
        np.testing.assert_array_equal(codes[5:], make_codes(3, seed=2))
        table = lib.tile_table()
        assert table["source_id"].tolist() == [0] * 5 + [1] * 3
        assert table["x"].tolist()[:5] == [0, 224, 448, 672, 896]
        assert lib.label_names() == ["tumor", "stroma"]
        assert table["label_id"].tolist() == [0] * 5 + [1, -1, 0]

        src = lib.source(0)
        assert src.path == "/data/a.svs" and src.name == "a.svs" and src.kind == "slide"
        assert (src.mpp, src.width, src.height, src.byte_size, src.mtime) == (
            0.25, 1000, 800, 123, 1.5)
        assert (src.label, src.patient_id, src.status, src.mpp_assumed) == (
            "tumor", "P1", "complete", False)
        b = lib.source(1)
        assert (b.kind, b.mpp, b.label, b.patient_id) == ("patch", None, None, None)
        assert lib.sources()[2].tile_count == 0

        tile = lib.tile(6)
        assert (tile.index, tile.source_id, tile.x, tile.size, tile.label) == (6, 1, 1, 10, None)
        assert lib.find_source(fingerprint="fp-b").id == 1
        assert lib.find_source(path="/data/a.svs").id == 0
        assert lib.find_source(fingerprint="nope") is None

        stats = lib.stats()
        assert stats["labels"] == {"tumor": 6, "stroma": 1}
        assert stats["unlabeled_tiles"] == 1 and stats["sources_without_tiles"] == 1
        assert stats["n_tiles"] == 8 and stats["code_bytes_per_tile"] == 8
        assert stats["file_size"] == lib_path.stat().st_size
        with pytest.raises(LibraryError, match="read-only"):
            add(lib, "c.svs", 1)

    with h5py.File(lib_path, "r") as f:  # the documented plain-h5py reading path
        assert f.attrs["format"] == "hashview-library" and f.attrs["schema_version"] == 2
        assert f["sources/status"][:].tolist() == [1] * 3
        assert f["tiles/x"].dtype == np.int32 and "size" not in f["tiles"]
        assert f["tiles/codes"].chunks is not None and f["tiles/codes"].maxshape == (None, 8)


def test_unicode_paths_and_labels(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        add(lib, "Präparat µ.svs", 2, label="Tumör")
    with Library.open(lib_path) as lib:
        assert lib.source(0).name == "Präparat µ.svs" and lib.label_names() == ["Tumör"]


def test_create_refuses_existing_file_unless_overwrite(lib_path):
    Library.create(lib_path, **MODEL_A).close()
    with pytest.raises(LibraryError, match="already exists") as e:
        Library.create(lib_path, **MODEL_A)
    assert str(lib_path) in str(e.value)
    with Library.create(lib_path, **MODEL_A, overwrite=True) as lib:
        assert lib.n_tiles == 0


def test_create_accepts_model_info_card_or_dict(tmp_path):
    class Card:  # duck-typed like hashview.models.ModelCard
        name, arch, bits, sha256 = "card", "dch", 32, SHA_B

    for i, model in enumerate([ModelInfo("m", "hatdh", 64, SHA_A, 224, 0.5), Card(),
                               {"name": "d", "arch": "x", "bits": 16, "sha256": SHA_A}]):
        with Library.create(tmp_path / f"{i}.h5", model) as lib:
            assert lib.bits in (64, 32, 16) and lib.model_sha256 in (SHA_A, SHA_B)
    with pytest.raises(LibraryError, match="multiple of 8"):
        Library.create(tmp_path / "bad.h5", "m", "a", 12, SHA_A)


def test_duplicate_fingerprint_is_not_added_again(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        first = add(lib, "a.svs", 4)
        assert lib.contains("fp-a.svs") and not lib.contains("fp-other")
        again = lib.add_source({"path": "/elsewhere/copy.svs", "fingerprint": "fp-a.svs"},
                               make_codes(9), np.zeros(9), np.zeros(9), np.ones(9))
        assert again == first
        assert (lib.n_sources, lib.n_tiles) == (1, 4)


def test_bad_tiles_are_refused_and_nothing_is_stored(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        add(lib, "ok.svs", 2)
        rec = {"path": "/x.svs", "fingerprint": "fp-x"}
        bad_calls = [
            (make_codes(3).astype(np.int16), range(3), range(3), [1] * 3, None),
            (make_codes(3, nbytes=4), range(3), range(3), [1] * 3, None),
            (make_codes(3), range(2), range(3), [1] * 3, None),
            (make_codes(3), [0.5, 1, 2], range(3), [1] * 3, None),
            (make_codes(3), range(3), range(3), [0] * 3, None),
            (make_codes(3), range(3), range(3), [1] * 3, ["a"]),
            (make_codes(3), range(3), range(3), [1, 2, 1], None),  # one size per source
            (make_codes(3), [0, 1, 2**31], range(3), [1] * 3, None),  # beyond int32
            (make_codes(1), [0], [0], [1], ["bad\0label"]),
        ]
        for codes, xs, ys, sizes, labels in bad_calls:
            with pytest.raises(LibraryError) as e:
                lib.add_source(rec, codes, list(xs), list(ys), sizes, tile_labels=labels)
            assert "\n" not in str(e.value) and str(lib_path) in str(e.value)
        with pytest.raises(LibraryError, match="fingerprint"):
            lib.add_source({"path": "/y.svs"}, make_codes(1), [0], [0], [1])
        assert (lib.n_sources, lib.n_tiles, lib.label_names()) == (1, 2, [])


def test_model_mismatch_refused_and_file_unchanged(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        add(lib, "a.svs", 3, label="tumor")
    before = file_digest(lib_path)
    for other in (dict(MODEL_A, model_name="dch-64", model_sha256=SHA_B),
                  dict(MODEL_A, model_name="hatdh-32", bits=32)):
        with pytest.raises(LibraryError) as e:
            Library.open_or_create(lib_path, **other)
        msg = str(e.value)
        assert msg.startswith(f"{lib_path}: made with model 'hatdh-64' (64 bits")
        assert f"cannot add codes from model '{other['model_name']}'" in msg and "\n" not in msg
    assert file_digest(lib_path) == before
    with Library.open(lib_path) as lib:
        assert (lib.n_sources, lib.n_tiles) == (1, 3)
    # The same model (another name for the same weights is fine) appends; an existing library
    # keeps its own tiling parameters.
    with Library.open_or_create(lib_path, **dict(MODEL_A, model_name="renamed"),
                                target_mpp=0.25) as lib:
        assert lib.target_mpp == 0.5
        add(lib, "b.svs", 2)
        assert (lib.n_sources, lib.n_tiles) == (2, 5)


def test_open_or_create_creates_missing_file(lib_path):
    with Library.open_or_create(lib_path, **MODEL_A) as lib:
        assert lib.n_tiles == 0 and lib.mode == "a"
    assert lib_path.exists()


def _text(p):
    p.write_text("hello, not a library\n")


def _empty(p):
    p.write_bytes(b"")


def _plain_h5(p):
    with h5py.File(p, "w") as f:
        f["data"] = np.arange(10)


def _foreign_format(p):
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "something-else"


def _future(p):
    Library.create(p, **MODEL_A).close()
    with h5py.File(p, "a") as f:
        f.attrs["schema_version"] = 9


def _truncated(p):
    with Library.create(p, **MODEL_A) as lib:
        for i in range(3):
            add(lib, f"s{i}.svs", 3000, seed=i)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _missing(p):
    pass


def _folder(p):
    p.mkdir()


@pytest.mark.parametrize("make, reason", [
    (_text, "not an HDF5 file"),
    (_empty, "not an HDF5 file (empty file)"),
    (_plain_h5, "not a HashView library (no format attribute)"),
    (_foreign_format, "not a HashView library (format is 'something-else')"),
    (_future, "schema version 9 is newer than this HashView supports (3); upgrade HashView"),
    (_truncated, "truncated or corrupt"),
    (_missing, "no such file"),
    (_folder, "is a folder"),
])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_bad_files_give_one_line_errors(tmp_path, make, reason, mode):
    path = tmp_path / "lib.h5"
    make(path)
    with pytest.raises(LibraryError) as e:
        Library.open(path, mode)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and reason in msg and "\n" not in msg


def test_open_for_writing_on_read_only_file(lib_path):
    Library.create(lib_path, **MODEL_A).close()
    os.chmod(lib_path, 0o444)
    try:
        if os.access(lib_path, os.W_OK):
            pytest.skip("running as a user who can write read-only files (root)")
        with pytest.raises(LibraryError, match="cannot open for writing"):
            Library.open(lib_path, "a")
        with Library.open(lib_path, "r") as lib:
            assert lib.n_tiles == 0
    finally:
        os.chmod(lib_path, 0o644)


def _simulate_interrupted_append(path: Path) -> None:
    """What a crash leaves: tiles written, source row partly written (status not set)."""
    with h5py.File(path, "a") as f:
        n = len(f["tiles/codes"])
        for name in ("codes", "source_id", "x", "y", "label_id"):
            ds = f["tiles"][name]
            ds.resize(n + 7, axis=0)
            ds[n:] = 99
        for name in ("text_end", "tile_start", "tile_count"):
            ds = f["sources"][name]
            ds.resize(len(ds) + 1, axis=0)
        text = f["sources/text"]
        orphan = np.frombuffer(b"/x\0\0fp-orphan\0\0\0", np.uint8)
        text.resize(len(text) + len(orphan), axis=0)
        text[-len(orphan):] = orphan
        f["sources/text_end"][-1] = len(text)
        f["sources/tile_count"][-1] = 7


def test_interrupted_append_is_ignored_and_repaired(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        add(lib, "a.svs", 4, seed=1)
        add(lib, "b.svs", 5, seed=2)
    _simulate_interrupted_append(lib_path)

    with Library.open(lib_path, "r") as lib:  # read-only: ignored, file untouched
        assert (lib.n_sources, lib.n_tiles, len(lib.codes())) == (2, 9, 9)
        assert not lib.contains("fp-orphan")
    with h5py.File(lib_path, "r") as f:
        assert len(f["tiles/codes"]) == 16

    with Library.open(lib_path, "a") as lib:  # writing: orphans cut off, append continues
        c = add(lib, "c.svs", 3, seed=3)
        assert (c.id, c.tile_start, c.tile_count) == (2, 9, 3)
    with Library.open(lib_path) as lib:
        assert (lib.n_sources, lib.n_tiles) == (3, 12)
        np.testing.assert_array_equal(lib.codes()[9:], make_codes(3, seed=3))
        assert lib.tile_table()["source_id"].tolist() == [0] * 4 + [1] * 5 + [2] * 3
        assert [s.fingerprint for s in lib.sources()] == ["fp-a.svs", "fp-b.svs", "fp-c.svs"]
    with h5py.File(lib_path, "r") as f:
        assert {len(f["tiles"][n]) for n in ("codes", "x", "label_id")} == {12}
        assert {len(f["sources"][n]) for n in ("text_end", "status", "tile_count")} == {3}


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from hashview.library import Library
    lib = Library.create(sys.argv[1], "m", "hatdh", 64, "a" * 64)
    print("ready", flush=True)
    for i in range(10**6):
        n = 500 + (i * 37) % 900
        codes = np.random.default_rng(i).integers(0, 256, (n, 8), dtype=np.uint8)
        lib.add_source({"path": f"/s{i}", "fingerprint": f"fp{i}", "label": f"l{i % 3}"},
                       codes, np.arange(n), np.full(n, i), np.full(n, 224))
        print("added", i, flush=True)
""")


@pytest.mark.parametrize("kill_after", [1, 4])
def test_sigkill_during_appends_leaves_a_consistent_library(tmp_path, kill_after):
    path = tmp_path / "killed.h5"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(kill_after):
            assert proc.stdout.readline().startswith("added")
    finally:
        proc.kill()  # SIGKILL, somewhere inside an append
        proc.wait()
    with Library.open(path, "a") as lib:
        n_sources = lib.n_sources
        assert n_sources >= kill_after
        codes, table = lib.codes(), lib.tile_table()
        for s in lib.sources():
            n = 500 + (s.id * 37) % 900
            assert (s.fingerprint, s.tile_count) == (f"fp{s.id}", n)
            np.testing.assert_array_equal(
                codes[s.tile_start:s.tile_start + n],
                np.random.default_rng(s.id).integers(0, 256, (n, 8), dtype=np.uint8))
            assert (table["y"][s.tile_start:s.tile_start + n] == s.id).all()
        add(lib, "after.svs", 5)
        assert lib.n_sources == n_sources + 1


def test_fingerprint_file(tmp_path):
    small_a, small_b, small_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    small_a.write_bytes(b"x" * 1000)
    small_b.write_bytes(b"x" * 1000)
    small_c.write_bytes(b"x" * 999 + b"y")
    assert fingerprint_file(small_a) == fingerprint_file(small_b) != fingerprint_file(small_c)
    assert len(fingerprint_file(small_a)) == 64

    big = bytearray(np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes())
    p = tmp_path / "big.svs"
    p.write_bytes(big)
    base = fingerprint_file(p)
    assert fingerprint_file(p) == base
    for offset in (10, len(big) // 2, len(big) - 10):  # changes in sampled regions are seen
        changed = bytearray(big)
        changed[offset] ^= 0xFF
        p.write_bytes(changed)
        assert fingerprint_file(p) != base
    p.write_bytes(big + b"\0")  # so are size changes
    assert fingerprint_file(p) != base
    with pytest.raises(SourceError, match="cannot read"):
        fingerprint_file(tmp_path / "missing.svs")


def test_second_writer_in_the_same_process_is_refused(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        with pytest.raises(LibraryError, match="already open for writing"):
            Library.open(lib_path, "a")
        with Library.open(lib_path, "r") as reader:
            assert reader.n_tiles == 0
    with Library.open(lib_path, "a") as lib:  # released on close
        assert lib.mode == "a"


def test_add_sources_commits_a_batch(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        add(lib, "old.svs", 2)
        items = [({"path": f"/p/{i}.png", "fingerprint": f"fp{i}", "kind": "patch",
                   "label": "ab"[i % 2]}, make_codes(1, seed=i), [0], [0], [224])
                 for i in range(50)]
        items.append(({"path": "/p/dup.png", "fingerprint": "fp3", "kind": "patch"},
                      make_codes(1), [0], [0], [224]))  # same content as item 3
        items.append(({"path": "/p/again.svs", "fingerprint": "fp-old.svs"},
                      make_codes(1), [0], [0], [224]))  # already stored
        stored = lib.add_sources(items)
        assert [s.id for s in stored[:50]] == list(range(1, 51))
        assert stored[50] == stored[3] and stored[51].id == 0
        assert (lib.n_sources, lib.n_tiles) == (51, 52)
    with Library.open(lib_path) as lib:
        assert lib.source(50).tile_start == 51 and lib.tile(51).label == "b"
        np.testing.assert_array_equal(lib.codes()[2:], np.concatenate(
            [make_codes(1, seed=i) for i in range(50)]))
        assert lib.stats()["labels"] == {"a": 25, "b": 25}


# ------------------------------------------------------------------ schema 1, upgrade, footprint
SCHEMA1_FIXTURE = Path(__file__).parent / "data" / "library-schema1.h5.gz"


def _schema1_copy(tmp_path: Path) -> Path:
    """A library written by HashView 0.1 (schema 1): 3 sources, 8 tiles, 2 labels."""
    path = tmp_path / "old.h5"
    path.write_bytes(gzip.decompress(SCHEMA1_FIXTURE.read_bytes()))
    return path


def _contents(lib: Library) -> tuple:
    table = lib.tile_table()
    labels = lib.label_names()
    return ([(s.path, s.name, s.fingerprint, s.kind, s.label, s.patient_id, s.mpp, s.width,
              s.height, s.byte_size, s.mtime, s.mpp_assumed, s.tile_start, s.tile_count, s.added)
             for s in lib.sources()], lib.codes().tolist(),
            {k: v.tolist() for k, v in table.items() if k != "label_id"},
            [labels[i] if i >= 0 else None for i in table["label_id"]], labels)


def test_schema1_library_opens_for_reading(tmp_path):
    path = _schema1_copy(tmp_path)
    before = file_digest(path)
    with Library.open(path) as lib:
        assert (lib.schema_version, lib.n_sources, lib.n_tiles, lib.code_kind) == (1, 3, 8, "binary")
        assert (lib.tile_size, lib.target_mpp, lib.label_names()) == (256, 0.25, ["tumor", "stroma"])
        assert lib.source(0).patient_id == "P1" and lib.source(1).kind == "patch"
        assert lib.tile_table()["x"].tolist() == [0, 224, 448, 672, 896, 0, 1, 2]
        assert lib.tile(6) == lib.tile(6).__class__(6, 1, 1, 0, 10, None)
        assert lib.stats()["labels"] == {"tumor": 6, "stroma": 1}
        assert lib.codes().shape == (8, 8)
        from hashview.search import Searcher

        searcher = Searcher(lib)
        hits = searcher.search(lib.codes()[6], k=1)[0]
    assert (hits[0].tile_index, hits[0].distance, hits[0].source_name) == (6, 0, "b.png")
    assert file_digest(path) == before  # reading never writes


def test_appending_upgrades_schema1_in_place(tmp_path):
    path = _schema1_copy(tmp_path)
    with Library.open(path) as lib:
        old = _contents(lib)
    with Library.open(path, "a") as lib:
        assert lib.schema_version == 2 and _contents(lib) == old
        add(lib, "new.svs", 2, label="stroma")
    with Library.open(path) as lib:
        assert lib.schema_version == 2 and lib.n_sources == 4
        contents = _contents(lib)
        assert contents[0][:3] == old[0] and contents[1][:8] == old[1]
        assert contents[4] == ["tumor", "stroma"] and lib.tile(9).label == "stroma"
    with h5py.File(path, "r") as f:
        assert f.attrs["upgraded_from_schema"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["old.h5"]


def test_failed_upgrade_leaves_the_schema1_file_untouched(tmp_path, monkeypatch):
    path = _schema1_copy(tmp_path)
    before = file_digest(path)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hashview.library.store.os.replace", failing_replace)
    with pytest.raises(LibraryError) as e:
        Library.open(path, "a")
    assert str(e.value) == (f"{path}: cannot upgrade to schema 2 (no space left on device); the "
                            "schema-1 file is unchanged")
    assert file_digest(path) == before and [p.name for p in tmp_path.iterdir()] == ["old.h5"]


def test_write_schema1_round_trip(tmp_path):
    from hashview.library.legacy import write_schema1

    with Library.create(tmp_path / "new.h5", **MODEL_A) as lib:
        add(lib, "a.svs", 5, seed=1, label="tumor", patient_id="P1", mpp=0.25)
        lib.add_source({"path": "/p/b.png", "fingerprint": "fp-b", "kind": "patch"},
                       make_codes(3, seed=2), [0, 1, 2], [0, 0, 0], [10, 10, 10],
                       tile_labels=["stroma", None, "tumor"])
        add(lib, "empty.svs", 0)
        write_schema1(lib, tmp_path / "old.h5")
        new = _contents(lib)
    with Library.open(tmp_path / "old.h5") as old:
        assert old.schema_version == 1 and _contents(old) == new


def test_slide_tiles_take_at_most_24_bytes_each_at_64_bits(lib_path):
    n_slides, per_slide = 20, 10_000
    with Library.create(lib_path, **MODEL_A) as lib:
        for i in range(n_slides):
            add(lib, f"slide-{i}.svs", per_slide, seed=i, label="tumor")
    assert lib_path.stat().st_size / (n_slides * per_slide) <= 24.0


def test_patch_sources_cost_a_few_hundred_bytes(lib_path):
    n = 2000
    with Library.create(lib_path, **MODEL_A) as lib:
        lib.add_sources([({"path": f"/data/idc/{i // 50}/{i}_idx5_x1001_y1001_class0.png",
                           "fingerprint": hashlib.sha256(str(i).encode()).hexdigest(),
                           "kind": "patch", "label": "IDC", "patient_id": str(i // 50)},
                          make_codes(1, seed=i), [0], [0], [50]) for i in range(n)])
    assert lib_path.stat().st_size / n < 300  # schema 1: over 2,000


# ------------------------------------------------------------------ float descriptors
class FloatCard:  # duck-typed like a ModelCard of a float-descriptor model
    name, arch, bits, sha256, code_kind = "lgffem", "lgffem", 16, SHA_B, "float"


def test_float_library_round_trip(lib_path):
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(7, 16)).astype(np.float32)
    with Library.create(lib_path, FloatCard()) as lib:
        assert (lib.code_kind, lib.bits, lib.code_bytes) == ("float", 16, 32)
        lib.add_source({"path": "/s.svs", "fingerprint": "fp-s"}, descriptors, range(7),
                       range(7), [224] * 7)
    with Library.open(lib_path) as lib:
        codes = lib.codes()
        assert codes.dtype == np.float32 and codes.shape == (7, 16)
        np.testing.assert_array_equal(codes, descriptors.astype(np.float16).astype(np.float32))
        assert lib.model.describe().startswith("model 'lgffem' (16-d float")
        assert lib.stats()["code_kind"] == "float"
    with h5py.File(lib_path, "r") as f:
        assert f.attrs["code_kind"] == "float" and f["tiles/codes"].dtype == np.float16
    with Library.open_or_create(lib_path, FloatCard()) as lib:  # same model appends
        lib.add_source({"path": "/t.svs", "fingerprint": "fp-t"}, descriptors[:2], [0, 1],
                       [0, 0], [224, 224])
        assert lib.n_tiles == 9


def test_bad_float_descriptors_are_refused(lib_path):
    with Library.create(lib_path, "m", "lgffem", 4, SHA_A, code_kind="float") as lib:
        rec = {"path": "/x.svs", "fingerprint": "fp-x"}
        for codes, reason in [(np.ones((2, 5)), r"shape \(n, 4\)"),
                              (np.full((2, 4), np.inf), "finite"),
                              (np.full((2, 4), 1e6), "float16 range"),
                              (np.array([["a"] * 4] * 2), "must be numbers")]:
            with pytest.raises(LibraryError, match=reason):
                lib.add_source(rec, codes, [0, 1], [0, 0], [1, 1])
        assert lib.n_sources == 0
    with pytest.raises(LibraryError, match="code_kind must be"):
        Library.create(lib_path.with_name("k.h5"), "m", "x", 4, SHA_A, code_kind="ternary")
    # binary libraries are still created from a card without code_kind
    with Library.create(lib_path.with_name("b.h5"), **MODEL_A) as lib:
        assert lib.code_kind == "binary"


def test_generation_counts_commits(lib_path):
    with Library.create(lib_path, **MODEL_A) as lib:
        assert lib.generation == 0
        add(lib, "a.svs", 2)
        lib.add_sources([])  # nothing to commit
        add(lib, "b.svs", 0)
        assert lib.generation == Library.current_generation(lib_path) == 2
    with Library.open(lib_path) as lib:
        assert lib.generation == 2 and not lib.has_changed()
    lib_path.unlink()
    assert lib.has_changed()


# ------------------------------------------------------------------ stale temporary files
@pytest.mark.skipif(not CONCURRENT_READS, reason="needs Linux OFD locks")
def test_stale_temporaries_of_a_killed_creation_are_removed(tmp_path):
    lib_path = tmp_path / "lib.h5"
    stale = [tmp_path / "lib.h5.a1b2c3d4.tmp", tmp_path / "lib.h5.zz_9XY_0.tmp"]
    others = [tmp_path / "lib.h5.notes.txt", tmp_path / "other.h5.a1b2c3d4.tmp",
              tmp_path / "lib.h5.toolongname.tmp"]
    for p in (*stale, *others):
        p.write_bytes(b"\x89HDF partial")
    # a temporary that a live process is still building (it holds the writer lock)
    live = tmp_path / "lib.h5.livelive.tmp"
    live.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from hashview.library.files import FileLocks, WRITER_BYTE
            locks = FileLocks(sys.argv[1], writable=True)
            locks.acquire(WRITER_BYTE, exclusive=True)
            print("locked", flush=True)
            sys.stdin.readline()
        """), str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    try:
        assert holder.stdout.readline().strip() == "locked"
        Library.create(lib_path, **MODEL_A).close()
        assert not any(p.exists() for p in stale)
        assert live.exists() and all(p.exists() for p in others)
    finally:
        holder.kill()  # SIGKILL while "building": its temporary is now stale
        holder.wait()
    with Library.open(lib_path, "r"):  # reading never deletes anything
        assert live.exists()
    with Library.open(lib_path, "a"):  # opening for writing cleans up too
        pass
    assert not live.exists() and all(p.exists() for p in others)
