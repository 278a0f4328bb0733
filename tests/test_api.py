"""The scripting API (``hashview.open_library``, docs/api.md), and that the core needs no Qt."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hashview
from conftest import KATHER, SLIDE

ROOT = Path(__file__).resolve().parents[1]
QUERY = KATHER / "01_TUMOR" / "10009_CRC-Prim-HE-03_009.tif_Row_301_Col_151.tif"

# Run first in a child interpreter: any import of Qt fails, as in an install without the app.
NO_QT = """
import sys
class _NoQt:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("PySide6", "shiboken6"):
            raise ImportError(f"Qt is not installed here ({name})")
sys.meta_path.insert(0, _NoQt())
"""
QT_LOADED = ("\nloaded = sorted(m for m in sys.modules if m.partition('.')[0] in "
             "('PySide6', 'shiboken6'))\nprint('Qt modules loaded:', loaded)\n")


def _documented_examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _documented_example() -> str:
    """The first example: the one docs/api.md says runs as written from the repository root."""
    return _documented_examples()[0]


def _run_without_qt(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HASHVIEW_HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("QT_QPA_PLATFORM", None)
    # the timeout only stops a hang; nothing here is timed
    return subprocess.run([sys.executable, "-c", NO_QT + code + QT_LOADED], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_documented_example_runs_as_written_without_qt(tmp_path):
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # the example's paths, from the repo root
    done = _run_without_qt(_documented_example(), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "103 tiles from 13 sources; 103 in all" in done.stdout
    assert "Qt modules loaded: []" in done.stdout
    assert (tmp_path / "example-library.h5").is_file()


def test_the_other_documented_examples_compile_and_call_what_exists():
    """The examples that need more than this machine (a Ray cluster) cannot run here; their
    imports and the keyword arguments they pass must still match the code."""
    import ast
    import importlib
    import inspect

    for block in _documented_examples()[1:]:
        tree = ast.parse(block)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    imported[alias.asname or alias.name] = getattr(module, alias.name)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in imported]
        assert calls, block
        for call in calls:
            keywords = {k.arg: None for k in call.keywords}
            inspect.signature(imported[call.func.id]).bind(*[None] * len(call.args), **keywords)


def test_import_hashview_loads_neither_qt_nor_torch(tmp_path):
    done = _run_without_qt("import hashview\nprint(hashview.__version__, "
                           "'torch' in sys.modules)\n", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{hashview.__version__} False" in done.stdout
    assert "Qt modules loaded: []" in done.stdout


def test_open_library_creates_an_empty_library_with_the_default_model(tmp_path):
    from hashview.models import DEFAULT_MODEL

    lib = hashview.open_library(tmp_path / "new.h5", device="cpu")
    assert (tmp_path / "new.h5").is_file()
    assert (lib.n_tiles, lib.sources, lib.model.name) == (0, [], DEFAULT_MODEL)
    result = lib.search(QUERY, k=5)
    assert result.hits == [] and result.vote is None


@pytest.fixture(scope="module")
def session(slide_library):
    return hashview.open_library(slide_library[0], device="cpu")


def test_a_path_a_pil_image_and_an_array_of_the_same_pixels_give_the_same_hits(session):
    def found(query):
        return [(h.tile_index, h.distance) for h in session.search(query, k=8).hits]

    by_path = found(QUERY)
    pixels = np.asarray(Image.open(QUERY).convert("RGB"))
    assert len(by_path) == 8 and by_path[0][1] == 0  # the patch itself is in the library
    assert found(Image.open(QUERY)) == by_path
    assert found(pixels) == by_path
    assert found(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])) == by_path
    assert found([QUERY]) == by_path


def test_a_region_query_reads_one_tile_per_library_tile_it_covers(session):
    side = session.load().tile_size  # the library's tile, in level-0 pixels at 0.5 µm/px
    one = session.search((SLIDE, (1000, 800, 10, 10)), k=3)
    grid = session.search((str(SLIDE), (1000, 800, 3 * side, 2 * side)), k=3)
    assert (one.query_tiles, grid.query_tiles) == (1, 6)
    assert len(grid.per_tile) == 6 and len(grid.hits) == 3


def test_exclude_source_leaves_out_the_query_file_wherever_it_lives(session, tmp_path):
    moved = tmp_path / "renamed.tif"
    shutil.copy(QUERY, moved)
    kept = session.search(moved, k=5)
    assert kept.hits[0].source_name == QUERY.name
    left_out = session.search(moved, k=5, exclude_source=True)
    assert QUERY.name not in {h.source_name for h in left_out.hits}


def test_labels_filter_keeps_only_those_labels(session):
    hits = session.search(QUERY, k=10, labels={"07_ADIPOSE"}).hits
    assert hits and {h.label for h in hits} == {"07_ADIPOSE"}


def test_unreadable_queries_say_so_in_one_line(session, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(hashview.SourceError) as raised:
        session.search(missing)
    assert str(missing) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(hashview.SourceError, match="uint8 of shape"):
        session.search(np.zeros((32, 32), np.float32))
    with pytest.raises(TypeError, match="a query is a path"):
        session.search(42)
    partial = session.search([missing, QUERY], k=3)
    assert len(partial.hits) == 3 and len(partial.warnings) == 1
    assert str(missing) in partial.warnings[0]
    with pytest.raises(hashview.QueryError, match="none of the 2 images could be read"):
        session.search([missing, tmp_path / "gone.png"])


def test_a_search_sees_tiles_another_writer_added(tmp_path):
    from hashview.indexing import index_paths

    for batch, label in (("first", "01_TUMOR"), ("second", "02_STROMA")):
        shutil.copytree(KATHER / label, tmp_path / batch / label)  # labelled by folder name
    path = tmp_path / "lib.h5"
    lib = hashview.open_library(path, device="cpu")
    lib.add([tmp_path / "first"])
    before = lib.n_tiles
    assert {h.label for h in lib.search(QUERY, k=50).hits} == {"01_TUMOR"}
    index_paths([tmp_path / "second"], path, device="cpu")  # another writer, same file
    assert lib.n_tiles > before
    assert "02_STROMA" in {h.label for h in lib.search(QUERY, k=50).hits}
    report = lib.add(tmp_path / "first")  # already stored: skipped, nothing added
    assert report.tiles_added == 0 and len(report.skipped) == before


def test_a_library_of_another_model_refuses_a_model_it_was_not_made_with(slide_library):
    from hashview.models.store import list_models

    own = hashview.open_library(slide_library[0]).model.name
    other = next(card.name for card in list_models() if card.name != own)
    lib = hashview.open_library(slide_library[0], model=other, device="cpu")
    with pytest.raises(hashview.LibraryError, match="cannot search it with"):
        lib.search(QUERY)


def test_a_slide_sized_image_is_searched_by_region_not_squashed_into_one_tile(session):
    from conftest import STRIPED_TIFF

    with pytest.raises(hashview.SourceError) as raised:
        session.search(STRIPED_TIFF)  # 1493x901 px: the one rule calls it a slide
    assert "1493x901 px image" in str(raised.value) and "--region" in str(raised.value)
    assert session.search((STRIPED_TIFF, (0, 0, 300, 300)), k=3).hits
