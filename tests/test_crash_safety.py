"""Crash safety on real data: SIGKILL `hashview index` at random moments, then resume.

The kill test indexes the bundled CMU slide (subsampled with --max-tiles) and the 12 Kather
patches with ``--batch-size 2`` (one commit for the slide, then six for the patches), once
uninterrupted as the reference (wall time T), then N_KILLS times killed with SIGKILL at a seeded
random moment in (0, T) (half of the moments are drawn after the moment the reference run
created its library, where the commits happen). After each kill the library must be absent or open with only complete
sources whose codes equal the reference's; then the same command is run again without a kill and
the result must equal the reference exactly (same sources, no duplicates, same tiles and codes).

A second kill test removes two sources from a library of 3 x 10**5 tiles (a copy-on-write
rewrite) and kills it at random moments: the library must then be exactly the old one or
exactly the new one, and the next edit must work (removing the leftover temporary file).

Run ``python -m pytest -q -s tests/test_crash_safety.py`` to see the summary (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hashview.fileio import atomic_write_bytes
from hashview.library import Library
from hashview.library.files import CONCURRENT_READS

from conftest import KATHER, SLIDE

N_KILLS = 20
SEED = 0
MAX_TILES = 16  # keeps T (the uninterrupted run) at ~3-4 s on 2 cores; ~1.6 s of it is start-up
N_PATCHES = 12


def _index_args(library: Path) -> list[str]:
    return ["index", str(KATHER), str(SLIDE), "--library", str(library), "--batch-size", "2",
            "--max-tiles", str(MAX_TILES), "--device", "cpu", "--json"]


def _cli(library: Path) -> list[str]:
    return [sys.executable, "-m", "hashview", *_index_args(library)]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 shared cores: keep the timing steady
    return env


def _snapshot(path: Path) -> dict[str, dict]:
    """fingerprint -> {kind, positions (n, 3), codes, labels} of a library opened read-only,
    after checking that it holds only complete, contiguous sources."""
    with Library.open(path, "r") as lib:
        sources = lib.sources()
        codes = lib.codes()
        table = lib.tile_table()
        labels = lib.label_names()
        n_tiles = lib.n_tiles
    assert n_tiles == sum(s.tile_count for s in sources) == len(codes)
    out: dict[str, dict] = {}
    expected_start = 0
    for s in sources:
        assert s.status == "complete"
        assert s.tile_start == expected_start, f"{s.name}: tiles not contiguous"
        expected_start += s.tile_count
        sl = slice(s.tile_start, s.tile_start + s.tile_count)
        assert np.all(table["source_id"][sl] == s.id), f"{s.name}: tiles of another source"
        assert s.fingerprint not in out, f"{s.name}: stored twice"
        out[s.fingerprint] = {
            "name": s.name, "kind": s.kind,
            "positions": np.stack([table["x"][sl], table["y"][sl], table["size"][sl]], axis=1),
            "codes": codes[sl].copy(),
            "labels": [labels[i] if i >= 0 else None for i in table["label_id"][sl]],
        }
    return out


def _assert_subset_of(snap: dict, ref: dict) -> None:
    for fp, got in snap.items():
        assert fp in ref, f"{got['name']}: not in the reference run"
        want = ref[fp]
        assert got["kind"] == want["kind"]
        np.testing.assert_array_equal(got["positions"], want["positions"], err_msg=got["name"])
        np.testing.assert_array_equal(got["codes"], want["codes"], err_msg=got["name"])
        assert got["labels"] == want["labels"]


def _outcome(snap: dict | None) -> str:
    if snap is None:
        return "killed before library creation"
    kinds = Counter(v["kind"] for v in snap.values())
    if kinds["slide"] == 0:
        return "mid-slide"
    if kinds["patch"] < N_PATCHES:
        return "mid-patches"
    return "after completion"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_at_random_moments_then_rerun_equals_reference(tmp_path):
    from hashview.cli import main

    t_start = time.perf_counter()
    # warm the page cache (torch, the model) so that T is not inflated by a cold first start
    subprocess.run([sys.executable, "-c", "import hashview.indexing"], check=True, timeout=120)
    ref_path = tmp_path / "ref.h5"
    t0 = time.perf_counter()
    ref_proc = subprocess.Popen(_cli(ref_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=_env())
    t_lib = None  # when the library file appeared (created by an atomic rename)
    while ref_proc.poll() is None:
        if t_lib is None and ref_path.exists():
            t_lib = time.perf_counter() - t0
        time.sleep(0.005)
    T = time.perf_counter() - t0
    _, err = ref_proc.communicate()
    assert ref_proc.returncode == 0, err
    t_lib = T if t_lib is None else t_lib
    ref = _snapshot(ref_path)
    assert Counter(v["kind"] for v in ref.values()) == {"slide": 1, "patch": N_PATCHES}

    rng = np.random.default_rng(SEED)
    # Half the moments over all of (0, T), half over (t_lib, T), where the library exists and
    # the commits happen (start-up before it is ~60 % of T and would get most kills otherwise).
    moments = np.sort(np.concatenate([rng.uniform(0.0, T, N_KILLS - N_KILLS // 2),
                                      rng.uniform(t_lib, T, N_KILLS // 2)]))
    rows = []
    for k, moment in enumerate(moments):
        lib = tmp_path / f"kill{k:02d}" / "lib.h5"
        lib.parent.mkdir()
        proc = subprocess.Popen(_cli(lib), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=_env())
        time.sleep(moment)
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, err.decode(errors="replace")

        # 1. after the kill: absent, or opens holding only complete sources of the reference
        if lib.exists():
            snap = _snapshot(lib)  # raises if the library does not open
            _assert_subset_of(snap, ref)
        else:
            snap = None
        outcome = _outcome(snap)
        stray = sorted(p.name for p in lib.parent.iterdir() if p.name != lib.name)

        # 2. the same command again, without a kill (in this process: no second start-up cost)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(_index_args(lib)) == 0
        final = _snapshot(lib)
        assert set(final) == set(ref), f"kill {k}: sources differ from the reference"
        if CONCURRENT_READS:  # a temporary left by a kill during creation is cleaned up
            left = [p.name for p in lib.parent.iterdir() if p.name.startswith(lib.name + ".")]
            assert not left, f"kill {k}: temporary files left after the rerun: {left}"
        _assert_subset_of(final, ref)
        rows.append((k, moment, "killed" if killed else "exited", outcome,
                     0 if snap is None else len(snap), len(final), stray))

    total = time.perf_counter() - t_start
    counts = Counter(r[3] for r in rows)
    lines = [f"\ncrash-safety kill test: T = {T:.2f} s (uninterrupted reference), "
             f"library created at {t_lib:.2f} s; {len(rows)} kills at seeded "
             f"(default_rng({SEED})) moments in (0, T), half of them in ({t_lib:.2f}, T); "
             f"reference {len(ref)} sources / {sum(len(v['codes']) for v in ref.values())} tiles"]
    for k, moment, how, outcome, n_before, n_after, stray in rows:
        lines.append(f"  kill {k:2d} at {moment:5.2f} s: {how:6s} {outcome:31s} "
                     f"sources kept {n_before:2d}, after rerun {n_after:2d}"
                     + (f"  stray files before the rerun: {stray}" if stray else ""))
    lines.append("  outcomes: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    lines.append(f"  survived {len(rows)}/{len(rows)}; data lost 0; duplicates after rerun 0; "
                 f"test wall time {total:.1f} s")
    print("\n".join(lines))


# ------------------------------------------------------------------ atomic writes

def test_atomic_write_replace_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old contents")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new contents" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_atomic_write_failure_mid_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    target.write_bytes(b'{"epoch": 1}\n')

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # the bytes are written, the sync fails
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'{"epoch": 2}\n')
    monkeypatch.undo()
    assert target.read_bytes() == b'{"epoch": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def _tiny_checkpoint(epoch: int):
    import torch
    return ({"w": torch.full((2, 3), float(epoch))}, {"state": {}, "lr": [0.1 * epoch]},
            {"epoch": epoch})


def test_checkpoint_serialisation_failure_keeps_old_checkpoint(tmp_path):
    """Data whose serialisation raises: nothing is written, the previous checkpoint still loads."""
    from hashview.training.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, *_tiny_checkpoint(1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    tensors, optim, meta = _tiny_checkpoint(2)
    optim["not serialisable"] = lambda: None  # torch.save cannot pickle a lambda
    with pytest.raises(Exception):
        save_checkpoint(tmp_path, tensors, optim, meta)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file either
    _, _, meta = load_checkpoint(tmp_path)
    assert meta["epoch"] == 1


def test_checkpoint_interrupted_between_files_is_detected_not_mixed(tmp_path, monkeypatch):
    """Ctrl-C after the weights but before checkpoint.json: load refuses in one line."""
    from hashview.errors import ModelError
    from hashview.training import checkpoint as ckpt

    ckpt.save_checkpoint(tmp_path, *_tiny_checkpoint(1))
    real, calls = ckpt.atomic_write_bytes, []

    def interrupted(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, *_tiny_checkpoint(2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ckpt.WEIGHTS_FILE, ckpt.OPTIM_FILE, ckpt.META_FILE])
    with pytest.raises(ModelError, match="do not match"):
        ckpt.load_checkpoint(tmp_path)


# ------------------------------------------------------------------ SIGKILL during an edit
N_EDIT_KILLS = 12


def _remove_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "hashview", "remove", str(path), "slide-0001.svs", "7"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_during_a_removal_leaves_exactly_the_old_or_the_new_library(tmp_path):
    from test_edit_faults import _make, _state, _temporaries

    from hashview.library import editing

    original = _make(tmp_path / "original.h5", 300, 1000)  # 3 * 10**5 tiles, about 7 MB
    old = _state(original)
    reference = tmp_path / "ref" / "lib.h5"
    reference.parent.mkdir()
    shutil.copy(original, reference)
    t0 = time.perf_counter()
    subprocess.run(_remove_command(reference), check=True, capture_output=True)
    T = time.perf_counter() - t0
    t0 = time.perf_counter()  # start-up alone: half the kills land after it, in the rewrite
    subprocess.run([sys.executable, "-c", "import hashview.cli, hashview.library.editing"],
                   check=True)
    t_started = min(time.perf_counter() - t0, T)
    new = _state(reference)
    assert new[0] == old[0] + 1 and len(new[2]) == len(old[2]) - 2
    rng = np.random.default_rng(SEED)
    outcomes = {"old": 0, "new": 0, "temporary file left": 0}
    moments = np.concatenate([rng.uniform(0.0, T, N_EDIT_KILLS // 2),
                              # a little past T too: a run may be slower than the reference
                              rng.uniform(t_started, 1.2 * T, N_EDIT_KILLS - N_EDIT_KILLS // 2)])
    for k, moment in enumerate(np.sort(moments)):
        path = tmp_path / f"kill{k:02d}" / "lib.h5"
        path.parent.mkdir()
        shutil.copy(original, path)
        proc = subprocess.Popen(_remove_command(path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(path)
        assert state in (old, new), f"kill {k} at {moment:.2f} s of {T:.2f} s"
        outcomes["old" if state == old else "new"] += 1
        outcomes["temporary file left"] += bool(_temporaries(path.parent))  # killed mid-rewrite
        # the next edit removes a leftover temporary file and works
        editing.relabel_sources(path, [0], "after")
        assert _temporaries(path.parent) == []
    print(f"\nremoval rewrite of 3e5 tiles: T = {T:.2f} s (start-up {t_started:.2f} s); after "
          f"{N_EDIT_KILLS} kills: {outcomes}")
    assert outcomes["old"] > 0
