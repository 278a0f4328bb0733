"""Write faults that used to lose data: a full disk during an append or a creation, two processes
creating one library, files made 0600, copies of one image encoded over and over, a resume with
nothing to resume, and --max-tiles 0.

The full-disk tests run on a small tmpfs mounted inside the test (as root; skipped with the reason
where mounting is refused) and filled with a filler file, as a user's disk fills up.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashview.errors import HashViewError, LibraryError, ModelError
from hashview.fileio import atomic_write_bytes
from hashview.library import Library, LibraryWriteError
from hashview.library import files as library_files
from hashview.library.files import write_failure_reason

from conftest import KATHER

MODEL = dict(model_name="hatdh-64", model_arch="hatdh", bits=64, model_sha256="a" * 64)
PATCHES = sorted(p for p in KATHER.rglob("*.tif"))


# ------------------------------------------------------------------ a small disk
class SmallDisk:
    """A tmpfs at ``path``; :meth:`fill` fills it up to ``leave`` free bytes with a filler file."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def free(self) -> int:
        vfs = os.statvfs(self.path)
        return vfs.f_bavail * vfs.f_frsize

    def fill(self, leave: int = 0) -> None:
        with open(self.filler, "ab", buffering=0) as f:
            block = b"\xa5" * 4096
            try:
                while self.free() > leave:
                    f.write(block[: max(1, min(len(block), self.free() - leave))])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise

    def empty(self) -> None:
        self.filler.unlink(missing_ok=True)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True)


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs (the size of the user's report), unmounted afterwards."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs a Linux tmpfs mount")
    point = tmp_path / "disk"
    point.mkdir()
    try:
        done = _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point))
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs to fill up here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up here (needs root): {done.stderr.strip()}")
    try:
        yield SmallDisk(point)
    finally:
        if _run("umount", str(point)).returncode != 0:
            _run("umount", "-l", str(point))


def _record(name: str, folder: str = "/data/" + "long-folder-name/" * 8) -> dict:
    return {"path": f"{folder}{name}", "fingerprint": f"fp-{name}", "label": name[:3]}


def _items(names: list[str], tiles: int = 40, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(_record(name), rng.integers(0, 256, (tiles, 8), dtype=np.uint8),
             np.arange(tiles) * 224, np.zeros(tiles, np.int64), np.full(tiles, 224))
            for name in names]


def _contents(path: Path) -> tuple[list[str], np.ndarray]:
    with Library.open(path) as lib:
        return [s.fingerprint for s in lib.sources()], lib.codes()


def _library_with(path: Path, n: int) -> None:
    with Library.create(path, **MODEL) as lib:
        lib.add_sources(_items([f"old-{i:02d}.svs" for i in range(n)], tiles=10))


# ------------------------------------------------------------------ full disk: the library API
@pytest.mark.parametrize("leave_kib", [0, 4, 12, 24, 48, 96, 160])
def test_a_full_disk_fails_the_append_and_keeps_every_committed_source(small_disk, tmp_path,
                                                                       leave_kib):
    """Fill the disk to a few free KiB (so the append runs out of space at different moments),
    append far more than fits: one-line failure, the 24 committed sources intact, and after the
    space is freed the library opens and takes the same append."""
    base = tmp_path / "base.h5"
    _library_with(base, 24)
    before = _contents(base)
    lib_path = small_disk.path / "lib.h5"
    shutil.copy(base, lib_path)
    small_disk.fill(leave=leave_kib * 1024)
    big = _items([f"new-{i:03d}.svs" for i in range(300)], tiles=40, seed=1)  # ~130 KB of tiles

    lib = Library.open(lib_path, "a")
    with pytest.raises(LibraryWriteError) as failure:
        lib.add_sources(big)
    message = str(failure.value)
    assert message == (f"{lib_path}: write failed (no space left on device); the 24 sources "
                       "stored before are kept")
    with pytest.raises(LibraryError, match="after a failed write"):
        lib.add_sources(big[:1])
    lib.close()  # no error, no crash, lock released

    after = _contents(lib_path)  # readable while the disk is still full
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])

    small_disk.empty()
    with Library.open(lib_path, "a") as lib:
        assert lib.n_sources == 24
        lib.add_sources(big)
    fingerprints, codes = _contents(lib_path)
    assert fingerprints == before[0] + [f"fp-new-{i:03d}.svs" for i in range(300)]
    np.testing.assert_array_equal(codes[:240], before[1])
    np.testing.assert_array_equal(codes[240:], np.concatenate([b[1] for b in big]))


@pytest.mark.parametrize("leave_kib", [0, 8, 16, 24, 40])
def test_creating_a_library_on_a_full_disk_says_why_and_leaves_nothing(small_disk, leave_kib):
    small_disk.fill(leave=leave_kib * 1024)
    path = small_disk.path / "new.h5"
    try:
        lib = Library.create(path, **MODEL)
    except LibraryError as exc:
        assert str(exc) == f"{path}: cannot create (no space left on device)"
        assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler"]
        return
    # the empty library fitted: then its first append is what runs out of space
    with lib, pytest.raises(LibraryWriteError, match=r"write failed \(no space left on device\); "
                                                     r"the library stays empty$"):
        lib.add_sources(_items([f"s{i}" for i in range(300)]))
    small_disk.empty()
    with Library.open(path, "a") as lib:
        assert lib.n_sources == 0
        lib.add_sources(_items(["after.svs"]))
    assert _contents(path)[0] == ["fp-after.svs"]


# ------------------------------------------------------------------ full disk: the user's commands
def _distinct_patches(folder: Path, n: int, first: int = 0) -> list[Path]:
    """``n`` patch images with distinct content: the Kather tiles, each copy with its number
    (from ``first``) appended past the end of the TIFF (readers ignore it; the fingerprint
    changes)."""
    out = []
    for i in range(first, first + n):
        src = PATCHES[i % len(PATCHES)]
        target = folder / src.parent.name / f"{i:03d}-{src.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes() + f"copy {i}".encode())
        out.append(target)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hashview", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.slow
def test_index_on_a_full_disk_reports_one_line_and_the_library_survives(small_disk, tmp_path):
    """The report: 24 sources, disk filled, `hashview index` of 240 more printed "added 240",
    crashed (SIGSEGV) and left a library nothing could open."""
    first, more = tmp_path / "first", tmp_path / "more"
    _distinct_patches(first, 24)
    _distinct_patches(more, 240, first=24)
    lib = small_disk.path / "lib.h5"
    done = _cli("index", str(first), "--library", str(lib), "--batch-size", "8",
                "--device", "cpu")
    assert done.returncode == 0, done.stderr
    committed = _contents(lib)[0]
    assert len(committed) == 24

    small_disk.fill()
    done = _cli("index", str(more), "--library", str(lib), "--batch-size", "8", "--device", "cpu")
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])  # not 139 (SIGSEGV)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"hashview: {lib}: write failed (no space left on device); the ")
    assert lines[0].endswith(" sources stored before are kept")
    assert "added" not in done.stdout
    kept = _contents(lib)[0]  # opens, with the disk still full
    assert kept[:24] == committed and len(kept) == int(lines[0].split("; the ")[1].split()[0])

    small_disk.empty()
    done = _cli("info", str(lib))
    assert done.returncode == 0, done.stderr
    done = _cli("index", str(more), "--library", str(lib), "--batch-size", "8", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    final = _contents(lib)[0]
    assert final[:24] == committed and len(final) == len(set(final)) == 264


@pytest.mark.slow
def test_a_new_library_on_a_full_disk_is_one_line_with_the_reason(small_disk, tmp_path):
    small_disk.fill()
    lib = small_disk.path / "new.h5"
    done = _cli("index", str(PATCHES[0]), "--library", str(lib), "--device", "cpu")
    assert done.returncode == 1
    assert done.stderr.strip() == f"hashview: {lib}: cannot create (no space left on device)"
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler"]


@pytest.mark.slow
def test_train_on_a_full_disk_is_one_line_and_leaves_no_empty_split(small_disk):
    out = small_disk.path / "run"
    small_disk.fill()
    done = _cli("train", str(KATHER), "--arch", "hatdh", "--bits", "16", "--out", str(out),
                "--epochs", "1", "--batch-size", "4", "--device", "cpu")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "no space left on device" in lines[0]
    assert not (out / "split.json").exists()
    small_disk.empty()
    done = _cli("train", str(KATHER), "--arch", "hatdh", "--bits", "16", "--out", str(out),
                "--epochs", "1", "--resume", "--device", "cpu")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"hashview: {out}: no training checkpoint to resume in this "
                                   "folder; run without --resume to start afresh")


# ------------------------------------------------------------------ write failures anywhere
@pytest.mark.parametrize("fail_at", ["text write", "first reserve", "first flush", "verify",
                                     "status write", "commit reserve", "commit fsync"])
def test_a_write_failure_at_any_step_keeps_the_committed_state(tmp_path, monkeypatch, fail_at):
    """Where no tmpfs can be mounted: inject the failure at each step of an append."""
    import h5py

    path = tmp_path / "lib.h5"
    _library_with(path, 5)
    before = _contents(path)
    calls = {"reserve": 0, "fsync": 0}
    real_reserve, real_fsync = library_files.reserve_space, library_files.fsync
    real_flush, real_setitem = h5py.File.flush, h5py.Dataset.__setitem__

    def reserve(fd, start, size):
        calls["reserve"] += 1
        if (fail_at, calls["reserve"]) in (("first reserve", 1), ("commit reserve", 2)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_reserve(fd, start, size)

    def fsync(fd):
        calls["fsync"] += 1
        if fail_at == "commit fsync" and calls["fsync"] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    def flush(self):
        if fail_at == "first flush":
            raise RuntimeError("Unable to synchronously flush file (file write failed: time = "
                               "Sat Dec  5 15:06:36 2026\n, errno = 28, error message = 'No "
                               "space left on device')")
        return real_flush(self)

    def setitem(self, key, value):
        name = self.name
        if (fail_at, name) in (("text write", "/sources/text"), ("status write",
                                                                 "/sources/status")):
            raise OSError(errno.ENOSPC, "Can't synchronously write data")
        return real_setitem(self, key, value)

    monkeypatch.setattr(library_files, "reserve_space", reserve)
    monkeypatch.setattr(library_files, "fsync", fsync)
    monkeypatch.setattr(h5py.File, "flush", flush)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    if fail_at == "verify":
        monkeypatch.setattr("hashview.library.writing.LibraryWriting._verify",
                            lambda self, written: (_ for _ in ()).throw(
                                OSError(errno.EIO, "reads back different")))
    with Library.open(path, "a") as lib:
        with pytest.raises(LibraryWriteError) as failure:
            lib.add_sources(_items(["x.svs", "y.svs"], seed=3))
    reason = {"commit fsync": "input/output error", "verify": "input/output error"}.get(
        fail_at, "no space left on device")
    assert str(failure.value) == (f"{path}: write failed ({reason}); the 5 sources stored "
                                  "before are kept")
    monkeypatch.undo()
    after = _contents(path)
    if fail_at == "commit fsync":  # the commit mark may have reached the file before fsync
        assert after[0][:5] == before[0]
    else:
        assert after[0] == before[0]
        np.testing.assert_array_equal(after[1], before[1])
    with Library.open(path, "a") as lib:
        lib.add_sources(_items(["x.svs", "y.svs"], seed=3))
    assert _contents(path)[0] == before[0] + ["fp-x.svs", "fp-y.svs"]


def test_write_failure_reasons_are_short():
    hdf5 = OSError("Unable to synchronously create file (file write failed: time = Sat Dec  5 "
                   "15:06:36 2026\n, filename = 'full/lib.h5', file descriptor = 4, errno = 28, "
                   "error message = 'No space left on device', buf = 0x5, total write size = 256)")
    assert write_failure_reason(hdf5) == "no space left on device"
    assert write_failure_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == \
        "disk quota exceeded"
    assert write_failure_reason(RuntimeError("Can't write (something odd: time = Sat\nmore")) == \
        "Can't write"


# ------------------------------------------------------------------ two creators
def _create_and_add(who: str, paths: list[str], barrier, results) -> None:
    from hashview.library import Library as Lib

    for trial, path in enumerate(paths):
        barrier.wait()
        try:
            with Lib.open_or_create(path, **MODEL) as lib:
                lib.add_source(_record(f"{who}-{trial}"), np.full((3, 8), trial, np.uint8),
                               [0, 1, 2], [0, 0, 0], [224] * 3)
            results.put((trial, who, "ok"))
        except HashViewError as exc:
            results.put((trial, who, str(exc)))
        except Exception as exc:  # pragma: no cover - reported by the test
            results.put((trial, who, f"UNEXPECTED {type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_two_processes_creating_one_library_never_lose_a_source(tmp_path):
    trials = 20
    paths = [str(tmp_path / f"lib-{i}.h5") for i in range(trials)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_create_and_add, args=(who, paths, barrier, results))
               for who in ("a", "b")]
    for w in workers:
        w.start()
    outcomes: dict[int, dict[str, str]] = {}
    for _ in range(2 * trials):
        trial, who, outcome = results.get(timeout=300)
        outcomes.setdefault(trial, {})[who] = outcome
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for trial in range(trials):
        reported_ok = {who for who, outcome in outcomes[trial].items() if outcome == "ok"}
        stored = {fp.split("-")[1] for fp in _contents(Path(paths[trial]))[0]}
        assert stored == reported_ok, (trial, outcomes[trial])  # success means stored
        assert reported_ok, outcomes[trial]
        for who, outcome in outcomes[trial].items():
            if outcome != "ok":  # the loser is refused in one line, never silently dropped
                assert "\n" not in outcome and outcome.startswith(paths[trial]), outcome
                assert "in use by another process" in outcome, outcome
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_create_never_replaces_a_file_that_appeared_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "lib.h5"
    real = library_files.publish

    raced = []

    def racing_publish(tmp, target, overwrite):  # another creator wins just before us
        if not raced:
            raced.append(True)
            _library_with(target, 1)
        return real(tmp, target, overwrite)

    monkeypatch.setattr(library_files, "publish", racing_publish)
    with pytest.raises(LibraryError, match="already exists"):
        Library.create(path, **MODEL)
    monkeypatch.undo()
    assert _contents(path)[0] == ["fp-old-00.svs"]
    assert [p.name for p in tmp_path.iterdir()] == ["lib.h5"]


def test_a_losing_creator_removes_its_temporary_file_before_dropping_its_lock(tmp_path,
                                                                              monkeypatch):
    # Once the lock goes, the winner's clean-up may delete the file first; an unlink after that
    # failed, and the loser said "cannot create (no such file or directory)" instead of
    # "already exists" (then open_or_create did not fall back to appending).
    path = tmp_path / "lib.h5"
    real_make, real_publish = library_files.make_temp_library, library_files.publish
    real_close = library_files.FileLocks.close
    made, tmp_there_at_unlock = [], []

    def make_temp(target, mode=None):
        made.append(real_make(target, mode))
        return made[-1]

    def racing_publish(tmp, target, overwrite):  # another creator wins just before us
        if len(made) == 1:
            _library_with(target, 1)
        return real_publish(tmp, target, overwrite)

    def close(self):
        if made and self is made[0][1]:
            tmp_there_at_unlock.append(os.path.exists(made[0][0]))
        real_close(self)

    monkeypatch.setattr(library_files, "make_temp_library", make_temp)
    monkeypatch.setattr(library_files, "publish", racing_publish)
    monkeypatch.setattr(library_files.FileLocks, "close", close)
    with pytest.raises(LibraryError, match="already exists"):
        Library.create(path, **MODEL)
    assert tmp_there_at_unlock[:1] == [False]
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["lib.h5"]


def test_overwrite_refuses_a_library_open_for_writing_elsewhere(tmp_path):
    path = tmp_path / "lib.h5"
    _library_with(path, 2)
    code = (f"import sys, time; from hashview.library import Library\n"
            f"lib = Library.open({str(path)!r}, 'a'); print('open', flush=True); "
            f"sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        if library_files.CONCURRENT_READS:
            with pytest.raises(LibraryError, match="in use by another process"):
                Library.create(path, **MODEL, overwrite=True)
    finally:
        holder.communicate("", timeout=60)
    assert len(_contents(path)[0]) == 2


# ------------------------------------------------------------------ permissions
@pytest.fixture()
def umask():
    def set_umask(value: int) -> None:
        os.umask(value)
    old = os.umask(0o022)
    os.umask(old)
    yield set_umask
    os.umask(old)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("mask,mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    lib = tmp_path / "lib.h5"
    Library.create(lib, **MODEL).close()
    assert stat.S_IMODE(lib.stat().st_mode) == mode
    atomic_write_bytes(tmp_path / "model.json", b"{}")
    assert stat.S_IMODE((tmp_path / "model.json").stat().st_mode) == mode


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_writes_keep_the_mode_of_the_file_they_replace(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "card.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_models_are_saved_with_the_umask(tmp_path, umask):
    from hashview.models import ModelCard, build_model, save_model

    umask(0o002)
    save_model(build_model("dch", 32), ModelCard(name="m", arch="dch", bits=32,
                                                 input_size=64), tmp_path / "m")
    for made in tmp_path.iterdir():
        assert stat.S_IMODE(made.stat().st_mode) == 0o664, made


# ------------------------------------------------------------------ copies of one image
def _twenty_copies(image: Path, tmp_path: Path) -> Path:
    """A folder holding twenty copies of ``image`` under other names."""
    folder = tmp_path / "copies"
    folder.mkdir()
    for i in range(20):
        shutil.copy(image, folder / f"copy-{i:02d}.tif")
    return folder


def test_copies_of_one_image_are_encoded_and_counted_once(tmp_path):
    from hashview.indexing import index_paths

    folder = _twenty_copies(PATCHES[0], tmp_path)
    lib = tmp_path / "lib.h5"
    report = index_paths([folder], lib, device="cpu")
    assert [Path(a["path"]).name for a in report.added] == ["copy-00.tif"]
    assert len(report.skipped) == 19 and not report.failed
    assert {d["duplicate_of"] for d in report.duplicates} == {str(folder / "copy-00.tif")}
    assert len(report.duplicates) == 19
    assert any("19 files skipped as duplicates" in w for w in report.warnings)
    with Library.open(lib) as opened:
        assert opened.n_sources == 1 and opened.n_tiles == 1
    again = index_paths([folder], lib, device="cpu")  # the library has it: all "already indexed"
    assert not again.added and len(again.skipped) == 20


@pytest.mark.slow
def test_cli_counts_copies_as_not_added(tmp_path):
    folder = _twenty_copies(PATCHES[1], tmp_path)
    lib = tmp_path / "lib.h5"
    done = _cli("index", str(folder), "--library", str(lib), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"{lib}: added 1 source(s), 1 tiles; 19 already indexed; 0 failed" in done.stdout


# ------------------------------------------------------------------ resume, max-tiles
def test_resume_with_nothing_to_resume_is_an_error_not_a_fresh_start(tmp_path):
    from hashview.training import TrainConfig, train, train_from_folder

    out = tmp_path / "run"
    with pytest.raises(ModelError, match="no training checkpoint to resume") as e:
        train_from_folder(KATHER, "hatdh", 16, out, epochs=1, resume=True, device="cpu")
    assert str(e.value) == (f"{out}: no training checkpoint to resume (the folder does not "
                            "exist); run without --resume to start afresh")
    assert not out.exists()
    out.mkdir()
    with pytest.raises(ModelError, match="in this folder"):
        train(TrainConfig(bits=16, epochs=1), [], out, resume=True)
    assert not list(out.iterdir())


def test_split_save_is_atomic(tmp_path, monkeypatch):
    from hashview.splits import Split

    path = tmp_path / "split.json"
    old = Split(protocol="hatdh", seed=0, data_root="d", train=["a"], test=["b"])
    old.save(path)
    before = path.read_bytes()

    def full(fd):  # the bytes did not all reach the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hashview.fileio.os.fsync", full)
    with pytest.raises(HashViewError) as e:
        Split(protocol="hatdh", seed=1, data_root="d", train=["c"], test=["d"]).save(path)
    assert str(e.value) == f"{path}: cannot write split (no space left on device)"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["split.json"]


def test_max_tiles_below_one_is_refused_before_any_library_is_made(tmp_path):
    from hashview.indexing import index_paths
    from hashview.tiling import TilingParams

    with pytest.raises(ValueError, match="max_tiles must be a positive integer"):
        TilingParams(max_tiles=0)
    TilingParams(max_tiles=1).validate()
    params = TilingParams(max_tiles=1)
    object.__setattr__(params, "max_tiles", 0)  # changed after it was made: indexing checks again
    lib = tmp_path / "lib.h5"
    with pytest.raises(ValueError, match="max_tiles must be a positive integer"):
        index_paths([PATCHES[0]], lib, params=params, device="cpu")
    assert not lib.exists()
