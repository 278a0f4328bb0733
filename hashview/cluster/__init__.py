"""Indexing beyond one machine: a Ray cluster that indexes into one library
(:func:`index_with_ray`, needs ``pip install "hashview[cluster]"``), and
:func:`merge_libraries` for libraries built separately with the same model.

Qt-free; Ray is imported only when a cluster run starts, so ``merge_libraries`` and the rest of
HashView work without it.
"""

from __future__ import annotations

from hashview.cluster.merge import merge_libraries

__all__ = ["index_with_ray", "merge_libraries", "ray_installed"]


def ray_installed() -> bool:
    """Whether the ray engine can run here (Ray importable), without importing it."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def __getattr__(name: str):
    if name == "index_with_ray":  # its module imports torch: loaded when first asked for
        from hashview.cluster.ray_index import index_with_ray

        return index_with_ray
    raise AttributeError(f"module 'hashview.cluster' has no attribute {name!r}")
