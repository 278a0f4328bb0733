"""``hashview search ... --geojson DIR``: the query region and the hits as QuPath GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from hashview.cli.support import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, say

if TYPE_CHECKING:
    from hashview.annotations.export import GeoJsonExport


def add_geojson_option(parser) -> None:
    parser.add_argument("--geojson", metavar="DIR", default=None,
                        help="also write the query region and the hits for QuPath into DIR: "
                             "one <slide>.hashview.geojson per slide, to drag onto the slide "
                             "in QuPath (hits on patch images are not written)")


def export_search(args, library, hits, region) -> "Optional[GeoJsonExport]":
    """The files ``--geojson`` asks for (None without it); ``region``: the query's level-0
    region of the slide ``args.query``, or None for a patch query."""
    if not args.geojson:
        return None
    from hashview.annotations.export import QueryRegion, export_search_hits

    query = QueryRegion(str(Path(args.query).resolve()), tuple(region)) if region else None
    return export_search_hits(library, hits, args.geojson, query)


def report_export(export: "Optional[GeoJsonExport]", json_output: bool) -> int:
    """Say what was written (stdout; with ``--json`` it is in the JSON) and what failed (one
    line each on stderr); the exit status: a failed file is never a success."""
    if export is None:
        return EXIT_OK
    for line in export.failed:
        say(f"hashview: {line}", err=True)
    if not json_output:
        for written in export.written:
            what = [f"{written.hits} hit{'s' if written.hits != 1 else ''}"]
            if written.query:
                what.insert(0, "the query region")
            say(f"wrote {written.path} ({', '.join(what)})")
        if export.note:
            say(f"hashview: {export.note}", err=True)
        if not export.written and not export.failed:
            say("hashview: no GeoJSON written: no hit is on a slide and the query is not a "
                "slide region", err=True)
    if export.failed:
        return EXIT_PARTIAL if export.written else EXIT_FAILED
    return EXIT_OK
