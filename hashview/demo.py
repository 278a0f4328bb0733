"""The bundled demo: a sample slide and labelled patches, indexed with the default model.

``hashview demo`` (and the app's first run) builds the demo library once in the user data folder
and runs a sample query against it: a colorectal tumour tile that is not in the library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hashview.errors import HashViewError
from hashview.fileio import user_data_dir
from hashview.progress import ProgressCallback
from hashview.resources import resource_dir

DEMO_DIR = resource_dir("demo")
DEMO_SLIDE = DEMO_DIR / "CMU-1-Small-Region.svs"
DEMO_PATCHES = DEMO_DIR / "patches"
DEMO_QUERY = DEMO_DIR / "query" / "tumour-query.tif"


def default_demo_library() -> Path:
    return user_data_dir() / "demo-library.h5"


def build_demo_library(library_path: Optional[str | Path] = None,
                       progress: Optional[ProgressCallback] = None) -> tuple[Path, object]:
    """Index the demo slide and patches (sources already stored are skipped)."""
    for bundled in (DEMO_SLIDE, DEMO_PATCHES):
        if not bundled.exists():
            raise HashViewError(bundled, "demo data missing from this HashView copy")
    from hashview.errors import LibraryError
    from hashview.indexing import index_paths
    from hashview.library import Library
    from hashview.models import DEFAULT_MODEL, load_model

    path = Path(library_path) if library_path else default_demo_library()
    path.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(DEFAULT_MODEL)
    if path.exists():
        # The demo library is derived from bundled files only: when a newer HashView ships a
        # different default model, rebuild it rather than refuse it.
        try:
            with Library.open(path) as library:
                stale = library.model_sha256 != model.card.sha256
        except LibraryError:
            stale = True
        if stale:
            path.unlink()
    result = index_paths([DEMO_SLIDE, DEMO_PATCHES], path, model=model, progress=progress)
    return path, result


def run_demo(library_path: Optional[str | Path] = None,
             progress: Optional[ProgressCallback] = None) -> dict:
    """Build (or reuse) the demo library and search it with the sample query tile."""
    from hashview.library import Library
    from hashview.session import LibrarySession

    path, indexed = build_demo_library(library_path, progress)
    with Library.open(path) as library:
        stats = library.stats()
    session = LibrarySession(path)
    result = session.search(DEMO_QUERY, k=10)
    card = session.loaded_model.card
    header = [
        f"Demo library: {path}",
        f"  {stats['n_sources']} sources, {stats['n_tiles']} tiles, model {card.name}"
        + ("" if card.trained else " (untrained: seeded initial weights)"),
        f"  this run added {len(indexed.added)} source(s), "
        f"{len(indexed.skipped)} were already indexed",
        f"Query: {DEMO_QUERY.name} (a colorectal tumour tile that is not in the library)",
        "",
    ]
    return {
        "library": str(path),
        "index": indexed.to_dict(),
        "query": str(DEMO_QUERY),
        **result.to_dict(),
        "text": "\n".join(header) + result.to_text(),
    }
