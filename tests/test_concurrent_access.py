"""Reading while writing, with real processes: a writer appends sources in a tight loop while
reader processes open the library over and over and check that every view is a committed prefix.

Every tile's code encodes (source id, tile number), its position is (tile number, source id), so a
reader can check all tiles of each view in a few vectorised comparisons: a half-written tile, a
tile of the wrong source, a row from a later commit or a torn source table shows up as a mismatch.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hashview.errors import LibraryError
from hashview.library import Library
from hashview.library.files import CONCURRENT_READS

pytestmark = pytest.mark.skipif(not CONCURRENT_READS, reason="needs Linux OFD locks")

N_SOURCES = 200
ROOT = Path(__file__).resolve().parents[1]

_COMMON = textwrap.dedent("""
    import numpy as np

    def n_tiles(i):
        return (i * 389) % 1300  # 0 .. 1299: some sources without tiles, chunk boundaries crossed

    def tiles(i):
        n = n_tiles(i)
        ids = np.stack([np.full(n, i, np.int32), np.arange(n, dtype=np.int32)], axis=1)
        return np.ascontiguousarray(ids).view(np.uint8).reshape(n, 8), np.arange(n), np.full(n, i)
""")

_WRITER = _COMMON + textwrap.dedent("""
    import sys
    from hashview.library import Library
    lib = Library.create(sys.argv[1], "m", "hatdh", 64, "a" * 64)
    print("ready", flush=True)
    i = 0
    while i < int(sys.argv[2]):
        batch = 1 if i % 3 else 4  # single appends and batches of several sources
        items = []
        for j in range(i, min(i + batch, int(sys.argv[2]))):
            codes, xs, ys = tiles(j)
            items.append(({"path": f"/s/{j}.svs", "fingerprint": f"fp{j}", "label": f"l{j % 5}"},
                          codes, xs, ys, np.full(len(xs), 224)))
        lib.add_sources(items)
        i += len(items)
    lib.close()
    print("done", flush=True)
""")

_READER = _COMMON + textwrap.dedent("""
    import json, os, sys
    from hashview.library import Library
    path, done_flag = sys.argv[1], sys.argv[2]

    def check(lib):
        sources, codes, table = lib.sources(), lib.codes(), lib.tile_table()
        labels = lib.label_names()
        assert lib.n_tiles == len(codes) == sum(s.tile_count for s in sources)
        start = 0
        for s in sources:
            assert (s.fingerprint, s.tile_start, s.tile_count) == (f"fp{s.id}", start,
                                                                    n_tiles(s.id)), s
            assert s.status == "complete" and s.label == f"l{s.id % 5}"
            start += s.tile_count
        ids = codes.view(np.int32).reshape(-1, 2)
        sid = table["source_id"]
        assert (ids[:, 0] == sid).all() and (table["y"] == sid).all()
        assert (ids[:, 1] == table["x"]).all() and (table["size"] == 224).all()
        assert all(labels[l] == f"l{s % 5}" for l, s in set(zip(table["label_id"].tolist(),
                                                                 sid.tolist())))
        return len(sources), codes

    views, seen, last_generation, changed_seen = 0, set(), -1, False
    first = Library.open(path)
    first_codes = first.codes()
    finished = False
    while not finished:
        finished = os.path.exists(done_flag)  # one more full view after the writer is done
        with Library.open(path) as lib:
            n, _ = check(lib)
            assert lib.generation >= last_generation
            last_generation = lib.generation
        views += 1
        seen.add(n)
        # A library kept open presents its snapshot while the file grows.
        assert np.array_equal(first.codes(), first_codes) and check(first)[0] == first.n_sources
        changed_seen = changed_seen or first.has_changed()
    print(json.dumps({"views": views, "distinct_sizes": len(seen), "final_sources": n,
                      "changed_seen": changed_seen}))
""")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_readers_see_only_committed_prefixes_while_a_writer_appends(tmp_path):
    path, done_flag = tmp_path / "lib.h5", tmp_path / "writer-done"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(N_SOURCES)],
                              stdout=subprocess.PIPE, text=True, env=_env())
    readers = []
    try:
        assert writer.stdout.readline().strip() == "ready"
        readers = [subprocess.Popen([sys.executable, "-c", _READER, str(path), str(done_flag)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=_env()) for _ in range(2)]
        assert writer.stdout.readline().strip() == "done"
        assert writer.wait(timeout=120) == 0
        done_flag.touch()
        results = []
        for reader in readers:
            out, err = reader.communicate(timeout=120)
            assert reader.returncode == 0, err[-2000:]
            results.append(json.loads(out))
    finally:
        for proc in (writer, *readers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print("\nconcurrent readers:", results)
    for r in results:
        assert r["final_sources"] == N_SOURCES  # new sources are seen after reopening
        assert r["views"] >= 5 and r["distinct_sizes"] >= 2, r
        assert r["changed_seen"]


def test_a_second_writing_process_is_refused_while_readers_are_not(tmp_path):
    path = tmp_path / "lib.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from hashview.library import Library
            lib = Library.create(sys.argv[1], "m", "hatdh", 64, "a" * 64)
            print("ready", flush=True)
            sys.stdin.readline()
        """), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(LibraryError) as e:
            Library.open(path, "a")
        assert str(e.value) == f"{path}: file is in use by another process (locked)"
        with Library.open(path) as reader:  # reading while the other process holds it open
            assert reader.n_tiles == 0 and reader.generation == 0
    finally:
        holder.kill()  # SIGKILL: the OS drops its locks
        holder.wait()
    with Library.open(path, "a") as lib:
        assert lib.mode == "a"


def test_reader_in_the_same_process_sees_commits_after_reopening(tmp_path):
    path = tmp_path / "lib.h5"
    codes = np.arange(16, dtype=np.uint8).reshape(2, 8)
    with Library.create(path, "m", "hatdh", 64, "a" * 64) as writer:
        writer.add_source({"path": "/a", "fingerprint": "a"}, codes, [0, 1], [0, 0], [9, 9])
        reader = Library.open(path)
        assert (reader.n_tiles, reader.has_changed()) == (2, False)
        writer.add_source({"path": "/b", "fingerprint": "b"}, codes, [0, 1], [0, 0], [9, 9])
        assert reader.has_changed() and Library.current_generation(path) == 2
        assert reader.generation == 1 and len(reader.codes()) == 2  # its snapshot
        reader.close()
        with Library.open(path) as again:
            assert (again.n_tiles, again.generation) == (4, 2)


def test_a_replaced_file_is_reported_not_mixed_in(tmp_path):
    path = tmp_path / "lib.h5"
    codes = np.zeros((3, 8), np.uint8)
    with Library.create(path, "m", "hatdh", 64, "a" * 64) as lib:
        lib.add_source({"path": "/a", "fingerprint": "a"}, codes, [0, 1, 2], [0] * 3, [9] * 3)
    reader = Library.open(path)
    Library.create(path, "m", "hatdh", 64, "a" * 64, overwrite=True).close()  # a new file
    assert reader.has_changed()
    with pytest.raises(LibraryError) as e:
        reader.codes()
    assert str(e.value) == (f"{path}: library file was replaced while it was open; open it "
                            "again")
    reader.close()


def test_file_systems_without_byte_range_locks_still_work(tmp_path, monkeypatch):
    def refused(fd, cmd, arg):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("hashview.library.files.fcntl.fcntl", refused)
    path = tmp_path / "lib.h5"
    with Library.create(path, "m", "hatdh", 64, "a" * 64) as lib:
        lib.add_source({"path": "/a", "fingerprint": "a"}, np.ones((2, 8), np.uint8), [0, 1],
                       [0, 0], [9, 9])
        with Library.open(path) as reader:
            assert reader.n_tiles == 2 and reader.codes().sum() == 16
