"""Apply new or corrected QuPath annotations to slides already in a library.

Indexing reads a slide's annotations once, when its tiles are stored; a slide indexed again is
a duplicate and keeps its labels. A pathologist who corrects the outlines in QuPath relabels the
stored tiles with :func:`relabel_from_annotations` (``hashview relabel LIB --annotations``):
every tile of each slide takes the class covering at least ``min_cover`` of it, exactly as at
indexing, and a tile no class covers becomes unlabelled. Codes and tiles are unchanged; the
library is rewritten copy-on-write like any edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from hashview.annotations.qupath import read_annotations
from hashview.annotations.tiles import (AnnotationOptions, annotation_file_for,
                                        expected_annotation_names, label_counts, label_tiles)
from hashview.annotations.types import AnnotationError
from hashview.errors import LibraryError
from hashview.library.editing import Contents, EditResult, edit, resolve_sources


def relabel_from_annotations(path: str | Path, sources: Iterable[int | str] = (),
                             options: Optional[AnnotationOptions] = None) -> EditResult:
    """Relabel the tiles of ``sources`` (ids, paths or file names; default: every slide) by
    their annotation files (``options.where``: one file for one slide, a folder of
    ``SLIDE.geojson``, or None for the file beside each slide).

    A slide without an annotation file, or whose file cannot be read, keeps its labels and is
    listed in the details (``without_annotations``, ``failed``: one line each); the others are
    relabelled. ``details["tile_labels"]`` counts the new labels."""
    options = options or AnnotationOptions()
    specs = list(sources)

    def change(c: Contents) -> dict:
        if specs:
            ids = resolve_sources(path, c.sources, specs)
            patches = [c.sources[i].name for i in ids if c.sources[i].kind != "slide"]
            if patches:
                raise LibraryError(path, f"{patches[0]} is a patch: annotations label slides")
        else:
            ids = [s.id for s in c.sources if s.kind == "slide"]
        if options.where is not None and Path(options.where).is_file() and len(ids) != 1:
            raise LibraryError(path, f"one annotation file for {len(ids)} slides: name the "
                                     "slide, or give a folder of SLIDE.geojson files")
        done, without, failed, labels = [], [], [], []
        for i in ids:
            source = c.sources[i]
            file = annotation_file_for(source.path, options.where)
            if file is None:
                without.append(f"{source.path}: no annotation file "
                               f"({expected_annotation_names(source.path)})")
                continue
            try:
                annotations = read_annotations(file)
            except AnnotationError as exc:
                failed.append(str(exc))
                continue
            rows = c.tile_rows(i)
            size = c.tile_sizes[i]
            new = label_tiles(annotations, c.x[rows], c.y[rows], [size] * source.tile_count,
                              options.min_cover)
            c.label_ids[rows] = [c.label_id(label) for label in new]
            done.append(i)
            labels.extend(new)
        return {"sources": done, "without_annotations": without, "failed": failed,
                "tile_labels": label_counts(labels)}

    def summary(details: dict, _c: Contents) -> str:
        counts = ", ".join(f"{k} {n}" for k, n in details["tile_labels"].items()) or "none"
        return (f"relabelled the tiles of {len(details['sources'])} slides from their "
                f"annotations ({counts}); {len(details['without_annotations'])} without an "
                f"annotation file, {len(details['failed'])} unreadable")

    return edit(path, "relabel", change, summary, lambda d: len(d["sources"]))
