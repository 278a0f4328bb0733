"""The annotation options of ``hashview index`` and ``hashview train`` (QuPath GeoJSON)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # the CLI loads the core lazily, per command
    from hashview.annotations.tiles import AnnotationOptions

NEXT_TO_SLIDE = ""  # ``--annotations`` with no value: SLIDE.geojson beside each slide


def min_cover(text: str) -> float:
    """An argparse type: a fraction above 0, at most 1."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction above 0 and at most 1, got {text!r}")
    return value


def add_annotation_options(p: argparse.ArgumentParser, training: bool = False) -> None:
    """``--annotations``, ``--min-cover`` and (indexing only: training keeps only labelled
    tiles) ``--annotated-only``."""
    what = ("train on the tiles of slides that QuPath GeoJSON annotations label"
            if training else "label slide tiles by QuPath GeoJSON annotations")
    p.add_argument("--annotations", nargs="?", const=NEXT_TO_SLIDE, default=None,
                   metavar="FILE|DIR",
                   help=f"{what}: one file (one slide), a folder of SLIDE.geojson / "
                        "SLIDE.svs.geojson files, or no value for the file beside each slide")
    p.add_argument("--min-cover", type=min_cover, default=None, metavar="F",
                   help="a tile takes a class covering at least this fraction of it "
                        "(default 0.5)")
    if not training:
        p.add_argument("--annotated-only", action="store_true",
                       help="keep only the tiles that got a class")
    else:
        p.add_argument("--cases", metavar="CASES.csv",
                       help="patient ids of the slides, from a case CSV as for hashview meta "
                            "(a file/path/slide column and a patient column); a slide without "
                            "a row is its own patient")


def annotation_options(args) -> Optional["AnnotationOptions"]:
    """The options given, or None without ``--annotations`` (then the other two are refused by
    :func:`annotation_usage_problem`)."""
    from hashview.annotations.tiles import DEFAULT_MIN_COVER, AnnotationOptions

    if args.annotations is None:
        return None
    where = Path(args.annotations) if args.annotations != NEXT_TO_SLIDE else None
    cover = args.min_cover if args.min_cover is not None else DEFAULT_MIN_COVER
    return AnnotationOptions(where=where, min_cover=cover,
                             annotated_only=getattr(args, "annotated_only", True))


GEOJSON_SUFFIXES = (".geojson", ".json")


def annotation_usage_problem(args) -> Optional[str]:
    if args.annotations is not None:
        given = Path(args.annotations) if args.annotations != NEXT_TO_SLIDE else None
        if given is not None and not given.is_dir() \
                and given.suffix.lower() not in GEOJSON_SUFFIXES:
            # "--annotations SLIDE.svs": argparse took the slide as the optional value
            return (f"--annotations takes a GeoJSON file or a folder, not {given.name!r}: "
                    "give the slides first, or the annotation file after --annotations")
        return None
    if args.min_cover is not None:
        return "--min-cover needs --annotations"
    if getattr(args, "annotated_only", False):
        return "--annotated-only needs --annotations"
    if getattr(args, "cases", None):
        return "--cases needs --annotations"
    return None


def label_summary(counts: dict[str, int]) -> str:
    """``"tile labels: Dermis 19, Epidermis 10, unlabelled 62"``."""
    return "tile labels: " + ", ".join(f"{label} {n}" for label, n in counts.items())
