"""``hashview index --engine ray`` (index on a Ray cluster) and ``hashview merge``."""

from __future__ import annotations

import argparse

from hashview.cli.support import POSITIVE_INT, number_in, print_index_report, progress_bar

ENGINES = ("local", "ray")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The ``index`` options choosing where the work runs."""
    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="local: this process (default); ray: a Ray cluster (pip install "
                        "'hashview[cluster]'), committing into the one library from here")
    p.add_argument("--address", default=None, metavar="auto|ray://HOST:PORT",
                   help="with --engine ray: the cluster to join (default: start a local Ray "
                        "on this machine's cores)")
    p.add_argument("--workers", type=POSITIVE_INT, default=2,
                   help="with --engine ray: encoding actors, each loading the model once "
                        "(default 2)")
    p.add_argument("--gpus-per-worker", type=number_in(0.0), default=0.0, metavar="G",
                   help="with --engine ray: GPUs each actor reserves (default 0: CPU)")


def engine_problem(args) -> str:
    """A usage problem with the engine options, or ""."""
    if args.engine != "ray" and (args.address or args.workers != 2 or args.gpus_per_worker):
        return "--address, --workers and --gpus-per-worker need --engine ray"
    return ""


def index_on_cluster(args, model, params, bar, stain_reference=None):
    """Run ``hashview index`` with ``--engine ray``; returns the IndexReport."""
    from hashview.cli.annotations import annotation_options
    from hashview.cluster import index_with_ray

    return index_with_ray(args.sources, args.library, model=model, params=params,
                          address=args.address, workers=args.workers,
                          gpus_per_worker=args.gpus_per_worker, device=args.device,
                          batch_size=args.batch_size, progress=bar,
                          stain_reference=stain_reference,
                          annotations=annotation_options(args))


def add_merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge libraries built with the same model into one")
    p.add_argument("inputs", nargs="+", metavar="LIB.h5", help="libraries to merge")
    p.add_argument("--into", required=True, metavar="LIB.h5",
                   help="the library to append to (created when missing)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_merge(args) -> int:
    from hashview.cluster import merge_libraries

    bar = progress_bar(not args.json)
    result = merge_libraries(args.inputs, args.into, progress=bar)
    bar.close()
    return print_index_report(result, args.into, "already there", args.json)
