"""HashView: content-based histopathology image retrieval with deep hashing.

The scripting API (see docs/api.md)::

    import hashview
    lib = hashview.open_library("lib.h5")         # opens, or creates with the default model
    lib.add(["slide.svs", "patches/"])            # tile, encode and store
    res = lib.search("query.png", k=10)           # or a PIL image, an RGB array, a region
    res.hits, res.vote

None of it needs Qt: the desktop app (``hashview.gui``) is an extra.
"""

__version__ = "0.1.0"

# name -> module; imported on first use, so ``import hashview`` stays instant (torch, FAISS and
# h5py load only when a library is opened)
_PUBLIC = {
    "open_library": "hashview.session",
    "LibrarySession": "hashview.session",
    "QueryError": "hashview.session",
    "QueryResult": "hashview.search.query",
    "Hit": "hashview.search",
    "Vote": "hashview.search",
    "HashViewError": "hashview.errors",
    "LibraryError": "hashview.errors",
    "ModelError": "hashview.errors",
    "SourceError": "hashview.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hashview' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
