"""The library editing commands: ``meta`` (case data), ``remove``, ``relabel``, ``relocate``.

Edits rewrite the library copy-on-write (``hashview.library.editing``); each prints one summary
line, or with ``--json`` the details.
"""

from __future__ import annotations

import json

from hashview.cli.annotations import (NEXT_TO_SLIDE, annotation_options,
                                      annotation_usage_problem, min_cover)
from hashview.cli.support import EXIT_OK, EXIT_PARTIAL, say, usage_error


def add_edit_parser(sub) -> None:
    """Register ``meta``, ``remove``, ``relabel`` and ``relocate`` (handlers: EDIT_COMMANDS)."""
    p = sub.add_parser("meta", help="show a library's case data, or set it from a CSV")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("--csv", metavar="CASES.csv",
                   help="one row per slide: a file/path/slide column, label, patient (or "
                        "patient_id, case) and any other columns as free metadata")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("remove", help="remove sources (slides, patches) from a library")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="source id, path or file name")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("relabel", help="set the label of sources and their tiles, or of tiles")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source id, path or file name")
    p.add_argument("--tiles", action="append", metavar="ID[,ID...]",
                   help="tile ids (as printed by a search) instead of sources (repeatable)")
    p.add_argument("--label", help="the new label; empty = unknown")
    p.add_argument("--annotations", nargs="?", const=NEXT_TO_SLIDE, default=None,
                   metavar="FILE|DIR",
                   help="instead of --label: each tile of the slides (default: all) takes its "
                        "class from QuPath GeoJSON annotations, as at indexing: one file (one "
                        "slide), a folder of SLIDE.geojson files, or no value for the file "
                        "beside each slide")
    p.add_argument("--min-cover", type=min_cover, default=None, metavar="F",
                   help="with --annotations: a tile takes a class covering at least this "
                        "fraction of it (default 0.5)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("relocate", help="point sources at the folder their files moved to")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("old_dir", metavar="OLD_DIR")
    p.add_argument("new_dir", metavar="NEW_DIR")
    p.add_argument("--json", action="store_true")


def cmd_meta(args) -> int:
    from hashview.library.case_csv import apply_case_csv, read_case_csv

    if args.csv is None:
        return _print_case_data(args)
    result, match = apply_case_csv(args.library, read_case_csv(args.csv))
    report = {**result.to_dict(), "csv": args.csv, "rows_matched": len(match.matched),
              "unmatched": match.unmatched, "sources_without_row": match.without_row}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        listed = ", ".join(match.unmatched[:5]) + (" …" if len(match.unmatched) > 5 else "")
        unmatched = f" ({listed})" if match.unmatched else ""
        say(f"{args.library}: {len(match.matched)} rows matched, {len(match.unmatched)} "
            f"unmatched{unmatched}, {len(match.without_row)} sources without a row; "
            f"{result.summary}")
    return EXIT_PARTIAL if match.unmatched else EXIT_OK


def _print_case_data(args) -> int:
    from hashview.library import Library

    with Library.open(args.library, "r") as library:
        keys = library.metadata_keys()
        rows = [{"id": s.id, "name": s.name, "path": s.path, "label": s.label,
                 "patient": s.patient_id, "metadata": library.metadata(s.id)}
                for s in library.sources()]
    if args.json:
        print(json.dumps({"library": args.library, "keys": keys, "sources": rows}, indent=2))
        return EXIT_OK
    say("\t".join(["id", "name", "label", "patient", *keys]))
    for r in rows:
        say("\t".join([str(r["id"]), r["name"], r["label"] or "", r["patient"] or "",
                       *(r["metadata"].get(k, "") for k in keys)]))
    return EXIT_OK


def cmd_remove(args) -> int:
    from hashview.library.editing import remove_sources

    return _report(args, remove_sources(args.library, args.sources))


def cmd_relabel(args) -> int:
    from hashview.cli.search import tile_ids
    from hashview.library.editing import relabel_sources, relabel_tiles

    if args.annotations is not None or args.min_cover is not None:
        return _relabel_from_annotations(args)
    if args.label is None:
        return usage_error("relabel needs --label (or --annotations)")
    if bool(args.sources) == bool(args.tiles):
        return usage_error("relabel takes sources or --tiles (one of the two)")
    if args.tiles:
        try:
            tiles = tile_ids(args.tiles)
        except ValueError as exc:
            return usage_error(str(exc))
        return _report(args, relabel_tiles(args.library, tiles, args.label))
    return _report(args, relabel_sources(args.library, args.sources, args.label))


def _relabel_from_annotations(args) -> int:
    from hashview.annotations.relabel import relabel_from_annotations

    problem = annotation_usage_problem(args)
    if problem or args.label is not None or args.tiles:
        return usage_error(problem or "--annotations relabels slides: no --label or --tiles")
    options = annotation_options(args)
    result = relabel_from_annotations(args.library, args.sources, options)
    code = _report(args, result)
    if not args.json:
        for line in result.details["without_annotations"] + result.details["failed"]:
            say(line)
    return EXIT_PARTIAL if result.details["failed"] else code


def cmd_relocate(args) -> int:
    from hashview.library.editing import relocate

    return _report(args, relocate(args.library, args.old_dir, args.new_dir))


def _report(args, result) -> int:
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        say(f"{args.library}: {result.summary}")
    return EXIT_OK


EDIT_COMMANDS = {"meta": cmd_meta, "remove": cmd_remove, "relabel": cmd_relabel,
                 "relocate": cmd_relocate}
