"""Search ▸ Export hits to QuPath…: the shown results' query region and hits as GeoJSON files
(:mod:`hashview.annotations.export`), one per slide, to drag onto the slide in QuPath."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtWidgets import QFileDialog

from hashview.errors import HashViewError

TITLE = "Export hits to QuPath"


def exportable_outcome(window):
    """The shown results when they can be exported (a tile or region search with hits); else
    None, said in the status bar."""
    outcome = window.results.outcome
    if outcome is None or not outcome.result.hits:
        window.show_message("Search first: the hits of the shown results are exported")
        return None
    if outcome.request.kind == "case":
        window.show_message("Export to QuPath writes tile hits: search with a region or a "
                            "patch (whole-slide results rank slides)")
        return None
    return outcome


def ask_export_hits(window) -> None:
    outcome = exportable_outcome(window)
    if outcome is None:
        return
    start = str(Path(outcome.request.source_path).parent) if outcome.request.source_path else ""
    folder = QFileDialog.getExistingDirectory(window, f"{TITLE}: choose a folder", start)
    if folder:
        export_hits(window, folder)


def export_hits(window, folder: str | Path):
    """Write the files into ``folder``; what was written goes to the status bar, a failure to
    one line (per file) in a warning. Returns the :class:`GeoJsonExport`, or None."""
    from hashview.annotations.export import QueryRegion, export_search_hits

    outcome = exportable_outcome(window)
    if outcome is None:
        return None
    request = outcome.request
    query = (QueryRegion(request.source_path, tuple(request.region))
             if request.kind == "region" else None)
    try:
        export = export_search_hits(outcome.library, outcome.result.hits, folder, query)
    except HashViewError as exc:
        window.warn(exc.message, TITLE)
        return None
    if export.failed:
        window.warn("\n".join(export.failed), TITLE)
    message = written_message(export)
    if message:
        window.show_message(message, 15000)
    return export


def written_message(export) -> Optional[str]:
    """"Wrote 2 QuPath files to /x: a.hashview.geojson, b.hashview.geojson; ..." or None."""
    parts = []
    if export.written:
        names = ", ".join(Path(w.path).name for w in export.written)
        noun = "file" if len(export.written) == 1 else "files"
        parts.append(f"Wrote {len(export.written)} QuPath {noun} to {export.folder}: {names}")
    elif not export.failed:
        parts.append("Nothing written: no hit is on a slide and the query is not a region")
    if export.note:
        parts.append(export.note)
    return "; ".join(parts) or None
