"""Damaged or hostile library files: refused at open (or as their tiles are read) in one line
naming the file, with little memory, and never read from outside the file.

Every file is made at test time from a small real library, edited with h5py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from conftest import KATHER
from hashview.cli import main as cli_main
from hashview.errors import LibraryError, printable
from hashview.library import Library
from hashview.library.legacy import write_schema1

MODEL = dict(model_name="hatdh-64", model_arch="hatdh", bits=64, model_sha256="a" * 64)
# (name, tiles, label): source 2 has no tiles, so ranges of length 0 are covered
SOURCES = [("a.svs", 4, "tumor"), ("b.svs", 5, "stroma"), ("c.svs", 0, None), ("d.svs", 6, None)]
N_TILES = sum(n for _, n, _ in SOURCES)
REPO = Path(__file__).resolve().parents[1]


def fill(lib: Library) -> None:
    for i, (name, n, label) in enumerate(SOURCES):
        codes = np.random.default_rng(i).integers(0, 256, (n, lib.code_bytes), dtype=np.uint8)
        lib.add_source({"path": f"/data/{name}", "fingerprint": f"fp-{name}", "label": label},
                       codes, np.arange(n) * 224, np.full(n, 448), np.full(n, 224))


@pytest.fixture
def lib_path(tmp_path: Path) -> Path:
    path = tmp_path / "lib.h5"
    with Library.create(path, **MODEL) as lib:
        fill(lib)
    return path


def edit(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "a") as f:
        change(f)


def refused(path: Path, call=None) -> str:
    """The one-line message of the LibraryError that opening ``path`` (or ``call``) raises."""
    with pytest.raises(LibraryError) as e:
        if call is None:
            Library.open(path).close()
        else:
            call()
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def set_value(name: str, index: int, value) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        f[name][index] = value
    return change


def set_attr(key: str, value) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        f.attrs[key] = value
    return change


def recreate(name: str, data=None, **options) -> Callable[[h5py.File], None]:
    """Replace dataset ``name`` by one holding the same values (or ``data``), made with
    ``options`` (a layout HashView never writes)."""
    def change(f: h5py.File) -> None:
        values = f[name][...] if data is None else data
        del f[name]
        f.create_dataset(name, data=values, **options)
    return change


# ------------------------------------------------------------------ sizes beyond the file
_MEASURE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from hashview.errors import LibraryError
    from hashview.library import Library
    try:
        with Library.open(sys.argv[1]) as lib:
            print("opened", lib.stats()["n_tiles"], lib.codes().shape)
    except LibraryError as e:
        print("refused", e)
    # VmHWM, not ru_maxrss: the latter keeps the peak of the (large) test process it forked from.
    with open("/proc/self/status") as status:
        print("maxrss_kb", next(line.split()[1] for line in status if line.startswith("VmHWM")))
""")


def claim_rows(group: str, column: str, value: int, rows: int):
    """The sparse-dataset trick: every column of ``group`` declares ``rows`` rows (no bytes
    stored), and ``column`` of the last committed source says ``value``."""
    def change(f: h5py.File) -> None:
        if column:
            f[f"sources/{column}"][len(SOURCES) - 1] = value
        for name, ds in f[group].items():
            if name != "text":
                ds.resize(rows, axis=0)
        if group == "sources":  # a fill value of 1 makes every declared row look committed
            del f["sources/status"]
            f["sources"].create_dataset("status", shape=(rows,), maxshape=(None,), dtype="u1",
                                        chunks=(256,), fillvalue=1)
            f["sources/status"][: len(SOURCES)] = 1
    return change


@pytest.mark.parametrize("change, reason", [
    (claim_rows("tiles", "tile_count", 10**8, 10**8 + 100), "/tiles/"),
    (claim_rows("sources", "", 0, 10**9), "tile_start"),
])
def test_sizes_beyond_what_the_file_stores_are_refused_with_little_memory(lib_path, change,
                                                                            reason):
    edit(lib_path, change)
    assert lib_path.stat().st_size < 1 << 20
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(lib_path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"refused {lib_path}: library is damaged ("), lines
    assert reason in lines[0]
    assert int(lines[-1].split()[1]) < 300 * 1024, lines  # peak resident KiB


def test_cli_info_on_a_sparse_claim_prints_one_line(lib_path, capsys):
    edit(lib_path, claim_rows("tiles", "tile_count", 10**8, 10**8 + 100))
    assert cli_main(["info", str(lib_path)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "100000000" not in captured.out
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith(f"hashview: {lib_path}: library is damaged (")


# ------------------------------------------------------------------ storage outside the file
def _other_file(tmp_path: Path, lib_path: Path) -> Path:
    """A copy of the library: the place a link or a virtual dataset points at."""
    other = tmp_path / "other.h5"
    shutil.copy(lib_path, other)
    return other


def external_link(name: str):
    def make(f: h5py.File, other: Path) -> None:
        del f[name]
        f[name] = h5py.ExternalLink(str(other), "/" + name)
    return make


def soft_link(name: str, target: str):
    def make(f: h5py.File, other: Path) -> None:
        del f[name]
        f[name] = h5py.SoftLink(target)
    return make


def virtual(name: str):
    def make(f: h5py.File, other: Path) -> None:
        ds = f[name]
        layout = h5py.VirtualLayout(shape=ds.shape, dtype=ds.dtype)
        layout[...] = h5py.VirtualSource(str(other), "/" + name, shape=ds.shape)
        del f[name]
        f.create_virtual_dataset(name, layout)
    return make


def raw_external(name: str):
    """The column's bytes in a separate raw file, as HDF5 "external storage"."""
    def make(f: h5py.File, other: Path) -> None:
        values = f[name][...]
        raw = other.with_suffix(".raw")
        raw.write_bytes(values.tobytes())
        del f[name]
        f.create_dataset(name, shape=values.shape, dtype=values.dtype,
                         external=[(str(raw), 0, values.nbytes)])
    return make


def hostname_storage(f: h5py.File, other: Path) -> None:
    """Source text read from a system file."""
    size = os.path.getsize("/etc/hostname")
    del f["sources/text"]
    f["sources"].create_dataset("text", shape=(size,), dtype="u1",
                                external=[("/etc/hostname", 0, size)])


@pytest.mark.parametrize("make, where", [
    (external_link("tiles/codes"), "/tiles/codes is a link"),
    (external_link("labels"), "/labels is a link"),
    (soft_link("tiles/y", "/tiles/x"), "/tiles/y is a link"),
    (virtual("tiles/codes"), "/tiles/codes is not stored in the file itself"),
    (raw_external("tiles/source_id"), "/tiles/source_id is not stored in the file itself"),
    pytest.param(hostname_storage, "/sources/text is not stored in the file itself",
                 marks=pytest.mark.skipif(not os.path.isfile("/etc/hostname"),
                                          reason="no /etc/hostname")),
])
def test_data_stored_outside_the_file_is_refused(tmp_path, lib_path, make, where):
    other = _other_file(tmp_path, lib_path)
    with h5py.File(lib_path, "a") as f:
        make(f, other)
    assert where in refused(lib_path)
    with pytest.raises(LibraryError):
        Library.open(lib_path, "a")


@pytest.mark.parametrize("options, reason", [
    (dict(compression="gzip", chunks=(4,)), "compressed or filtered"),
    (dict(chunks=(N_TILES,), fletcher32=True), "compressed or filtered"),
])
def test_filtered_columns_are_refused(lib_path, options, reason):
    edit(lib_path, recreate("tiles/x", maxshape=(None,), **options))
    assert reason in refused(lib_path)


# ------------------------------------------------------------------ the sources table
@pytest.mark.parametrize("change, reason", [
    (set_value("sources/tile_start", 3, -4), "source 3 has tile_start -4, expected 9"),
    (set_value("sources/tile_start", 1, 7), "source 1 has tile_start 7, expected 4"),
    (set_value("sources/tile_count", 1, -5), "source 1 has tile_count -5"),
    (set_value("sources/tile_count", 3, 2), None),  # a shorter claim is a consistent library
    (set_value("sources/tile_size", 0, -224), "source 0 has tile_size -224"),
    (set_value("sources/width", 1, -1), "source 1 has width -1"),
    (set_value("sources/text_end", 3, -5), "source text is shorter"),
])
def test_inconsistent_tile_ranges_are_refused(lib_path, change, reason):
    edit(lib_path, change)
    if reason is None:
        with Library.open(lib_path) as lib:
            assert lib.n_tiles == N_TILES - 4 and len(lib.tile_table()["x"]) == N_TILES - 4
        return
    assert reason in refused(lib_path)


def test_n_tiles_is_never_negative(lib_path, capsys):
    """The user's "n tiles: -4": the last source claims tiles before the first."""
    edit(lib_path, set_value("sources/tile_start", 3, -10))
    edit(lib_path, set_value("sources/tile_count", 3, 6))
    assert cli_main(["info", str(lib_path)]) == 1
    captured = capsys.readouterr()
    assert "n tiles" not in captured.out and "tile_start -10" in captured.err


def test_attributes_that_are_not_numbers_are_refused_in_one_line(lib_path):
    edit(lib_path, set_attr("generation", "many"))
    assert "attribute generation is not an integer" in refused(lib_path)
    assert "attribute generation" in refused(lib_path, lambda: Library.current_generation(lib_path))


def test_a_count_attribute_of_another_shape_is_rewritten_when_appending(lib_path):
    """``n_tiles`` is informative (readers derive it): opening for writing rewrites any value."""
    edit(lib_path, set_attr("n_tiles", np.zeros((2, 2))))
    with Library.open(lib_path, "a") as lib:
        n_tiles = lib.n_tiles
    with h5py.File(lib_path, "r") as f:
        assert int(f.attrs["n_tiles"]) == n_tiles == N_TILES


def test_unrepresentable_times_do_not_stop_reading(lib_path):
    edit(lib_path, set_value("sources/added", 0, 2 ** 62))
    with Library.open(lib_path) as lib:
        assert lib.source(0).added == "" and lib.source(1).added.endswith("Z")


# ------------------------------------------------------------------ per-tile columns
@pytest.mark.parametrize("column, row, value, reason", [
    ("source_id", 10, 0, "tile 10 has source_id 0, but lies in the tiles of source 3"),
    ("source_id", 0, -1, "tile 0 has source_id -1"),
    ("source_id", N_TILES - 1, 99, f"tile {N_TILES - 1} has source_id 99"),
    ("label_id", 2, 7, "tile 2 has label_id 7, but the library has 2 labels"),
    ("label_id", 2, -5, "tile 2 has label_id -5"),
])
def test_tiles_credited_to_the_wrong_source_or_label_are_refused(lib_path, capsys, column, row,
                                                                 value, reason):
    edit(lib_path, set_value(f"tiles/{column}", row, value))
    with Library.open(lib_path) as lib:
        assert reason in refused(lib_path, lib.tile_table)
        assert reason in refused(lib_path, lambda: lib.tile(row))
        other = (row + 1) % N_TILES  # tiles read on their own are checked on their own
        assert lib.tile(other).index == other
    assert cli_main(["info", str(lib_path)]) == 1
    assert reason in capsys.readouterr().err


# ------------------------------------------------------------------ codes and their width
def _huge_chunks(f: h5py.File) -> None:
    """Chunks of 128 MiB, none written (so the test file stays small)."""
    del f["tiles/x"]
    f["tiles"].create_dataset("x", shape=(N_TILES,), maxshape=(None,), chunks=(1 << 25,),
                              dtype="i4")


def _one_dimensional_codes(f: h5py.File) -> None:
    recreate("tiles/codes", data=f["tiles/codes"][...].reshape(-1), maxshape=(None,),
             chunks=(64,))(f)


@pytest.mark.parametrize("change, reason", [
    (set_attr("bits", 60), "multiple of 8"),
    (set_attr("bits", 0), "attribute bits is 0"),
    (set_attr("bits", -64), "attribute bits is -64"),
    (set_attr("bits", 10 ** 12), "attribute bits is 1000000000000"),
    (set_attr("bits", "sixty-four"), "attribute bits is not an integer"),
    (set_attr("bits", 64.5), "attribute bits is not an integer"),
    (set_attr("bits", 128), "/tiles/codes has shape (15, 8), expected (n, 16)"),
    (set_attr("code_kind", "ternary"), "code_kind is 'ternary'"),
    (set_attr("code_kind", "float"), "/tiles/codes has shape (15, 8), expected (n, 64)"),
    (set_attr("tile_size", 0), "attribute tile_size is 0"),
    (set_attr("target_mpp", float("nan")), "target_mpp is nan"),
    (set_attr("tile_size", 1), "attribute tile_size is 1"),
    (set_attr("target_mpp", 1e-9), "target_mpp is 1e-09"),
    (set_attr("schema_version", float("-inf")), "bad schema_version"),
    (set_attr("schema_version", 1 + 2j), "bad schema_version"),
    (set_attr("schema_version", "2"), "bad schema_version"),
    (set_attr("model_name", np.arange(3)), "attribute model_name is not a single value"),
    (_one_dimensional_codes, "/tiles/codes has shape (120,), expected (n, 8)"),
    (recreate("tiles/x", data=np.zeros(N_TILES), maxshape=(None,)), "/tiles/x holds float64"),
    (recreate("tiles/label_id", data=np.zeros((N_TILES, 2), np.int16), maxshape=(None, 2)),
     "/tiles/label_id has shape (15, 2), expected (n)"),
    (_huge_chunks, "chunks of 134217728 bytes"),
])
def test_bad_code_width_bits_or_types_are_refused(lib_path, change, reason):
    edit(lib_path, change)
    assert reason in refused(lib_path)


# ------------------------------------------------------------------ schema 1
def test_schema1_library_is_checked_too(tmp_path, lib_path):
    old = tmp_path / "old.h5"
    with Library.open(lib_path) as lib:
        write_schema1(lib, old)
    with Library.open(old) as lib:
        assert lib.schema_version == 1 and lib.n_tiles == N_TILES
    edit(old, claim_rows("tiles", "tile_count", 10 ** 8, 10 ** 8 + 100))
    assert "/tiles/" in refused(old)
    edit(old, set_value("sources/tile_count", 3, 6))
    edit(old, set_value("tiles/source_id", 0, 3))
    with Library.open(old) as lib:
        assert "tile 0 has source_id 3" in refused(old, lib.tile_table)


# ------------------------------------------------------------------ the library's model name
def _default_model_library(path: Path, name: str) -> Path:
    """An empty library of the bundled default model whose ``model_name`` says ``name``."""
    from hashview.models import DEFAULT_MODEL, load_model

    with Library.create(path, load_model(DEFAULT_MODEL).card):
        pass
    edit(path, set_attr("model_name", name))
    return path


def _model_copy(folder: Path, stem: str) -> Path:
    """The default model's files under another name (same weights, so the sha256 matches)."""
    from hashview.models import DEFAULT_MODEL
    from hashview.models.store import bundled_models_dirs

    source = bundled_models_dirs()[0] / DEFAULT_MODEL
    for suffix in (".json", ".safetensors"):
        shutil.copy(source.with_name(source.name + suffix), folder / (stem + suffix))
    return folder / stem


@pytest.mark.parametrize("name", ["{model}", "../{stem}", "{stem}\x1b[2J", ".."])
def test_a_library_model_name_is_never_a_path(tmp_path, name):
    from hashview.session import LibrarySession

    model = _model_copy(tmp_path, "planted")
    path = _default_model_library(tmp_path / "lib.h5",
                                  name.format(model=model, stem=model.name))
    message = refused(path, lambda: LibrarySession(path).load())
    assert "is not a model name" in message and "\x1b" not in message


def test_a_plain_library_model_name_is_not_looked_up_in_the_working_folder(tmp_path,
                                                                             monkeypatch):
    """``load_model("planted")`` would take ./planted.json when a file ./planted exists."""
    from hashview.session import LibrarySession

    folder = tmp_path / "cwd"
    folder.mkdir()
    _model_copy(folder, "planted")
    (folder / "planted").write_bytes(b"")
    monkeypatch.chdir(folder)
    path = _default_model_library(tmp_path / "lib.h5", "planted")
    assert "its model planted is not installed here" in refused(
        path, lambda: LibrarySession(path).load())


def test_a_library_model_name_finds_the_installed_model_and_checks_its_weights(tmp_path):
    from hashview.models import DEFAULT_MODEL
    from hashview.session import LibrarySession

    path = _default_model_library(tmp_path / "lib.h5", DEFAULT_MODEL)
    session = LibrarySession(path)
    assert session.load().n_tiles == 0 and session.encoder is not None
    edit(path, set_attr("model_sha256", "0" * 64))
    assert "cannot search it with model" in refused(path, lambda: LibrarySession(path).load())


def test_search_cli_refuses_a_path_like_model_name(tmp_path, capsys):
    model = _model_copy(tmp_path, "planted")
    path = _default_model_library(tmp_path / "lib.h5", str(model))
    patch = next(KATHER.rglob("*.tif"))
    assert cli_main(["search", str(path), str(patch)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not a model name" in err


# ------------------------------------------------------------------ names shown to people
def test_printable_escapes_control_characters():
    assert printable("plain name é") == "plain name é"
    assert printable("a\x1b[31mb\nc\u202ed\x9b") == "a\\x1b[31mb\\nc\\u202ed\\x9b"
    assert printable(printable("x\x07")) == printable("x\x07") == "x\\x07"
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"  # not UTF-8: the byte


def test_error_messages_stay_one_printable_line(tmp_path):
    error = LibraryError(tmp_path / "evil\x1b]0;title\x07.h5", "source 'a\x1b[2Jb' is bad")
    assert str(error).isprintable() and "\\x1b" in str(error)
