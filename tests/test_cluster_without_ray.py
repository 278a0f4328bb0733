"""Without Ray installed, the ray engine says how to get it in one line; merge needs no Ray."""

from __future__ import annotations

import sys

import pytest

from conftest import KATHER
from hashview.errors import HashViewError


def test_the_ray_engine_without_ray_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as when not installed
    from hashview.cluster import index_with_ray

    with pytest.raises(HashViewError, match=r"^the ray engine needs Ray: pip install "
                                            r"'hashview\[cluster\]'$"):
        index_with_ray([KATHER], tmp_path / "lib.h5")
    assert not (tmp_path / "lib.h5").exists()
