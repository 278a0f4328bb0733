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
EXPLAIN_PANEL = 256  # side of each of the four panels of ``hashview explain --out``


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mpp", type=float, default=None,
                   help="target resolution in µm/px (default: the model's, else 0.5, about 20x)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile side in pixels (default: the model's, else 224)")
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

    p = sub.add_parser("train", help="train a hashing model on a labelled patch folder")
    p.add_argument("data", metavar="DATA", help="patch folder: class subfolders or labels.csv")
    p.add_argument("--arch", required=True, help="architecture (hatdh, dch)")
    p.add_argument("--bits", type=int, required=True, help="code length, a multiple of 8")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the model, its split and checkpoints")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", metavar="FILE", default=None,
                   help="split JSON to train on (default: made from --protocol and --seed)")
    p.add_argument("--protocol", default="hatdh", choices=["hatdh", "patient"],
                   help="hatdh: 70/30 per class; patient: no patient on both sides")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="further training option (e.g. triplet_mode=batch-hard), repeatable")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="retrieval metrics of a model on a labelled patch folder")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--model", "-m", default=None, help="model name or .safetensors path")
    p.add_argument("--split", metavar="FILE", default=None,
                   help="split JSON (default: the model's own split for this folder, "
                        "else --protocol over --seeds)")
    p.add_argument("--protocol", default="hatdh", choices=["hatdh", "patient"])
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    p.add_argument("--baseline", default=None, help="evaluate a baseline instead (lsh-pixels)")
    p.add_argument("--bits", type=int, default=64, help="code length of the baseline")
    p.add_argument("--plot", metavar="PNG", default=None, help="write P@k and P-R curves")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("explain", help="Grad-CAM maps of what makes a hit match its query")
    p.add_argument("query", metavar="QUERY", help="image file, or SLIDE@x,y,w,h (level-0 region)")
    p.add_argument("hit", metavar="HIT", help="image file, or SLIDE@x,y,w,h (level-0 region)")
    p.add_argument("--model", "-m", default=None, help="model name or .safetensors path")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++"])
    p.add_argument("--out", "-o", default="overlay.png", metavar="PNG",
                   help="side-by-side figure to write (default overlay.png)")
    p.add_argument("--opacity", type=float, default=0.5, help="heat map opacity, 0..1")
    p.add_argument("--json", action="store_true")

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


def _progress_bar(enabled: bool):
    from hashview.progress import StderrBar

    return StderrBar(enabled=enabled)


def cmd_index(args) -> int:
    from hashview.indexing import index_paths, model_tiling
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.tiling import TilingParams

    model = load_model(args.model or DEFAULT_MODEL)
    params = model_tiling(model.card, TilingParams(min_tissue=args.min_tissue, stride=args.stride,
                                                   max_tiles=args.max_tiles, seed=args.seed),
                          tile_size=args.tile_size, target_mpp=args.mpp)
    bar = _progress_bar(not args.json)
    result = index_paths(args.sources, args.library, model=model, params=params,
                         device=args.device, batch_size=args.batch_size, progress=bar)
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


def _metrics_summary(metrics: dict) -> str:
    """mAP and vote accuracy from a card, mean ± std over its splits when it has several."""
    mean, std = metrics.get("splits_mean") or {}, metrics.get("splits_std") or {}
    parts = []
    for key, name in (("map", "mAP"), ("vote_accuracy@10", "vote@10"),
                      ("balanced_accuracy@10", "balanced@10")):
        if isinstance(mean.get(key), (int, float)):
            spread = f" ± {std[key]:.3f}" if isinstance(std.get(key), (int, float)) else ""
            parts.append(f"{name} {mean[key]:.3f}{spread}")
    if parts:
        seeds = metrics.get("split_seeds") or []
        parts.append(f"({metrics.get('protocol', '?')} protocol, {len(seeds)} split(s))")
    return "  ".join(parts)


def cmd_models(args) -> int:
    from hashview.models import DEFAULT_MODEL, list_models

    cards = list_models()
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
        return EXIT_OK
    for card in cards:
        default = "*" if card.name == DEFAULT_MODEL else " "
        status = "trained" if card.trained else "untrained"
        print(f"{default} {card.name:<12} {card.arch:<6} {card.bits:>4} bits  {status:<9}"
              f"  {_metrics_summary(card.metrics or {})}")
    print("* default model")
    return EXIT_OK


def _parse_options(pairs: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs; values parsed as JSON when they can be (numbers, booleans)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option must be KEY=VALUE, got {pair!r}")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def cmd_train(args) -> int:
    from hashview.training import train_from_folder

    try:
        options = _parse_options(args.option)
    except ValueError as exc:
        print(f"hashview: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.input_size:
        options["input_size"] = args.input_size
    bar = _progress_bar(not args.json)
    result = train_from_folder(args.data, args.arch, args.bits, args.out, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               split_file=args.split, protocol=args.protocol, progress=bar,
                               resume=args.resume, device=args.device, **options)
    bar.close()
    summary = {"model": str(result.model_path), "seconds": round(result.seconds, 1),
               "final_loss": result.history[-1] if result.history else None}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"model written to {result.model_path} ({result.seconds:.0f} s)")
    return EXIT_OK


def cmd_eval(args) -> int:
    from hashview.evaluation import evaluate_baseline, evaluate_model, plot_curves

    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    bar = _progress_bar(not args.json)
    if args.baseline:
        result = evaluate_baseline(args.baseline, args.data, bits=args.bits, split=args.split,
                                   protocol=args.protocol, seeds=seeds, progress=bar)
    else:
        from hashview.models import DEFAULT_MODEL

        result = evaluate_model(args.model or DEFAULT_MODEL, args.data, split=args.split,
                                protocol=args.protocol, seeds=seeds, device=args.device,
                                progress=bar)
    bar.close()
    if args.plot:
        plot_curves(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return EXIT_OK
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    mean, std = result["mean"], result["std"]
    n = len(result.get("splits", [])) or 1
    print(f"{result.get('name') or args.baseline} on {args.data} ({n} split(s), "
          f"{result.get('split_source', args.protocol)})")
    for key in sorted(mean):
        if isinstance(mean[key], (int, float)):
            print(f"  {key:<28} {mean[key]:.4f} ± {std.get(key, 0.0):.4f}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from hashview.demo import run_demo

    output = run_demo(library_path=args.library, progress=_progress_bar(not args.json))
    if args.json:
        print(json.dumps(output, indent=2, default=str))
    else:
        print(output["text"])
    return EXIT_OK


def cmd_explain(args) -> int:
    from hashview.errors import SourceError
    from hashview.explain import explain_pair, load_input, side_by_side
    from hashview.models import DEFAULT_MODEL, load_model

    if not 0.0 <= args.opacity <= 1.0:
        print(f"hashview: --opacity must be between 0 and 1, got {args.opacity}", file=sys.stderr)
        return EXIT_USAGE
    model = load_model(args.model or DEFAULT_MODEL)
    query = load_input(args.query, model.card)
    hit = load_input(args.hit, model.card)
    result = explain_pair(model, query, hit, method=args.method, device="cpu")
    stats = result.stats
    caption = (f"{model.card.name}  {args.method}  similarity {result.similarity:+.3f}  "
               f"hamming {stats['hamming']}/{stats['bits']}")
    figure = side_by_side(query, hit, result, opacity=args.opacity, panel=EXPLAIN_PANEL,
                          caption=caption)
    try:
        figure.save(args.out, format="PNG")
    except (OSError, ValueError) as exc:
        raise SourceError(args.out, f"cannot write the figure ({exc})") from exc
    summary = {"query": args.query, "hit": args.hit, "model": model.card.name,
               "method": args.method, "similarity": result.similarity,
               "similarity_reverse": stats["similarity_ba"], "hamming": stats["hamming"],
               "bits": stats["bits"], "query_map": stats["map_a"], "hit_map": stats["map_b"],
               "query_map_empty": stats["a_empty"], "hit_map_empty": stats["b_empty"],
               "out": str(args.out)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    print(f"{caption}  -> {args.out}")
    for name, key in (("query", "query_map"), ("hit", "hit_map")):
        s = summary[key]
        com = s["centre_of_mass"]
        where = "none (empty map)" if com is None else f"({com[0]:.2f}, {com[1]:.2f})"
        print(f"  {name:<5} map: mean {s['mean']:.3f}  max {s['max']:.3f}  "
              f"above 0.5 {s['frac_above_0_5']:.1%}  centre of mass {where}")
    return EXIT_OK


def _print_refreshed(report: list) -> None:
    for entry in report:
        if entry["ran"] and not entry.get("returncode"):
            print(f"ran {entry['tool']}")
        elif entry["ran"]:
            print(f"warning: {entry['tool']} failed: {entry.get('reason')}", file=sys.stderr)
        else:
            print(f"skipped {entry['tool']} ({entry['reason']})")


def cmd_install_desktop(args) -> int:
    from hashview.desktop import install

    result = install()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for path in result["written"]:
        print(f"wrote {path}")
    for path in result["unchanged"]:
        print(f"unchanged {path}")
    _print_refreshed(result["refreshed"])
    print(f"HashView is in the application menu (Exec={result['exec']})")
    return EXIT_OK


def cmd_uninstall_desktop(args) -> int:
    from hashview.desktop import uninstall

    result = uninstall()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for path in result["removed"]:
        print(f"removed {path}")
    if not result["removed"]:
        print(f"nothing to remove under {result['data_home']}")
    _print_refreshed(result["refreshed"])
    return EXIT_OK


COMMANDS = {"index": cmd_index, "search": cmd_search, "info": cmd_info, "models": cmd_models,
            "train": cmd_train, "eval": cmd_eval, "demo": cmd_demo,
            "explain": cmd_explain, "install-desktop": cmd_install_desktop,
            "uninstall-desktop": cmd_uninstall_desktop}


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
