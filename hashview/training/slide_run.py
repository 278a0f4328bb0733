"""``train_from_annotated_slides``: train on the annotated tiles of slides (QuPath GeoJSON).

The tiles a class covers are cut at the start model's tiling into ``out_dir/annotated-tiles/``
(:mod:`hashview.annotations.patches`), then trained on like any labelled patch folder
(:func:`~hashview.training.folder_run.train_from_folder`). Each slide is one patient unless a
patient id is given, so with two or more patients the default split is patient-level: no
slide's tiles are on both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from hashview.annotations.tiles import AnnotationOptions
from hashview.errors import HashViewError
from hashview.progress import ProgressCallback

TILES_FOLDER = "annotated-tiles"


def annotated_slides(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The slides under ``paths`` (files or folders) and one-line reasons for bad inputs."""
    from hashview.slides import expand_inputs

    items, errors = expand_inputs([Path(p) for p in paths])
    return [Path(i.path) for i in items if i.kind == "slide"], [e.message for e in errors]


def train_from_annotated_slides(paths: Sequence[str | Path], arch: str, bits: int, out_dir,
                                annotations: Optional[AnnotationOptions] = None,
                                patients: Optional[Mapping[str, str]] = None,
                                protocol: Optional[str] = None,
                                progress: Optional[ProgressCallback] = None, **options):
    """Train ``arch``-``bits`` on the annotated tiles of the slides under ``paths``.

    ``annotations`` says where the files are and the cover fraction (default: beside each
    slide, 0.5); only tiles with a class are used. ``protocol`` defaults to "patient" with two
    or more patients, else "hatdh". Other arguments are those of ``train_from_folder``. The
    result's ``tiles`` is the :class:`~hashview.annotations.patches.AnnotatedTiles` cut.
    """
    from hashview.annotations.patches import cut_annotated_tiles
    from hashview.indexing import model_tiling
    from hashview.models import DEFAULT_MODEL, load_model
    from hashview.models.store import rewrite_card
    from hashview.training.defaults import start_model_name
    from hashview.training.folder_run import train_from_folder

    slides, failed = annotated_slides(paths)
    if not slides:
        raise HashViewError(None, failed[0] if failed else "no slides to train on")
    start = start_model_name(arch, options.get("init_from"), options.get("from_scratch", False))
    params = model_tiling(load_model(start or DEFAULT_MODEL).card)
    tiles = cut_annotated_tiles(slides, Path(out_dir) / TILES_FOLDER,
                                annotations or AnnotationOptions(), params, patients, progress)
    tiles.failed[:0] = failed
    if protocol is None:
        protocol = _default_protocol(tiles)
    result = train_from_folder(Path(out_dir) / TILES_FOLDER, arch, bits, out_dir,
                               protocol=protocol, progress=progress, **options)
    # The tiles' resolution is known here (a patch folder's is not): indexing with the model
    # then reads slides at the scale it was trained at.
    result.card = rewrite_card(result.model_path, target_mpp=params.target_mpp)
    result.tiles = tiles
    return result


def _default_protocol(tiles) -> str:
    """"patient" when every class has tiles from two patients or more (else the held-out part
    could hold classes the training part never saw), otherwise "hatdh" with a warning."""
    import csv

    with open(tiles.folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    patients_of: dict[str, set] = {}
    for row in rows:
        patients_of.setdefault(row["label"], set()).add(row["patient_id"])
    single = sorted(label for label, seen in patients_of.items() if len(seen) < 2)
    if not single:
        return "patient"
    if len(set(tiles.patients.values())) >= 2:
        tiles.warnings.append(
            f"split by tile, not by patient: {', '.join(single[:3])}"
            f"{' and more' if len(single) > 3 else ''} annotated on one patient's slides only")
    return "hatdh"
