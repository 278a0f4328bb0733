"""The search commands: ``search`` (tiles, regions, whole slides, refined by example),
``heatmap``, ``index-build`` and ``check``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from hashview.cli.geojson import export_search, report_export
from hashview.cli.support import (EXIT_FAILED, EXIT_OK, progress_bar, say, say_lines,
                                  usage_error)
from hashview.errors import HashViewError


def cmd_search(args) -> int:
    from hashview.library.metadata import parse_conditions
    from hashview.search.query import parse_region
    from hashview.session import LibrarySession

    try:
        region = parse_region(args.region) if args.region else None
    except ValueError as exc:
        return usage_error(str(exc))
    if args.whole_slide and (region or args.labels or args.sources or args.patients
                             or args.where):
        return usage_error("--whole-slide ranks whole slides: it takes no --region, --label, "
                           "--source, --patient or --where")
    try:
        positive, negative = tile_ids(args.positive), tile_ids(args.negative)
        where = parse_conditions(args.where or ())
    except ValueError as exc:
        return usage_error(str(exc))
    if args.whole_slide and (positive or negative):
        return usage_error("--whole-slide ranks whole slides: it takes no --positive or "
                           "--negative")
    session = LibrarySession(args.library, model=args.model, device=args.device,
                             index=args.index)
    if args.whole_slide:
        if args.geojson:
            return usage_error("--geojson writes tile hits; --whole-slide ranks whole slides")
        return _search_cases(session, args)
    searcher = session.load()
    for note in searcher.index_notes:
        say(f"hashview: {note}", err=True)
    if searcher.needs_index_build():
        _build_index_to_keep(searcher)
    query = (args.query, region) if region else args.query
    sources = set(args.sources) if args.sources else None
    if args.patients:
        of_patients = _sources_of_patients(session, args.patients)
        if of_patients is None:
            return EXIT_FAILED
        sources = of_patients if sources is None else sources & of_patients
    if where:
        matching = _sources_where(session, where)
        sources = matching if sources is None else sources & matching
    filters = dict(k=args.top_k, exclude_source=args.exclude_source,
                   labels=set(args.labels) if args.labels else None, sources=sources)
    if positive or negative:
        result = session.refine(query, positive, negative, **filters)
    else:
        result = session.search(query, **filters)
    exported = export_search(args, session.path, result.hits, region)
    if args.json:
        print(json.dumps({"query": args.query, "region": region, **result.to_dict(),
                          "index": searcher.index_info,
                          **({"geojson": exported.to_dict()} if exported else {})}, indent=2))
    else:
        say_lines(result.to_text())
    return report_export(exported, args.json)


def _sources_of_patients(session, patients) -> "set[int] | None":
    """Source ids of the patients' slides; None (said in one line) for a patient the library
    has no slide of."""
    records = session.sources
    ids = {r.id for r in records if r.patient_id in set(patients)}
    missing = sorted(set(patients) - {r.patient_id for r in records})
    if missing:
        known = sorted({r.patient_id for r in records if r.patient_id})
        say(f"hashview: {session.path}: no slide of patient {missing[0]!r} in this library "
            f"({len(known)} patients with ids{': ' + ', '.join(known[:5]) if known else ''}"
            f"{' …' if len(known) > 5 else ''})", err=True)
        return None
    return ids


def _sources_where(session, conditions) -> set[int]:
    """Source ids meeting every ``(key, value)`` condition; an unknown key is one line."""
    from hashview.library import Library
    from hashview.library.metadata import sources_where

    with Library.open(session.path, "r") as library:
        return sources_where(library, conditions)


def add_refine_options(parser) -> None:
    """``--positive`` / ``--negative``: refine a search by example (library tile ids)."""
    for option, what in (("--positive", "good: search again towards them"),
                         ("--negative", "bad: search again away from them")):
        parser.add_argument(option, action="append", metavar="ID[,ID...]",
                            help=f"library tile ids (as printed by a search) of hits marked "
                                 f"{what} (repeatable)")


def tile_ids(values) -> list[int]:
    """``["12,40", "7"]`` -> ``[12, 40, 7]``; ``ValueError`` (one line) for anything else."""
    ids = []
    for value in values or ():
        for part in value.split(","):
            if not part.strip().isdigit():
                raise ValueError(f"tile ids are whole numbers separated by commas "
                                 f"(e.g. 12,40), got {value!r}")
            ids.append(int(part))
    return ids


def _search_cases(session, args) -> int:
    from hashview.search.cases import search_cases

    bar = progress_bar(not args.json)
    try:
        result = search_cases(session, args.query, k=args.top_k,
                              exclude_source=args.exclude_source, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps({"query": args.query, **result.to_dict()}, indent=2))
    else:
        say_lines(result.to_text())
    return EXIT_OK


def cmd_heatmap(args) -> int:
    from hashview.fileio import atomic_write_bytes
    from hashview.search.heatmap import render_map, similarity_map
    from hashview.search.query import parse_image_or_region
    from hashview.session import LibrarySession
    from hashview.slides import open_source

    try:
        query = parse_image_or_region(args.query)
    except ValueError as exc:
        return usage_error(str(exc))
    session = LibrarySession(args.library, device=args.device)
    simmap = similarity_map(session, query, args.slide)
    with open_source(args.slide) as source:
        image = render_map(source, simmap)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(args.out, buffer.getvalue())
    if args.json:
        print(json.dumps({"out": args.out, **simmap.to_dict()}, indent=2))
    else:
        closest = min(t[3] for t in simmap.tiles)
        say(f"{args.out}: {len(simmap.tiles)} tiles of {Path(args.slide).name} coloured by "
            f"distance to the query (closest {closest} bits; scale 0-{simmap.scale_max})")
    return EXIT_OK


def _build_index_to_keep(searcher) -> None:
    """Build the approximate index a search wants, once: it is saved next to the library for
    the searches to come. One search alone is answered faster exactly than by building, so
    where the index cannot be saved (a read-only share) the search is exact, and says why."""
    from hashview.search import sidecar

    try:
        sidecar.check_sidecar_writable(searcher.sidecar_path)
    except HashViewError as exc:
        note = f"{exc.message}; searching exactly"
        searcher.index_notes.append(note)
        print(f"hashview: {note}", file=sys.stderr)
        return
    print(f"hashview: building the {searcher.wanted_kind} index of {searcher.n_tiles:,} "
          "tiles (once)", file=sys.stderr)
    for note in searcher.build_index().notes:  # e.g. a disk that filled up: not saved
        print(f"hashview: {note}", file=sys.stderr)


def cmd_index_build(args) -> int:
    from hashview.search.query import build_library_index

    bar = progress_bar(not args.json)
    try:
        summary = build_library_index(args.library, args.kind, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary["sidecar"] is None:
        say(f"{args.library}: {summary['tiles']:,} tiles; {summary['message']}")
    else:
        params = ", ".join(f"{k}={v}" for k, v in summary["params"].items() if k != "kind")
        say(f"{args.library}: {summary['kind']} index of {summary['tiles']:,} tiles ({params}; "
            f"recall@10 {summary['recall']:.3f}) in {summary['seconds']:.1f} s -> "
            f"{summary['sidecar']}")
    return EXIT_OK


def say_check_after_indexing(library) -> None:
    """After indexing: the check's verdict on the library's labels (and what to try when it is
    bad), or nothing when there is nothing to judge; a check that cannot run is a warning
    line."""
    from hashview.search.check_record import remember
    from hashview.search.self_check import ADVICE, check_after_indexing

    try:
        result = check_after_indexing(library)
    except HashViewError as exc:
        # a warning, as the indexing itself succeeded (a damaged library is refused in one
        # line by the next command that reads it)
        say(f"warning: check on the library's labels not run: {exc.message}", err=True)
        return
    if result is not None:
        say(f"check on its labels: {result.verdict()}")
        if not result.fine:
            say(ADVICE)
        _say_not_kept(remember(result))


def _say_not_kept(problem) -> None:
    if problem:  # the check stands; only its record for later searches is missing
        say(f"warning: {problem}", err=True)


def _compare(args) -> int:
    from hashview.search.model_comparison import compare_models, model_names

    names = model_names(args.models)
    if not names:
        return usage_error("check: --models names no model")
    _say_report(args, _with_bar(args, lambda bar: compare_models(
        args.library, names, k=args.k, max_tiles=args.tiles, seed=args.seed,
        device=args.device, progress=bar)))
    return EXIT_OK


def _with_bar(args, work):
    """``work(progress)`` with a progress bar on stderr unless ``--json``."""
    bar = progress_bar(not args.json)
    try:
        return work(bar)
    finally:
        bar.close()


def _say_report(args, report) -> None:
    """A check's or comparison's report: its lines, or JSON with ``--json``."""
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        say_lines("\n".join(report.lines()))


def cmd_check(args) -> int:
    from hashview.search.check_record import remember
    from hashview.search.self_check import check_library

    if args.models:
        return _compare(args)
    result = _with_bar(args, lambda bar: check_library(
        args.library, k=args.k, max_queries=args.queries, seed=args.seed, progress=bar))
    _say_report(args, result)
    _say_not_kept(remember(result))
    return EXIT_OK
