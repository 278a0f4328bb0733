"""Whole-slide files through OpenSlide (SVS, NDPI, MRXS, SCN, tiled TIFF, DICOM, ...).

``openslide`` is imported lazily so that the rest of HashView (plain images, patch folders) keeps
working on a machine where the OpenSlide library cannot be loaded.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import SourceError
from .base import Source, composite_on_white, frozen


def load_openslide():
    """The ``openslide`` module, or ``None`` when it (or its C library) is not available."""
    try:
        import openslide  # noqa: PLC0415  (optional at import time on purpose)
    except (ImportError, OSError):
        return None
    return openslide


def one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line (C libraries like multi-line messages)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


class OpenSlideSource(Source):
    """A slide opened with ``openslide.OpenSlide``; geometry is read once at open time."""

    kind = "openslide"

    def __init__(self, path: str | Path):
        super().__init__(path)
        openslide = load_openslide()
        if openslide is None:
            raise SourceError(self.path, "OpenSlide is not available on this system")
        self._openslide = openslide
        try:
            self._slide = openslide.OpenSlide(str(self.path))
            self._level_dimensions = tuple(
                (int(w), int(h)) for w, h in self._slide.level_dimensions)
            self._level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
            self._properties = frozen(self._slide.properties)
        except openslide.OpenSlideError as error:
            raise SourceError(self.path, f"cannot open slide: {one_line(error)}") from error
        self._format = openslide.OpenSlide.detect_format(str(self.path))
        self._mpp = _positive_float(self._properties.get(openslide.PROPERTY_NAME_MPP_X))
        self._associated: dict[str, Image.Image] | None = None

    @property
    def vendor(self) -> str | None:
        """OpenSlide's format name, e.g. ``"aperio"`` or ``"generic-tiff"``."""
        return self._format

    @property
    def associated_images(self) -> dict[str, Image.Image]:
        """Decoded on first use (label/macro can be several MB) and then cached."""
        self._check_open()
        if self._associated is None:
            try:
                self._associated = {name: composite_on_white(image) for name, image
                                    in self._slide.associated_images.items()}
            except self._openslide.OpenSlideError as error:
                raise SourceError(self.path, f"cannot read associated images: "
                                             f"{one_line(error)}") from error
        return dict(self._associated)

    def _read_region(self, location, level, size) -> Image.Image:
        try:
            return self._slide.read_region(location, level, size)
        except self._openslide.OpenSlideError as error:
            raise SourceError(self.path, f"cannot read region at {location} level {level}: "
                                         f"{one_line(error)}") from error

    def validate(self) -> None:
        """Decode a few pixels where truncation shows first, so bad files fail at open time.

        Vendor files store level-0 tiles first and the smaller levels after them, so the last
        tile of the coarsest level and the last tile of level 0 are the cheapest canaries.
        """
        for level in sorted({0, self.level_count - 1}):
            level_w, level_h = self.level_dimensions[level]
            side_w, side_h = min(16, level_w), min(16, level_h)
            downsample = self.level_downsamples[level]
            corner = (int((level_w - side_w) * downsample), int((level_h - side_h) * downsample))
            try:
                self.read_region(corner, level, (side_w, side_h))
            except SourceError as error:
                raise SourceError(self.path, f"truncated or corrupt: {error.reason}") from None

    def close(self) -> None:
        if not self._closed:
            self._slide.close()
        super().close()


def _positive_float(value) -> float | None:
    """``float(value)`` when it is a finite positive number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 < number < float("inf") else None
