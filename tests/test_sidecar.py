"""Approximate indexes, the automatic choice, the sidecar file, and float (cosine) libraries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from _mounts import small_disk  # noqa: F401  (a fixture)
from conftest import KATHER
from hashview.search import sidecar
from hashview.cli import main
from hashview.code_kinds import tie_keys
from hashview.errors import LibraryError
from hashview.library import Library
from hashview.search import Searcher

BITS, N_SOURCES, PER_SOURCE = 64, 6, 2000


def clustered_codes(n: int, rng, n_centres: int = 60, flip: float = 0.05) -> np.ndarray:
    """Codes scattered around a few centres, as real model codes are (not uniform random)."""
    centres = rng.integers(0, 256, (n_centres, BITS // 8), dtype=np.uint8)
    flips = np.packbits(rng.random((n, BITS)) < flip, axis=1)
    return centres[rng.integers(0, n_centres, n)] ^ flips


def popcount_distances(codes, query):
    return np.unpackbits(np.bitwise_xor(codes, query), axis=1).sum(axis=1)


def make_library(path, codes, sha="e" * 64):
    with Library.create(path, "m64", "dch", BITS, sha) as lib:
        per = len(codes) // N_SOURCES
        for s in range(N_SOURCES):
            block = codes[s * per:(s + 1) * per]
            lib.add_source({"path": f"/s/{s}.svs", "fingerprint": f"f{s}"}, block,
                           np.arange(len(block)), np.zeros(len(block)), np.full(len(block), 224),
                           tile_labels=["a" if s % 2 else "b"] * len(block))
    return path


@pytest.fixture(scope="module")
def codes():
    return clustered_codes(N_SOURCES * PER_SOURCE, np.random.default_rng(3))


@pytest.fixture(scope="module")
def queries(codes):
    return sidecar.tuning_queries(codes, BITS, n=40, seed=11)


@pytest.fixture()
def library(tmp_path, codes):
    return make_library(tmp_path / "lib.h5", codes)


def test_choice_is_exact_below_the_limit_and_ivf_above():
    limit = sidecar.EXACT_LIMIT_BITS
    assert sidecar.choose_kind(limit // 64 - 1, 64) == "flat"
    assert sidecar.choose_kind(limit // 64, 64) == "ivf"
    assert sidecar.choose_kind(limit // 128, 128) == "ivf"
    assert sidecar.choose_kind(10 ** 8, 2048, "float") == "flat"


@pytest.mark.parametrize("kind", ["ivf", "multihash"])
def test_built_index_reaches_the_recall_target(codes, queries, kind):
    built = sidecar.build_binary_index(codes, BITS, kind)
    assert built.recall >= sidecar.TARGET_RECALL and built.n_indexed == len(codes)
    # measured again on other queries, from the index itself
    d, i = built.index.search(queries, 10)
    exact = np.sort(np.stack([popcount_distances(codes, q) for q in queries]), axis=1)[:, :10]
    assert sidecar.tie_aware_recall(exact, d, i, 10) >= 0.95


def test_auto_searcher_is_exact_until_the_index_is_built(library, codes, queries, monkeypatch):
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    with Library.open(library) as lib:
        searcher = Searcher(lib)
    assert searcher.wanted_kind == "ivf" and searcher.index_kind == "flat"
    assert searcher.needs_index_build()
    exact = searcher.search(queries, k=10)
    built = searcher.build_index()
    assert searcher.index_kind == "ivf" and not searcher.needs_index_build()
    assert searcher.sidecar_path.exists() and built.params["nprobe"] >= 1
    approx = searcher.search(queries, k=10)
    hits_within = [sum(h.distance <= e[-1].distance for h in a) for a, e in zip(approx, exact)]
    assert np.mean(hits_within) / 10 >= 0.95
    for hits, query in zip(approx, queries):  # (distance, tie key) order, true distances
        assert [(h.distance, h.tile_index) for h in hits] == sorted(
            ((h.distance, h.tile_index) for h in hits),
            key=lambda pair: (pair[0], int(tie_keys(pair[1]))))
        ids = [h.tile_index for h in hits]
        assert [h.distance for h in hits] == popcount_distances(codes[ids], query).tolist()
    # filtered searches stay exact
    filtered = searcher.search(queries, k=10, labels={"a"})
    with Library.open(library) as lib:
        exact_searcher = Searcher(lib, index="flat")
    assert filtered == exact_searcher.search(queries, k=10, labels={"a"})
    # a new searcher takes the index from the sidecar instead of rebuilding it
    with Library.open(library) as lib:
        reopened = Searcher(lib)
    assert reopened.index_kind == "ivf" and reopened.index_info["params"] == built.params
    assert reopened.search(queries, k=10) == approx


def test_stale_sidecar_is_ignored_and_a_grown_library_reuses_it(tmp_path, codes, monkeypatch):
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    path = make_library(tmp_path / "lib.h5", codes[:9000])
    with Library.open(path) as lib:
        Searcher(lib).build_index()
    with Library.open(path, "a") as lib:  # appended tiles: the first codes are unchanged
        lib.add_source({"path": "/s/new.svs", "fingerprint": "new"}, codes[9000:],
                       np.arange(3000), np.zeros(3000), np.full(3000, 224))
    with Library.open(path) as lib:
        grown = Searcher(lib)
    assert grown.index_kind == "ivf" and grown._approximate.index.ntotal == 12000
    assert any("added" in note for note in grown.index_notes)
    # a library of other codes under the same name: the sidecar does not describe it
    other = make_library(tmp_path / "other.h5", clustered_codes(9000, np.random.default_rng(9)))
    sidecar.sidecar_path(path).rename(sidecar.sidecar_path(other))
    with Library.open(other) as lib:
        fresh = Searcher(lib)
    assert fresh.index_kind == "flat" and fresh.needs_index_build()


@pytest.fixture(scope="module")
def indexed_library(tmp_path_factory, codes):
    """A library and the bytes of its valid IVF sidecar (built once for the damage tests)."""
    path = make_library(tmp_path_factory.mktemp("corrupt") / "lib.h5", codes)
    with Library.open(path) as lib:
        Searcher(lib, index="ivf").build_index()
    return path, sidecar.sidecar_path(path).read_bytes()


@pytest.mark.parametrize("damage", ["magic", "truncate", "payload", "header"])
def test_corrupt_sidecar_is_one_line_error_and_search_falls_back(indexed_library, queries,
                                                                monkeypatch, damage):
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    library, valid = indexed_library
    side = sidecar.sidecar_path(library)
    data = bytearray(valid)
    if damage == "magic":
        data[:8] = b"PICKLE!!"
    elif damage == "truncate":
        data = data[:-100]
    elif damage == "payload":
        data[-50] ^= 0xFF
    else:
        data[16:20] = b"\xff\xfe{["
    side.write_bytes(bytes(data))
    with Library.open(library) as lib:
        identity = sidecar.Identity.of(lib.model_sha256, BITS, lib.codes())
        with pytest.raises(LibraryError) as error:
            sidecar.load_sidecar(side, identity)
        searcher = Searcher(lib)
    message = str(error.value)
    assert message.startswith(str(side)) and "\n" not in message
    assert searcher.index_kind == "flat" and searcher.needs_index_build()
    assert "ignored" in searcher.index_notes[0]
    assert len(searcher.search(queries, k=10)[0]) == 10


@pytest.fixture()
def copied_library(indexed_library, tmp_path, monkeypatch):
    """A copy of the indexed library, treated as large so that it wants its sidecar; and the
    sidecar's path (for a test to write)."""
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    library = tmp_path / "lib.h5"
    shutil.copy(indexed_library[0], library)
    return library, sidecar.sidecar_path(library)


def with_header(valid: bytes, change=None, raw: dict | None = None) -> bytes:
    """The sidecar ``valid`` with its JSON header changed by ``change(header)``; string values
    ``"@RAW:<text>"`` are replaced by ``<text>`` unquoted (JSON that json.dumps cannot write)."""
    (length,) = struct.unpack("<Q", valid[8:16])
    header = json.loads(valid[16:16 + length])
    if change is not None:
        change(header)
    text = json.dumps(header)
    for placeholder, replacement in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), replacement)
    head = text.encode()
    return sidecar.MAGIC + struct.pack("<Q", len(head)) + head + valid[16 + length:]


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(header):
        target = header
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def _drop(*keys):
    def change(header):
        target = header
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


BAD_HEADERS = {
    "nprobe negative": dict(change=_set("params", "nprobe", -1)),
    "nprobe a string": dict(change=_set("params", "nprobe", "x")),
    "nprobe a bool": dict(change=_set("params", "nprobe", True)),
    "nprobe huge": dict(change=_set("params", "nprobe", 10 ** 30)),
    "nprobe above nlist": dict(
        change=lambda h: h["params"].update(nprobe=h["params"]["nlist"] + 1)),
    "nlist a float": dict(change=_set("params", "nlist", 16.0)),
    "nlist not the index's": dict(
        change=lambda h: h["params"].update(nlist=h["params"]["nlist"] * 2, nprobe=1)),
    "bits nested": dict(change=_set("identity", "bits", {"a": [1, {"b": [2]}]})),
    "bits a string": dict(change=_set("identity", "bits", "64")),
    "n_tiles zero": dict(change=_set("identity", "n_tiles", 0)),
    "identity a list": dict(change=_set("identity", [1, 2])),
    "params deeply nested": dict(change=_set("params", "@RAW:nest"),
                                 raw={"@RAW:nest": "[" * 100_000 + "]" * 100_000}),
    "integer of 5000 digits": dict(change=_set("payload_bytes", "@RAW:long"),
                                   raw={"@RAW:long": "9" * 5000}),
    "build_seconds 1e400": dict(change=_set("build_seconds", "@RAW:inf"),
                                raw={"@RAW:inf": "1e400"}),
    "recall above 1": dict(change=_set("recall", 7)),
    "payload_bytes beyond the file": dict(change=_set("payload_bytes", 1 << 62)),
    "payload_sha256 a number": dict(change=_set("payload_sha256", 12)),
    "no identity": dict(change=_drop("identity")),
    "no params": dict(change=_drop("params")),
    "no nprobe": dict(change=_drop("params", "nprobe")),
    "no payload_bytes": dict(change=_drop("payload_bytes")),
    "no payload_sha256": dict(change=_drop("payload_sha256")),
    "kind an object": dict(change=_set("kind", {"ivf": 1})),
    "version a bool": dict(change=_set("version", True)),
    "header an array": dict(change=lambda h: None, raw={}),
}


def _assert_ignored_then_rebuilt(library, side, queries):
    """A bad sidecar: one-line LibraryError, exact search meanwhile, then rebuilt and used."""
    with Library.open(library) as lib:
        identity = sidecar.Identity.of(lib.model_sha256, BITS, lib.codes())
        with pytest.raises(LibraryError) as error:
            sidecar.load_sidecar(side, identity, lib.codes())
        searcher = Searcher(lib)
        exact = Searcher(lib, index="flat")
    message = str(error.value)
    assert message.startswith(f"{side}: ") and "\n" not in message and len(message) < 300
    assert searcher.index_kind == "flat" and searcher.needs_index_build()
    assert searcher.index_notes == [f"{message} (ignored; searching exactly until it is rebuilt)"]
    assert searcher.search(queries, k=10) == exact.search(queries, k=10)
    searcher.build_index()
    assert searcher.index_notes[1:] == []  # saved over the bad file
    with Library.open(library) as lib:
        assert Searcher(lib).index_kind == "ivf"


@pytest.mark.slow
@pytest.mark.parametrize("bad", list(BAD_HEADERS))
def test_every_bad_header_field_is_ignored_with_one_line(indexed_library, copied_library,
                                                         queries, bad):
    library, side = copied_library
    if bad == "header an array":
        head = b"[1, 2]"
        side.write_bytes(sidecar.MAGIC + struct.pack("<Q", len(head)) + head)
    else:
        side.write_bytes(with_header(indexed_library[1], **BAD_HEADERS[bad]))
    _assert_ignored_then_rebuilt(library, side, queries)


def test_header_length_beyond_the_file_is_refused_before_reading(indexed_library,
                                                                 copied_library, queries):
    library, side = copied_library
    valid = indexed_library[1]
    side.write_bytes(valid[:8] + struct.pack("<Q", len(valid)) + valid[16:])
    _assert_ignored_then_rebuilt(library, side, queries)


def _release_fifo_reader(path) -> None:
    """Give a reader blocked on opening the named pipe its writer, so a failing test ends."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


@pytest.mark.parametrize("what", ["folder", "named pipe"])
def test_a_sidecar_that_is_not_a_regular_file_is_never_opened(library, queries, monkeypatch,
                                                               what):
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    side = sidecar.sidecar_path(library)
    if what == "folder":
        side.mkdir()
    else:
        os.mkfifo(side)
    outcome = {}

    def open_library():
        try:
            with Library.open(library) as lib:
                outcome["searcher"] = Searcher(lib)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            outcome["error"] = exc

    worker = threading.Thread(target=open_library, daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():
        _release_fifo_reader(side)
        worker.join(10)
        pytest.fail(f"opening a library whose sidecar is a {what} blocked")
    assert "error" not in outcome, outcome.get("error")
    searcher = outcome["searcher"]
    assert searcher.index_kind == "flat" and searcher.needs_index_build()
    assert searcher.index_notes == [f"{side}: is a {what}, not an index file (ignored; "
                                    "searching exactly until it is rebuilt)"]
    assert len(searcher.search(queries, k=10)[0]) == 10
    searcher.build_index()
    if what == "folder":  # cannot be replaced: the index is used, unsaved, and that is said
        assert side.is_dir() and "not saved" in searcher.index_notes[-1]
        with pytest.raises(LibraryError, match="not saved"):
            sidecar.check_sidecar_writable(side)
    else:  # the pipe is replaced by the rebuilt index
        assert searcher.index_notes[1:] == []
        with Library.open(library) as lib:
            assert Searcher(lib).index_kind == "ivf"


@pytest.mark.parametrize("fault, reason", [("read_only", "read-only file system"),
                                           ("fill", "no space left on device")])
def test_a_sidecar_that_cannot_be_saved_never_stops_the_index(small_disk, codes, queries,
                                                              monkeypatch, fault, reason):
    monkeypatch.setattr(sidecar, "EXACT_LIMIT_BITS", 1000)
    library = make_library(small_disk.path / "lib.h5", codes)
    before = library.read_bytes()
    getattr(small_disk, fault)()
    with Library.open(library) as lib:
        searcher = Searcher(lib)
    assert searcher.needs_index_build()
    built = searcher.build_index()  # the app's background build
    side = sidecar.sidecar_path(library)
    note = f"{side}: not saved ({reason}); the index is kept in memory only (built again next time)"
    assert built.notes == [note] and searcher.index_notes == [note]
    assert searcher.index_kind == "ivf" and len(searcher.search(queries, k=10)[0]) == 10
    assert not side.exists() and library.read_bytes() == before
    assert sorted(p.name for p in small_disk.path.iterdir()) == sorted(
        ["lib.h5"] + (["filler"] if fault == "fill" else []))  # no temporary file left
    with pytest.raises(LibraryError) as error:
        searcher.save_index()
    assert str(error.value) == f"{side}: not saved ({reason})"


@pytest.mark.parametrize("fault, reason", [("read_only", "read-only file system"),
                                           ("fill", "no space left on device")])
def test_cli_index_build_that_cannot_save_fails_with_one_line(small_disk, codes, capsys, fault,
                                                              reason):
    library = make_library(small_disk.path / "lib.h5", codes)
    before = library.read_bytes()
    getattr(small_disk, fault)()
    assert main(["index-build", str(library), "--kind", "ivf"]) == 1
    out, err = capsys.readouterr()
    side = sidecar.sidecar_path(library)
    assert out == "" and err == f"hashview: {side}: not saved ({reason})\n"
    assert library.read_bytes() == before and not side.exists()


def test_float_library_is_searched_by_cosine(tmp_path):
    rng = np.random.default_rng(5)
    dim, n = 48, 900
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[10] = vectors[20] * 3  # same direction: distance ties, broken by tile index
    with Library.create(tmp_path / "f.h5", "fm", "resnet", dim, "f" * 64,
                        code_kind="float") as lib:
        lib.add_source({"path": "/s/f.svs", "fingerprint": "ff"}, vectors, np.arange(n),
                       np.zeros(n), np.full(n, 224), tile_labels=["x", "y", "z"] * (n // 3))
    with Library.open(tmp_path / "f.h5") as lib:
        searcher = Searcher(lib)
        stored = lib.codes()
    assert searcher.index_kind == "flat-ip" and searcher.wanted_kind == "flat"
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    query = vectors[20] + rng.normal(scale=0.01, size=dim).astype(np.float32)
    hits = searcher.search(query, k=5)[0]
    cosine = unit @ (query / np.linalg.norm(query))
    assert [h.tile_index for h in hits][:2] == [10, 20]
    assert set(h.tile_index for h in hits) == set(np.argsort(-cosine, kind="stable")[:5])
    assert all(isinstance(h.distance, float) for h in hits)
    assert hits[0].distance == pytest.approx(1 - cosine[10], abs=1e-4)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    labelled = searcher.search(query, k=5, labels={"y"})[0]
    assert all(h.label == "y" for h in labelled)
    with pytest.raises(LibraryError, match="dimensions"):
        searcher.search(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="floating"):
        searcher.search(np.zeros((1, dim), np.uint8))
    with Library.open(tmp_path / "f.h5") as lib, pytest.raises(LibraryError, match="binary"):
        Searcher(lib, index="ivf")


def test_cli_index_build_and_search_with_an_approximate_index(slide_library, tmp_path, capsys):
    small = tmp_path / "small.h5"
    shutil.copy(slide_library[0], small)
    assert main(["index-build", str(small), "--json"]) == 0  # auto: exact is enough
    assert json.loads(capsys.readouterr().out)["sidecar"] is None
    assert not sidecar.sidecar_path(small).exists()
    query = str(sorted((KATHER / "04_LYMPHO").iterdir())[0])
    # --index ivf with no sidecar: built on demand, saved, then used
    assert main(["search", str(small), query, "--index", "ivf", "--json", "-k", "5"]) == 0
    out, err = capsys.readouterr()
    assert "building the ivf index" in err and sidecar.sidecar_path(small).exists()
    answer = json.loads(out)
    hits = answer["hits"]
    assert len(hits) == 5 and hits[0]["distance"] == 0
    assert answer["index"]["kind"] == "ivf" and answer["index"]["params"]["nprobe"] >= 1
    assert main(["search", str(small), query, "--index", "ivf", "-k", "5"]) == 0
    assert "building" not in capsys.readouterr().err  # read from the sidecar this time
    assert main(["index-build", str(small), "--kind", "multihash"]) == 0
    assert "multihash index of" in capsys.readouterr().out


def _with_payload(valid: bytes, edit) -> bytes:
    """The sidecar ``valid`` with its FAISS payload changed by ``edit(bytearray)`` and the
    header's checksum made to fit: a file crafted to pass the checksum."""
    (length,) = struct.unpack("<Q", valid[8:16])
    payload = bytearray(valid[16 + length:])
    edit(payload)
    sha = hashlib.sha256(bytes(payload)).hexdigest()
    signed = with_header(valid, lambda header: header.update(payload_sha256=sha))
    (length,) = struct.unpack("<Q", signed[8:16])
    return signed[:16 + length] + bytes(payload)


def _list_sizes_at(payload: bytearray) -> int:
    """Offset of the first list size in an IVF payload ('ilar', nlist, code size, layout, count)."""
    return payload.index(b"ilar") + 4 + 8 + 8 + 4 + 8


def test_a_payload_naming_tiles_beyond_the_library_is_ignored(indexed_library, copied_library,
                                                              queries):
    library, side = copied_library

    def last_id_far_away(payload):  # the ids of the last list end the payload
        payload[-8:] = struct.pack("<q", 10**12)
    side.write_bytes(_with_payload(indexed_library[1], last_id_far_away))
    _assert_ignored_then_rebuilt(library, side, queries)


_LOAD_PEAK = """
import sys
from hashview.search import sidecar
from hashview.errors import LibraryError
from hashview.library import Library
with Library.open(sys.argv[1]) as lib:
    identity = sidecar.Identity.of(lib.model_sha256, lib.bits, lib.codes())
before = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
try:
    sidecar.load_sidecar(sidecar.sidecar_path(sys.argv[1]), identity)
    print("loaded")
except LibraryError as exc:
    print(exc)
after = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
print(after - before)
"""


def test_a_list_size_that_lies_is_refused_before_faiss_allocates_it(indexed_library, tmp_path):
    library = tmp_path / "lib.h5"
    shutil.copy(indexed_library[0], library)

    def first_list_claims_more(payload):
        at = _list_sizes_at(payload)
        (size,) = struct.unpack_from("<Q", payload, at)
        struct.pack_into("<Q", payload, at, size + 2**27)  # 1 GiB of codes and 1 GiB of ids
    sidecar.sidecar_path(library).write_bytes(
        _with_payload(indexed_library[1], first_list_claims_more))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _LOAD_PEAK, str(library)], capture_output=True,
                         text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    message, grew_kib = out.stdout.splitlines()
    assert "corrupt index file" in message and "list sizes" in message
    assert int(grew_kib) < 100 * 1024
