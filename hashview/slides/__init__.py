"""Open slides and images behind one interface; list patch folders and command-line inputs.

``open_source`` tries OpenSlide first (it knows the vendor pyramids and their metadata) and falls
back to Pillow for plain images, including striped TIFFs that OpenSlide refuses. Every failure is
a :class:`~hashview.errors.SourceError` whose reason fits on one line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from .base import Source, composite_on_white
from .folders import (IMAGE_EXTENSIONS, LABELS_FILE, PATCH_MAX_SIDE, SLIDE_EXTENSIONS,
                      InputItem, PatchEntry, expand_inputs, image_kind, image_size,
                      is_slide_file, scan_patch_folder, walk_files)
from .image_source import ImageSource, to_rgb
from .openslide_source import OpenSlideSource, load_openslide
from .scale_overrides import apply_stored_mpp

__all__ = [
    "IMAGE_EXTENSIONS", "LABELS_FILE", "PATCH_MAX_SIDE", "SLIDE_EXTENSIONS", "ImageSource",
    "InputItem", "OpenSlideSource", "PatchEntry", "Source", "composite_on_white",
    "expand_inputs", "image_kind", "image_size", "is_slide_file", "open_source",
    "scan_patch_folder", "to_rgb", "walk_files",
]

def open_source(path: str | Path) -> Source:
    """Open a whole-slide file or a plain image. Raises :class:`SourceError` on any problem.

    Order: OpenSlide when it recognises the file (vendor formats and tiled TIFFs); Pillow for
    everything else and for generic TIFFs OpenSlide cannot open. A few pixels are decoded at
    open time so that truncated files are reported now, not in the middle of indexing. A file
    without a scale gets the one the user entered for it, if any (:mod:`.scale_overrides`).
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(path, "no such file")
    if path.is_dir():
        raise SourceError(path, "is a folder (use it as a patch folder)")
    if not path.is_file():
        raise SourceError(path, "not a regular file")
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:  # fail early and clearly on unreadable files
            handle.read(1)
    except PermissionError:
        raise SourceError(path, "permission denied") from None
    except OSError as error:
        raise SourceError(path, f"cannot read: {error.strerror or error}") from None
    if file_size == 0:
        raise SourceError(path, "empty file (0 bytes)")

    openslide = load_openslide()
    if openslide is not None:
        try:
            vendor = openslide.OpenSlide.detect_format(str(path))
        except Exception:  # noqa: BLE001  (detection failing just means "try Pillow")
            vendor = None
        if vendor is not None:
            try:
                source = OpenSlideSource(path)
            except SourceError as error:
                if vendor != "generic-tiff":  # a vendor file OpenSlide cannot open is damaged
                    raise SourceError(path, f"truncated or corrupt: {error.reason}") from None
                source = None  # e.g. a TIFF layout OpenSlide refuses: let Pillow try
            if source is not None:
                try:
                    source.validate()
                except SourceError:
                    source.close()
                    raise
                apply_stored_mpp(source)
                return source

    source = ImageSource(path)
    apply_stored_mpp(source)
    return source
