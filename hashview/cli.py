"""The ``hashview`` command: no arguments opens the app, a sub-command runs the CLI.

Every sub-command calls the same core functions as the app. Bad input ends with a non-zero exit
and one line on stderr (``hashview: <file>: <reason>``), never a traceback; ``--json`` prints a
machine-readable result on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from hashview import __version__
from hashview.errors import HashViewError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpp", type=float, default=0.5,
                   help="target resolution in µm/px (default 0.5, about 20x)")
    p.add_argument("--tile-size", type=int, default=224, help="tile side in pixels (default 224)")
    p.add_argument("--min-tissue", type=float, default=0.5,
                   help="minimum tissue fraction of a kept tile (default 0.5)")
    p.add_argument("--stride", type=int, default=None,
                   help="grid step in pixels at the target resolution (default: tile size)")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="seeded random subsample of at most this many tiles per slide")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashview",
        description="Histopathology image search with deep hashing. "
                    "Run without arguments to open the app.")
    parser.add_argument("--version", action="version", version=f"HashView {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("index", help="tile and encode slides, images or patch folders into a library")
    p.add_argument("sources", nargs="+", metavar="SRC", help="slide, image or patch folder")
    p.add_argument("--library", "-l", required=True, metavar="LIB.h5")
    p.add_argument("--model", "-m", default=None, help="model name or .safetensors path")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None)
    _add_tiling_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("search", help="find the tiles most similar to a patch or slide region")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("query", metavar="QUERY", help="image file, or a slide with --region")
    p.add_argument("--region", metavar="X,Y,W,H", help="level-0 region of a slide to search with")
    p.add_argument("--top-k", "-k", type=int, default=10)
    p.add_argument("--exclude-source", action="store_true",
                   help="leave out hits from the query's own slide")
    p.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                   help="only return tiles with this label (repeatable)")
    p.add_argument("--source", action="append", dest="sources", type=int, metavar="ID",
                   help="only return tiles of this source id (repeatable)")
    p.add_argument("--model", "-m", default=None,
                   help="model file to encode the query with (default: the library's model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="describe a library")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("models", help="list the bundled and user models")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="index the bundled sample slide and patches, run a sample query")
    p.add_argument("--library", default=None, metavar="LIB.h5",
                   help="where to build the demo library (default: the user data folder)")
    p.add_argument("--json", action="store_true")
    return parser


def _progress_bar(enabled: bool):
    from hashview.progress import StderrBar

    return StderrBar(enabled=enabled)


def cmd_index(args) -> int:
    from hashview.indexing import index_paths
    from hashview.models import DEFAULT_MODEL
    from hashview.tiling import TilingParams

    params = TilingParams(tile_size=args.tile_size, target_mpp=args.mpp,
                          min_tissue=args.min_tissue, stride=args.stride,
                          max_tiles=args.max_tiles, seed=args.seed)
    bar = _progress_bar(not args.json)
    result = index_paths(args.sources, args.library, model=args.model or DEFAULT_MODEL,
                         params=params, device=args.device, batch_size=args.batch_size,
                         progress=bar)
    bar.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for failure in result.failed:
            print(f"hashview: {failure}", file=sys.stderr)
        print(f"{args.library}: added {len(result.added)} source(s), {result.tiles_added} tiles; "
              f"{len(result.skipped)} already indexed; {len(result.failed)} failed")
    if result.failed:
        return EXIT_PARTIAL if result.added or result.skipped else EXIT_FAILED
    return EXIT_OK


def cmd_search(args) -> int:
    from hashview.query import open_search, parse_region, search_file

    try:
        region = parse_region(args.region) if args.region else None
    except ValueError as exc:
        print(f"hashview: {exc}", file=sys.stderr)
        return EXIT_USAGE
    searcher, encoder = open_search(args.library, args.device, model=args.model)
    result = search_file(searcher, encoder, args.query, region=region, k=args.top_k,
                         exclude_source=args.exclude_source,
                         labels=set(args.labels) if args.labels else None,
                         sources=set(args.sources) if args.sources else None)
    if args.json:
        print(json.dumps({"query": args.query, "region": region, **result.to_dict()}, indent=2))
        return EXIT_OK
    print(result.to_text())
    return EXIT_OK


def cmd_info(args) -> int:
    from hashview.library import Library

    with Library.open(args.library, mode="r") as library:
        stats = library.stats()
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
    else:
        width = max(map(len, stats), default=0)
        for key, value in stats.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            print(f"{key.replace('_', ' '):>{width}}: {value}")
    return EXIT_OK


def cmd_models(args) -> int:
    from hashview.models import DEFAULT_MODEL, list_models

    cards = list_models()
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
        return EXIT_OK
    for card in cards:
        default = "*" if card.name == DEFAULT_MODEL else " "
        status = "trained" if card.trained else "untrained (seeded initial weights)"
        metrics = ", ".join(f"{k}={v}" for k, v in (card.metrics or {}).items()
                            if isinstance(v, (int, float)))
        print(f"{default} {card.name:<14} {card.arch:<7} {card.bits:>4} bits  {status}"
              f"{'  ' + metrics if metrics else ''}")
    print("* default model")
    return EXIT_OK


def cmd_demo(args) -> int:
    from hashview.demo import run_demo

    output = run_demo(library_path=args.library, progress=_progress_bar(not args.json))
    if args.json:
        print(json.dumps(output, indent=2, default=str))
    else:
        print(output["text"])
    return EXIT_OK


COMMANDS = {"index": cmd_index, "search": cmd_search, "info": cmd_info, "models": cmd_models,
            "demo": cmd_demo}


def _open_app(paths: Sequence[str]) -> Optional[int]:
    """Start the desktop app when it is installed; ``None`` if there is no app yet."""
    try:
        from hashview.gui.app import run_app
    except ImportError:
        return None
    return run_app(list(paths))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")
                    and Path(argv[0]).exists()):
        code = _open_app(argv)
        if code is not None:
            return code
        if not argv:
            parser.print_help()
            return EXIT_OK
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        return COMMANDS[args.command](args)
    except HashViewError as exc:
        print(f"hashview: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("hashview: interrupted", file=sys.stderr)
        return 130
