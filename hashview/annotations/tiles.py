"""Label a slide's tiles by the annotated regions that cover them.

A tile takes the class of the annotations covering at least ``min_cover`` of its area; where
several classes do, the one covering most (ties: the first name in sorted order). Annotations of
one class are merged first, so overlapping outlines of a class are not counted twice, and holes
stay uncovered. Annotations without a class label nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import shapely

from hashview.annotations.qupath import read_annotations
from hashview.annotations.types import Annotation, AnnotationError

DEFAULT_MIN_COVER = 0.5
ANNOTATION_SUFFIX = ".geojson"
UNLABELLED = "unlabelled"  # the key counting tiles no class covers, in label counts


@dataclass(frozen=True)
class AnnotationOptions:
    """How indexing and training take annotations.

    ``where``: one annotation file (for one slide), a folder holding ``SLIDE.geojson`` or
    ``SLIDE.svs.geojson`` per slide, or None for the file next to each slide.
    ``annotated_only``: keep only the tiles that got a class.
    """

    where: Optional[Path] = None
    min_cover: float = DEFAULT_MIN_COVER
    annotated_only: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_cover <= 1:
            raise ValueError(f"min_cover must be in (0, 1], not {self.min_cover}")


def annotation_file_for(slide: str | Path, where: Optional[str | Path] = None) -> Optional[Path]:
    """The annotation file of ``slide``: ``where`` itself when it is a file, else
    ``SLIDE.geojson`` or ``SLIDE.svs.geojson`` in the folder ``where`` (default: the slide's)."""
    slide = Path(slide)
    if where is not None and Path(where).is_file():
        return Path(where)
    folder = Path(where) if where is not None else slide.parent
    for name in (slide.stem + ANNOTATION_SUFFIX, slide.name + ANNOTATION_SUFFIX):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def expected_annotation_names(slide: str | Path) -> str:
    """The file names :func:`annotation_file_for` looks for, for a one-line message."""
    return " or ".join(name + ANNOTATION_SUFFIX for name in (Path(slide).stem, Path(slide).name))


def tile_cover(annotations: Sequence[Annotation], xs, ys, sizes) -> tuple[list[str], np.ndarray]:
    """Class names (sorted) and, per class and tile, the fraction of the tile's square
    (level-0 ``x, y, size``) that the class's annotations cover: shape ``(classes, tiles)``."""
    regions: dict[str, list] = {}
    for annotation in annotations:
        if annotation.label is not None:
            regions.setdefault(annotation.label, []).append(annotation.geometry)
    names = sorted(regions)
    xs, ys, sizes = (np.asarray(v, dtype=np.float64) for v in (xs, ys, sizes))
    cover = np.zeros((len(names), len(xs)))
    if not len(xs) or not names:
        return names, cover
    boxes = shapely.box(xs, ys, xs + sizes, ys + sizes)
    tree = shapely.STRtree(boxes)
    for row, name in enumerate(names):
        region = shapely.union_all(regions[name])
        shapely.prepare(region)
        hits = tree.query(region, predicate="intersects")
        if not len(hits):
            continue
        # Tiles wholly inside need no intersection: the prepared test is cheap, clipping is not.
        inside = shapely.contains_properly(region, boxes[hits])
        fractions = np.ones(len(hits))
        edge = boxes[hits[~inside]]
        fractions[~inside] = shapely.area(shapely.intersection(edge, region)) / shapely.area(edge)
        cover[row, hits] = fractions
    return names, cover


def label_tiles(annotations: Sequence[Annotation], xs, ys, sizes,
                min_cover: float = DEFAULT_MIN_COVER) -> list[Optional[str]]:
    """One class name per tile (None where no class covers ``min_cover`` of it)."""
    names, cover = tile_cover(annotations, xs, ys, sizes)
    labels: list[Optional[str]] = [None] * cover.shape[1]
    if not names:
        return labels
    best = cover.argmax(axis=0)
    best_cover = cover[best, np.arange(cover.shape[1])]
    for tile in np.flatnonzero(best_cover >= min_cover - 1e-9):  # exactly half counts as half
        labels[tile] = names[best[tile]]
    return labels


def label_counts(labels: Sequence[Optional[str]]) -> dict[str, int]:
    """``{class: tiles}``, plus ``"unlabelled"`` when some tiles got no class."""
    counts: dict[str, int] = {}
    for label in labels:
        key = UNLABELLED if label is None else label
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def labelled_tiles(slide: str | Path, tiles: Sequence, options: AnnotationOptions,
                   warnings: list[str]) -> tuple[list, list[Optional[str]]]:
    """``tiles`` of ``slide`` (objects with level-0 ``x, y, size``) and their labels from the
    slide's annotation file; with ``options.annotated_only``, only the labelled ones.

    A slide without an annotation file keeps its tiles unlabelled, with a warning. Raises
    :class:`AnnotationError` for a file that cannot be read, and, with ``annotated_only``, for a
    slide with no annotation file or no labelled tile (so that it is not stored empty).
    """
    path = annotation_file_for(slide, options.where)
    if path is None:
        expected = expected_annotation_names(slide)
        if options.annotated_only:
            raise AnnotationError(slide, f"no annotation file ({expected})")
        warnings.append(f"{slide}: no annotation file ({expected}); its tiles are unlabelled")
        return list(tiles), [None] * len(tiles)
    annotations = read_annotations(path, warnings=warnings)
    labels = label_tiles(annotations, [t.x for t in tiles], [t.y for t in tiles],
                         [t.size for t in tiles], options.min_cover)
    if not options.annotated_only:
        return list(tiles), labels
    kept = [(tile, label) for tile, label in zip(tiles, labels) if label is not None]
    if not kept:
        raise AnnotationError(path, f"no tile of {Path(slide).name} is at least "
                                    f"{options.min_cover:.0%} inside a classified annotation")
    return [tile for tile, _ in kept], [label for _, label in kept]
