"""Export a search's query region and hits as GeoJSON that QuPath imports, one file per slide.

The files follow what QuPath itself writes (File > Export objects as GeoJSON, "FEATURE_COLLECTION";
``PathObjectTypeAdapters`` and ``GsonTools`` in QuPath 0.4 and later): a FeatureCollection whose
features carry a UUID ``id``, a Polygon in level-0 pixels from the image's top left, and
``properties`` with ``objectType``, ``name``, ``classification`` ``{"name", "color": [r, g, b]}``
(QuPath refuses a classification object without its colour), numeric ``measurements`` as a
name -> value object and string ``metadata``.

Every feature is an *annotation*, the query region and the hits alike: QuPath lists annotations
by name in its Annotations tab, so "HashView hit 3" can be found and visited, moved, renamed
or deleted there; detections are not listed, cannot be edited and are meant for thousands of
machine-made objects (cells, tiles), not for ten results to look at.

A patch image's hit is the whole image: there is nothing on it to outline, so patch hits are
counted and skipped rather than written as one file per image with a frame around everything.

Files are named ``<slide name without extension>.hashview.geojson``: QuPath takes any name
(drag the file onto the slide open in QuPath to import its objects), and the ``.hashview`` part
keeps the hits apart from the slide's own ``<slide>.geojson`` annotations, which ``hashview
index --annotations`` reads as tile labels. Two slides with the same name get their full file
names, then a number, so that one export never writes two slides into one file.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from hashview.errors import HashViewError
from hashview.fileio import atomic_write_bytes

SUFFIX = ".hashview.geojson"
QUERY_CLASS, HIT_CLASS = "HashView query", "HashView hit"
QUERY_COLOUR, HIT_COLOUR = (0, 153, 255), (255, 196, 0)
# colours for labelled hits, picked by a checksum of the label so a class keeps its colour from
# one export to the next (QuPath keeps the first colour it sees for a class name)
LABEL_COLOURS = ((230, 25, 75), (60, 180, 75), (145, 30, 180), (245, 130, 48), (70, 240, 240),
                 (240, 50, 230), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128))
DISTANCE, RANK = "HashView distance", "HashView rank"
# characters no file name may hold on Windows, macOS or Linux, and control characters
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


class ExportError(HashViewError):
    """A folder or file the hits cannot be written to (read-only, full, not a folder)."""


@dataclass(frozen=True)
class QueryRegion:
    """The query as a level-0 region ``(x, y, w, h)`` of the slide at ``slide``."""

    slide: str
    region: tuple[int, int, int, int]


@dataclass(frozen=True)
class ExportedFile:
    path: str
    slide: str  # the slide's path, as the library stores it (or the query's)
    hits: int
    query: bool  # the query region is in this file


@dataclass
class GeoJsonExport:
    folder: str
    written: list[ExportedFile] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line each: "<file>: <reason>"
    skipped_patch_hits: int = 0

    @property
    def note(self) -> Optional[str]:
        """A line about the patch hits left out, or None."""
        n = self.skipped_patch_hits
        if not n:
            return None
        return (f"{n} hit{'s' if n > 1 else ''} on patch images not exported "
                "(a patch is a whole image: nothing on it to outline)")

    def to_dict(self) -> dict:
        return {"folder": self.folder, "files": [vars(f) for f in self.written],
                "failed": list(self.failed), "skipped_patch_hits": self.skipped_patch_hits}


def export_search_hits(library: str | os.PathLike, hits: Sequence, folder: str | os.PathLike,
                       query: Optional[QueryRegion] = None) -> GeoJsonExport:
    """:func:`export_geojson` for hits of the library at ``library`` (read for which sources
    are patch images)."""
    from hashview.library import Library

    with Library.open(library, mode="r") as opened:
        patches = frozenset(r.id for r in opened.sources() if r.kind == "patch")
    return export_geojson(hits, folder, query, patches)


def export_geojson(hits: Sequence, folder: str | os.PathLike,
                   query: Optional[QueryRegion] = None,
                   patch_sources: frozenset = frozenset()) -> GeoJsonExport:
    """Write ``hits`` (:class:`hashview.search.searcher.Hit`, in rank order) and the ``query``
    region as QuPath GeoJSON into ``folder`` (created if missing), one file per slide.

    ``patch_sources``: library source ids that are patch images (skipped, counted). Each file
    is written atomically; a file that cannot be written is one line in ``failed`` and the
    others are still written. Raises :class:`ExportError` when ``folder`` cannot be made.
    """
    folder = Path(folder)
    _make_folder(folder)
    export = GeoJsonExport(folder=str(folder))
    groups = slide_collections(hits, query, patch_sources)
    export.skipped_patch_hits = sum(1 for h in hits if h.source_id in patch_sources)
    for group, name in zip(groups, unique_file_names([g.slide for g in groups])):
        path = folder / name
        data = json.dumps(group.collection(), indent=2, ensure_ascii=False, allow_nan=False)
        try:
            atomic_write_bytes(path, data.encode("utf-8"))
        except OSError as exc:
            export.failed.append(ExportError(path, _reason(exc)).message)
            continue
        export.written.append(ExportedFile(str(path), group.slide,
                                           len(group.features) - group.query, group.query))
    return export


@dataclass
class SlideFeatures:
    """What goes into one slide's file: the query region first when ``query``, then hits."""

    slide: str
    features: list = field(default_factory=list)
    query: bool = False

    def collection(self) -> dict:
        return {"type": "FeatureCollection", "features": self.features}


def slide_collections(hits: Sequence, query: Optional[QueryRegion] = None,
                      patch_sources: frozenset = frozenset()) -> list[SlideFeatures]:
    """The features per slide: the query's slide first, then the others in the order of their
    best hit."""
    groups: dict[str, SlideFeatures] = {}
    if query is not None:
        groups[_slide_key(query.slide)] = SlideFeatures(
            query.slide, [query_feature(query.region)], query=True)
    for hit in hits:
        if hit.source_id not in patch_sources:
            key = _slide_key(hit.source_path)
            groups.setdefault(key, SlideFeatures(hit.source_path)).features.append(
                hit_feature(hit))
    return list(groups.values())


def query_feature(region: tuple[int, int, int, int]) -> dict:
    x, y, w, h = (int(v) for v in region)
    return _feature((x, y, w, h), QUERY_CLASS, QUERY_CLASS, QUERY_COLOUR,
                    metadata={"HashView region": f"{x},{y},{w},{h}"})


def hit_feature(hit) -> dict:
    """One hit as a QuPath annotation: its tile's square, named by its rank (1 = best)."""
    label = hit.label if hit.label else HIT_CLASS
    return _feature((hit.x, hit.y, hit.size, hit.size), f"HashView hit {hit.rank + 1}", label,
                    label_colour(hit.label),
                    measurements={DISTANCE: float(hit.distance), RANK: hit.rank + 1},
                    metadata={"HashView tile id": str(hit.tile_index),
                              "HashView source": str(hit.source_path)})


def label_colour(label: Optional[str]) -> tuple[int, int, int]:
    if not label:
        return HIT_COLOUR
    return LABEL_COLOURS[zlib.crc32(label.encode("utf-8", "surrogatepass"))
                         % len(LABEL_COLOURS)]


def _feature(box, name: str, class_name: str, colour, measurements: Optional[dict] = None,
             metadata: Optional[dict] = None) -> dict:
    x, y, w, h = (int(v) for v in box)
    ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    properties = {"objectType": "annotation", "name": name,
                  "classification": {"name": class_name, "color": list(colour)}}
    if measurements:
        properties["measurements"] = measurements
    if metadata:
        properties["metadata"] = metadata
    return {"type": "Feature", "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": properties}


def unique_file_names(slides: Sequence[str]) -> list[str]:
    """``<stem>.hashview.geojson`` per slide; slides sharing a stem get their file name, and
    those sharing that too their position (1-based) in ``slides``."""
    stems = [_safe_name(_stem(Path(s).name)) for s in slides]
    fulls = [_safe_name(Path(s).name) for s in slides]
    names = [stem if stems.count(stem) == 1 else full for stem, full in zip(stems, fulls)]
    names = [name if names.count(name) == 1 else f"{name} ({i})"
             for i, name in enumerate(names, start=1)]
    return [name + SUFFIX for name in names]


def _stem(name: str) -> str:
    """The name without its extension; ``x.ome.tif`` -> ``x`` as QuPath names it."""
    stem = Path(name).stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def _safe_name(name: str) -> str:
    name = _UNSAFE_NAME.sub("_", name).strip(" .")
    return name[:150] or "slide"


def _slide_key(path: str) -> str:
    """The same slide named two ways (relative, through a link) gives the same key."""
    return os.path.normcase(os.path.realpath(path))


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(folder, "not a folder; the hits go into a folder, one file per slide")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(folder, _reason(exc)) from None


def _reason(exc: OSError) -> str:
    from hashview.library.files import write_failure_reason

    return write_failure_reason(exc)
