"""Shared fixtures: real test data, a small indexed library, offscreen Qt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

DATA = Path(__file__).resolve().parent / "data"
SLIDE = DATA / "CMU-1-Small-Region.svs"
TINY_SLIDE = DATA / "tiny-16px.svs"
STRIPED_TIFF = DATA / "kidney-48-5-striped.tif"
KATHER = DATA / "kather"


@pytest.fixture(autouse=True)
def _isolated_user_data(tmp_path_factory, monkeypatch):
    """User models and the demo library go to a temporary folder, never the real home."""
    monkeypatch.setenv("HASHVIEW_HOME", str(tmp_path_factory.getbasetemp() / "hashview-home"))


@pytest.fixture(scope="session")
def slide_library(tmp_path_factory):
    """The CMU slide and the Kather patches indexed once with the default model."""
    from hashview.indexing import index_paths

    path = tmp_path_factory.mktemp("lib") / "library.h5"
    report = index_paths([SLIDE, KATHER], path)
    assert not report.failed, report.failed
    return path, report

