"""The ``hashview`` command: no arguments opens the app, a sub-command runs the CLI.

Every sub-command calls the same core functions as the app. Bad input ends with a non-zero exit
and one line on stderr (``hashview: <file>: <reason>``), never a traceback; ``--json`` prints a
machine-readable result on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from hashview import __version__
from hashview.cli.annotations import (add_annotation_options, annotation_options,
                                      annotation_usage_problem, label_summary)
from hashview.cli.cluster import add_engine_options, add_merge_parser, cmd_merge, engine_problem
from hashview.cli.edit import EDIT_COMMANDS, add_edit_parser
from hashview.cli.geojson import add_geojson_option
from hashview.cli.models import cmd_eval, cmd_explain, cmd_models, cmd_train
from hashview.cli.search import (add_refine_options, cmd_check, cmd_heatmap, cmd_index_build,
                                 cmd_search, say_check_after_indexing)
from hashview.cli.support import (BATCH_SIZE, EXIT_FAILED, EXIT_OK, FRACTION,
                                  NON_NEGATIVE_INT, POSITIVE_INT, POSITIVE_NUMBER,
                                  TRAIN_BATCH_SIZE, code_bits, int_list, model_input_size,
                                  print_index_report, progress_bar, say, say_lines, target_mpp,
                                  tile_size, usage_error)
from hashview.errors import HashViewError

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpp", type=target_mpp, default=None,
                   help="target resolution in µm/px (default: the model's, else 0.5, about 20x)")
    p.add_argument("--tile-size", type=tile_size, default=None,
                   help="tile side in pixels (default: the model's, else 224)")
    p.add_argument("--min-tissue", type=FRACTION, default=0.5,
                   help="minimum tissue fraction of a kept tile, 0..1 (default 0.5)")
    p.add_argument("--stride", type=POSITIVE_INT, default=None,
                   help="grid step in pixels at the target resolution, at least 1/8 of the tile "
                        "size (default: tile size)")
    p.add_argument("--max-tiles", type=POSITIVE_INT, default=None,
                   help="seeded random subsample of at most this many tiles per slide")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0,
                   help="seed of the subsample (default 0)")


ARCH_NAMES = ("hatdh", "dch", "dafh", "lgffem", "mth")


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
    p.add_argument("--model", "-m", default=None,
                   help="model name, .safetensors path or training output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=BATCH_SIZE, default=None)
    p.add_argument("--stain-normalise", metavar="REF", default=None,
                   help="new library: re-stain every tile, and every later query, to this "
                        "reference stain (an image, SLIDE@x,y,w,h or a folder)")
    p.add_argument("--stain-normalise-method", default="macenko", choices=["macenko", "reinhard"])
    _add_tiling_args(p)
    add_annotation_options(p)
    add_engine_options(p)
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of the model on the library's labels at the end "
                        "(hashview check, 300 queries)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("search", help="find the tiles most similar to a patch or slide region")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("query", metavar="QUERY", help="image file, or a slide with --region")
    p.add_argument("--region", metavar="X,Y,W,H", help="level-0 region of a slide to search with")
    p.add_argument("--whole-slide", action="store_true",
                   help="search with the whole slide: rank the library's slides and cases "
                        "(median over a mosaic of the slide of the minimum Hamming distance)")
    p.add_argument("--top-k", "-k", type=POSITIVE_INT, default=10)
    p.add_argument("--exclude-source", action="store_true",
                   help="leave out hits from the query's own slide (recognised by its "
                        "content, also when moved or copied)")
    p.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                   help="only return tiles with this label (repeatable)")
    p.add_argument("--source", action="append", dest="sources", type=NON_NEGATIVE_INT,
                   metavar="ID",
                   help="only return tiles of this source id (repeatable)")
    p.add_argument("--patient", action="append", dest="patients", metavar="PATIENT",
                   help="only return tiles of this patient's slides (repeatable; with "
                        "--source, both must hold)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only return tiles of sources whose case data has this value (label, "
                        "patient or a metadata key; case-insensitive; repeatable: all must hold)")
    p.add_argument("--model", "-m", default=None,
                   help="model file or training output folder to encode the query with "
                        "(default: the library's model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "multihash"],
                   help="auto: exact for small libraries, an approximate index (built once and "
                        "saved next to the library) for large ones; flat: always exact")
    p.add_argument("--json", action="store_true")
    add_refine_options(p)
    add_geojson_option(p)

    p = sub.add_parser("index-build", help="build and save a library's approximate search index")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("--kind", default="auto", choices=["auto", "ivf", "multihash"],
                   help="auto: only when the library is large enough to need one")
    p.add_argument("--json", action="store_true")

    add_edit_parser(sub)

    add_merge_parser(sub)

    p = sub.add_parser("info", help="describe a library")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("check", help="how well the library's model tells the library's own "
                                     "labels apart (each patient's tiles held out)")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("-k", type=POSITIVE_INT, default=10, help="hits per vote (default 10)")
    p.add_argument("--queries", type=POSITIVE_INT, default=1000,
                   help="labelled tiles searched, about as many per label (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample (default 0)")
    p.add_argument("--models", metavar="M[,M...]|all", default=None,
                   help="compare these models (names or files; all: every trained model) on "
                        "labelled tiles read again from their files")
    p.add_argument("--tiles", type=POSITIVE_INT, default=2000,
                   help="with --models: labelled tiles read and encoded (default 2000)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("models", help="list the bundled and user models; install a trained one")
    p.add_argument("--install", metavar="PATH",
                   help="install a trained model (its .safetensors file, or the --out folder of "
                        "hashview train) among the user models, usable by name here and in the "
                        "app; replaces an installed model of the same name")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="train a hashing model on a labelled patch folder")
    p.add_argument("data", metavar="DATA", nargs="+",
                   help="patch folder (class subfolders or labels.csv); with --annotations, "
                        "slides or folders of slides")
    # spelled out: reading hashview.models.card_limits.ARCHITECTURES here would load torch for
    # every command (a test keeps the two lists equal)
    p.add_argument("--arch", required=True, help=f"architecture ({', '.join(ARCH_NAMES)})")
    p.add_argument("--bits", type=code_bits, required=True,
                   help="code length, a multiple of 8 (descriptor dimensions for lgffem)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the model, its split and checkpoints")
    p.add_argument("--epochs", type=POSITIVE_INT, default=None,
                   help="default: the start model's recipe (30 from scratch)")
    p.add_argument("--batch-size", type=TRAIN_BATCH_SIZE, default=None,
                   help="default: the start model's recipe (64 from scratch)")
    p.add_argument("--lr", type=POSITIVE_NUMBER, default=None)
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--split", metavar="FILE", default=None,
                   help="split JSON to train on (default: made from --protocol and --seed)")
    p.add_argument("--protocol", default=None, choices=["hatdh", "patient"],
                   help="hatdh (default): 70/30 per class; patient: no patient on both sides "
                        "(the default for annotated slides of two or more patients)")
    p.add_argument("--input-size", type=model_input_size, default=None,
                   help="model input side in pixels (default: the start model's, else the "
                        "architecture's)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", metavar="MODEL", default=None,
                       help="start from this trained model's weights (same arch, any code "
                            "length; name, .safetensors path or training folder) instead of "
                            "the architecture's default start model")
    start.add_argument("--from-scratch", action="store_true",
                       help="start from random weights, not the default start model")
    p.add_argument("--whole-network", action="store_true",
                   help="train every layer of the start for its recipe's epochs (at most 10) "
                        "instead of refitting only its hash layer on its features (the "
                        "default from a start; from scratch the whole network trains anyway)")
    p.add_argument("--keep-held-out", action="store_true",
                   help="save the held-out run's model; skip the final retrain on all patches")
    p.add_argument("--accept-worse", action="store_true",
                   help="exit 0 even when the model collapsed or is worse than its start")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="further training option (e.g. triplet_mode=batch-hard), repeatable")
    add_annotation_options(p, training=True)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="retrieval metrics of a model on a labelled patch folder")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--model", "-m", default=None,
                   help="model name, .safetensors path or training output folder")
    p.add_argument("--split", metavar="FILE", default=None,
                   help="split JSON (default: the model's own split for this folder, "
                        "else --protocol over --seeds)")
    p.add_argument("--protocol", default="hatdh", choices=["hatdh", "patient"])
    p.add_argument("--seeds", type=int_list(0), default=(0, 1, 2, 3, 4),
                   help="comma-separated split seeds (default 0,1,2,3,4)")
    p.add_argument("--baseline", default=None, help="evaluate a baseline instead (lsh-pixels)")
    p.add_argument("--bits", type=code_bits, default=64, help="code length of the baseline")
    p.add_argument("--plot", metavar="PNG", default=None, help="write P@k and P-R curves")
    p.add_argument("--stain-target", action="append", default=[], metavar="[NAME=]PATH",
                   help="also query with the test images re-stained to this target (an image, "
                        "SLIDE@x,y,w,h or a folder), beside the in-set numbers; repeatable")
    p.add_argument("--stain-method", default="macenko", choices=["macenko", "reinhard"])
    p.add_argument("--normalise", metavar="REF", default=None,
                   help="stain-normalise every image, database and queries, to this reference "
                        "(an image, SLIDE@x,y,w,h or a folder) before encoding")
    p.add_argument("--normalise-method", default="macenko", choices=["macenko", "reinhard"])
    p.add_argument("--queries", metavar="FOLDER", default=None,
                   help="cross-folder: DATA is the whole database, FOLDER's images the queries "
                        "(classes DATA lacks are dropped and counted)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("explain", help="Grad-CAM maps of what makes a hit match its query")
    p.add_argument("query", metavar="QUERY", help="image file, or SLIDE@x,y,w,h (level-0 region)")
    p.add_argument("hit", metavar="HIT", help="image file, or SLIDE@x,y,w,h (level-0 region)")
    p.add_argument("--model", "-m", default=None,
                   help="model name, .safetensors path or training output folder")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    p.add_argument("--out", "-o", default="overlay.png", metavar="PNG",
                   help="side-by-side figure to write (default overlay.png)")
    p.add_argument("--opacity", type=FRACTION, default=0.5, help="heat map opacity, 0..1")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("heatmap", help="colour every indexed tile of a slide by its "
                                       "similarity to a query")
    p.add_argument("library", metavar="LIB.h5")
    p.add_argument("query", metavar="QUERY", help="image file, or SLIDE@x,y,w,h (level-0 region)")
    p.add_argument("--slide", required=True, help="the indexed slide to colour")
    p.add_argument("--out", "-o", default="map.png", metavar="PNG",
                   help="the map to write (default map.png)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="measure indexing throughput, search latency and sizes")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--quick", dest="mode", action="store_const", const="quick",
                       help="a smoke run of a few seconds per section")
    speed.add_argument("--full", dest="mode", action="store_const", const="full",
                       help="the real numbers (minutes; the default)")
    p.add_argument("--only", default=None, metavar="NAME[,NAME]",
                   help="run only these sections (throughput, baseline, region, query, "
                        "footprint, cases; archive, 10^8 tiles, runs only when named)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="scratch folder for slides and libraries (default /tmp/hashview-bench)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="write every section's table and raw numbers as JSON")
    p.add_argument("--markdown", default=None, metavar="OUT", help="write the tables as Markdown")
    p.add_argument("--update-docs", action="store_true",
                   help="rewrite the sections' blocks in docs/benchmarks.md (full mode only)")

    p = sub.add_parser("demo", help="index the bundled sample slide and patches, run a sample query")
    p.add_argument("--library", default=None, metavar="LIB.h5",
                   help="where to build the demo library (default: the user data folder)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("install-desktop",
                       help="add HashView to the application menu, file associations and icons "
                            "(Linux, under $XDG_DATA_HOME)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("uninstall-desktop", help="remove what install-desktop added")
    p.add_argument("--json", action="store_true")
    return parser


def cmd_index(args) -> int:
    from hashview.indexing import model_tiling
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.session import LibrarySession
    from hashview.tiling import TilingParams

    if annotation_usage_problem(args):
        return usage_error(annotation_usage_problem(args))
    if engine_problem(args):
        return usage_error(engine_problem(args))
    model = load_model(args.model or DEFAULT_MODEL)
    try:  # each value passed its option's check; together (stride vs tile size) they may not
        params = model_tiling(
            model.card, TilingParams(min_tissue=args.min_tissue, max_tiles=args.max_tiles,
                                     seed=args.seed),
            tile_size=args.tile_size, target_mpp=args.mpp)
        params = dataclasses.replace(params, stride=args.stride)
    except ValueError as exc:
        return usage_error(f"--stride/--tile-size: {exc}")
    bar = progress_bar(not args.json)
    from hashview.stain_reference import fit_reference_text

    stain = (fit_reference_text(args.stain_normalise, args.stain_normalise_method)
             if args.stain_normalise else None)
    if args.engine == "ray":
        from hashview.cli.cluster import index_on_cluster

        result = index_on_cluster(args, model, params, bar, stain)
    else:
        session = LibrarySession(args.library, model=model, device=args.device)
        result = session.add(args.sources, progress=bar, params=params,
                             batch_size=args.batch_size, annotations=annotation_options(args),
                             stain_reference=stain)
    bar.close()
    code = print_index_report(result, args.library, "already indexed", args.json)
    if result.tile_labels and not args.json:
        say(label_summary(result.tile_labels))
    if result.added and not args.json and not args.no_check:
        say_check_after_indexing(args.library)
    if args.annotations is not None and result.skipped and not args.json:
        say(f"{len(result.skipped)} already indexed keep their labels; to apply these "
            f"annotations to them: hashview relabel {args.library} --annotations")
    return code


def cmd_info(args) -> int:
    from hashview.library import Library

    from hashview.search.check_record import headline, of_library

    with Library.open(args.library, mode="r") as library:
        stats = library.stats()
    kept = of_library(args.library, stats)  # the last check on its labels, while it holds
    stats["check"] = (headline(kept) if kept else None) or "none kept for the library as it is now"
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
    else:
        width = max(map(len, stats), default=0)
        for key, value in stats.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, (list, tuple)):  # e.g. the metadata keys
                value = ", ".join(map(str, value)) or "none"
            say(f"{key.replace('_', ' '):>{width}}: {value}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from hashview.bench import DEFAULT_WORKDIR
    from hashview.bench.runner import DOCS_BENCHMARKS, bench_command, resolve_names, run_cli

    mode = args.mode or "full"
    if args.update_docs and mode != "full":
        return usage_error("--update-docs records full-mode numbers only; add --full")
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        resolve_names(only)
    except ValueError as exc:
        return usage_error(str(exc))
    markdown = run_cli(
        mode, only, Path(args.workdir) if args.workdir else DEFAULT_WORKDIR,
        Path(args.json_out) if args.json_out else None,
        Path(args.markdown) if args.markdown else None,
        DOCS_BENCHMARKS if args.update_docs else None,
        command=bench_command([f"--{mode}"] + (["--only", args.only] if only else [])
                              + (["--update-docs"] if args.update_docs else [])),
        log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown)
    return EXIT_OK


def cmd_demo(args) -> int:
    from hashview.demo import run_demo

    output = run_demo(library_path=args.library, progress=progress_bar(not args.json))
    if args.json:
        print(json.dumps(output, indent=2, default=str))
    else:
        say_lines(output["text"])
    return EXIT_OK


def _print_refreshed(report: list) -> None:
    for entry in report:
        if entry["ran"] and not entry.get("returncode"):
            say(f"ran {entry['tool']}")
        elif entry["ran"]:
            say(f"warning: {entry['tool']} failed: {entry.get('reason')}", err=True)
        else:
            say(f"skipped {entry['tool']} ({entry['reason']})")


def cmd_install_desktop(args) -> int:
    from hashview.desktop_entry import install

    result = install()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for path in result["written"]:
        say(f"wrote {path}")
    for path in result["unchanged"]:
        say(f"unchanged {path}")
    _print_refreshed(result["refreshed"])
    say(f"HashView is in the application menu (Exec={result['exec']})")
    return EXIT_OK


def cmd_uninstall_desktop(args) -> int:
    from hashview.desktop_entry import uninstall

    result = uninstall()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for path in result["removed"]:
        say(f"removed {path}")
    if not result["removed"]:
        say(f"nothing to remove under {result['data_home']}")
    _print_refreshed(result["refreshed"])
    return EXIT_OK


COMMANDS = {"index": cmd_index, "search": cmd_search, "index-build": cmd_index_build,
            "info": cmd_info, "check": cmd_check, "models": cmd_models,
            "train": cmd_train, "eval": cmd_eval, "demo": cmd_demo,
            "explain": cmd_explain, "heatmap": cmd_heatmap, "install-desktop": cmd_install_desktop,
            "uninstall-desktop": cmd_uninstall_desktop, "bench": cmd_bench, **EDIT_COMMANDS,
            "merge": cmd_merge}


def _open_app(paths: Sequence[str]) -> int:
    """Start the desktop app; one line and ``EXIT_FAILED`` when it cannot start here."""
    import importlib.util

    from hashview.gui.platform_check import window_problem

    if importlib.util.find_spec("PySide6") is None:
        say("hashview: the desktop app is not installed (it needs Qt: pip install "
            "'hashview[app]'); the commands in 'hashview --help' work without it", err=True)
        return EXIT_FAILED
    problem = window_problem()  # before Qt loads: it aborts when it has no display or library
    if problem:
        say(problem, err=True)
        return EXIT_FAILED
    try:
        from hashview.gui.app import run_app
    except ImportError as exc:  # a broken Qt install (the check above could not tell)
        say(f"hashview: the desktop app cannot load Qt: {exc}", err=True)
        return EXIT_FAILED
    return run_app(list(paths))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0] not in COMMANDS and not argv[0].startswith("-")
                    and Path(argv[0]).exists()):
        return _open_app(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a reader that left is noticed inside the try
        return code
    except HashViewError as exc:
        say(f"hashview: {exc.message}", err=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        say("hashview: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # The reader of our output left (``hashview info LIB | head -1``): nothing more can be
        # shown, so stop quietly. Python's flush of stdout at exit would fail again and print
        # a warning, so stdout is pointed at devnull first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
