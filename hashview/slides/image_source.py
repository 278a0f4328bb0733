"""Plain images through Pillow: PNG, JPEG, BMP and TIFF (including striped TIFFs OpenSlide refuses).

A plain image is a single-level source. It is decoded once, at open time: that validates the file
(a truncated PNG or JPEG fails here rather than halfway through indexing) and makes every later
``read_region`` a cheap crop. Memory stays bounded because Pillow's decompression-bomb limit
(``Image.MAX_IMAGE_PIXELS``) is enforced — it is read at call time and never changed here.

Resource limit: a plain image of more than ``Image.MAX_IMAGE_PIXELS`` pixels (Pillow's default
is 89,478,485, e.g. 9,459 x 9,459, about 270 MB once decoded to RGB) is refused from its header,
before any pixel is decoded, with ``image too large (N pixels, limit M)``. Whole-slide files that
OpenSlide opens are exempt: they are read region by region and never decoded whole.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import SourceError
from .base import WHITE, Source, composite_on_white, frozen, thumbnail_size

# Resolutions outside this range are almost always placeholders (72 dpi screenshots, 1 px/cm)
# rather than real microscope calibration, so they are ignored.
PLAUSIBLE_MPP = (0.05, 50.0)
_MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 = inch, 3 = centimetre
_TIFF_X_RESOLUTION, _TIFF_RESOLUTION_UNIT = 282, 296

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def check_pixel_limit(path: str | Path, size: tuple[int, int]) -> None:
    """Raise :class:`SourceError` if ``size`` exceeds Pillow's decompression-bomb limit."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = int(size[0]) * int(size[1])
    if limit is not None and pixels > limit:
        raise SourceError(path, f"image too large ({pixels} pixels, limit {int(limit)})")


def open_pillow_image(path: str | Path) -> Image.Image:
    """Open, size-check and fully decode an image file; errors become :class:`SourceError`.

    ``UnidentifiedImageError`` is re-raised untouched so the caller can decide between
    "not an image" and "truncated" by looking at the file's signature.
    """
    try:
        if Path(path).is_dir():
            raise SourceError(path, "is a folder, not an image file")
        with warnings.catch_warnings():
            # Pillow only *warns* between 1x and 2x the limit; we refuse explicitly below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow warns about damaged metadata (e.g. "Corrupt EXIF data"); we report real
            # failures as SourceError instead of leaking warnings into the CLI output.
            warnings.simplefilter("ignore", UserWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        # Over 2x the limit Pillow refuses inside open(); its message carries the pixel count
        # (and twice the limit, so the limit is taken from Pillow's setting instead).
        match = re.search(r"\((\d+) pixels\)", str(error))
        detail = (f"{match.group(1)} pixels, limit {Image.MAX_IMAGE_PIXELS}" if match
                  else one_line_reason(error))
        raise SourceError(path, f"image too large ({detail})") from None
    except UnidentifiedImageError:
        raise
    except FileNotFoundError:
        raise SourceError(path, "no such file") from None
    except PermissionError:
        raise SourceError(path, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise SourceError(path, f"truncated or corrupt: {one_line_reason(error)}") from None
    try:
        check_pixel_limit(path, image.size)
        image.load()
    except SourceError:
        image.close()
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        image.close()
        raise SourceError(path, f"truncated or corrupt: {one_line_reason(error)}") from None
    return image


def one_line_reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it.

    - alpha (RGBA, LA, P with transparency) is composited on white;
    - 16-bit greyscale keeps its full 0..65535 range mapped to 0..255 (a fixed mapping, so two
      tiles of one image or two images of one scanner stay comparable);
    - 32-bit integer and float images have no standard range and are stretched min..max;
    - CMYK, YCbCr, HSV, 1-bit, L and palette images use Pillow's conversions.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        has_alpha = "transparency" in image.info
        return composite_on_white(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode in _ALPHA_MODES:
        return composite_on_white(image)
    if mode in _SIXTEEN_BIT_MODES:
        grey = (np.asarray(image).astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        values = np.nan_to_num(np.asarray(image).astype(np.float64))
        low, high = float(values.min()), float(values.max())
        span = high - low if high > low else 1.0
        grey = np.clip((values - low) * (255.0 / span) + 0.5, 0, 255)
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms  # noqa: PLC0415  (rare path; ImageCms is a heavier import)

        transform = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(image, transform)
    return image.convert("RGB")


def tiff_mpp(image: Image.Image) -> float | None:
    """Microns per pixel from TIFF XResolution/ResolutionUnit, when present and plausible."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    unit = tags.get(_TIFF_RESOLUTION_UNIT, 2)  # the TIFF default unit is the inch
    resolution = tags.get(_TIFF_X_RESOLUTION)
    if unit not in _MICRONS_PER_UNIT or resolution is None:
        return None
    try:
        pixels_per_unit = float(resolution)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not pixels_per_unit > 0:
        return None
    mpp = _MICRONS_PER_UNIT[unit] / pixels_per_unit
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


# File signatures of formats we can read: used only to tell "damaged file of a known kind" from
# "not an image at all" once both readers have refused it.
_SIGNATURES = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def _signature(head: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[128:132] == b"DICM":
        return "DICOM"
    return None


def _not_a(what: str) -> str:
    return f"not {'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def unidentified_reason(path: str | Path, what: str) -> str:
    """Why Pillow could not identify ``path``: damaged file of a known kind, or not an image."""
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return f"{_not_a(what)} file (cannot read it)"
    if file_size == 0:
        return "empty file (0 bytes)"
    kind = _signature(head)
    if kind is None:
        return f"{_not_a(what)} file (unrecognised format)"
    if kind in ("TIFF", "BigTIFF") and len(head) >= 16:
        order = "<" if head[:2] == b"II" else ">"
        offset = (struct.unpack(order + "I", head[4:8])[0] if kind == "TIFF"
                  else struct.unpack(order + "Q", head[8:16])[0])
        if offset >= file_size:
            return (f"truncated or corrupt: TIFF directory at byte {offset} is past the end of "
                    f"the file ({file_size} bytes)")
    return f"truncated or corrupt: {kind} data cannot be decoded"


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, detached from the file
    format: str
    original_mode: str
    mpp: float | None


def decode_image(path: str | Path, what: str = "image") -> DecodedImage:
    """Decode an image file to RGB (EXIF orientation applied) with its TIFF calibration.

    ``what`` names the expected kind of file in the "not a ... file" message.
    """
    try:
        image = open_pillow_image(path)
    except UnidentifiedImageError:
        raise SourceError(path, unidentified_reason(path, what)) from None
    try:
        mpp = tiff_mpp(image)
        try:
            # Camera JPEGs may be stored rotated; show them the way their EXIF says.
            oriented = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, KeyError, TypeError):
            oriented = image
        rgb = to_rgb(oriented)
        if rgb is image:
            rgb = image.copy()  # detach from the file handle that is closed below
        return DecodedImage(rgb, image.format or "unknown", image.mode, mpp)
    except (OSError, ValueError) as error:
        raise SourceError(path, f"cannot convert {image.mode} image to RGB: "
                                f"{one_line_reason(error)}") from None
    finally:
        image.close()


def load_rgb_image(path: str | Path) -> Image.Image:
    """Decode one image file (a patch) to RGB; every failure is a :class:`SourceError`."""
    return decode_image(path).image


class ImageSource(Source):
    """A single-level source backed by one decoded Pillow image (first frame of a TIFF)."""

    kind = "image"

    def __init__(self, path: str | Path):
        super().__init__(path)
        decoded = decode_image(self.path, what="slide or image")
        self._image, self._mpp = decoded.image, decoded.mpp
        properties = {"image.format": decoded.format, "image.mode": decoded.original_mode}
        if self._mpp is not None:
            properties["image.mpp"] = f"{self._mpp:.6g}"
        self._properties = frozen(properties)
        self._level_dimensions = (self._image.size,)

    def _read_region(self, location, level, size) -> Image.Image:
        x, y = location
        width, height = size
        image_w, image_h = self._image.size
        left, top = max(0, x), max(0, y)
        right, bottom = min(image_w, x + width), min(image_h, y + height)
        if left == x and top == y and right == x + width and bottom == y + height:
            return self._image.crop((left, top, right, bottom))
        # Partly or wholly outside: white like OpenSlide's transparent fill after compositing.
        canvas = Image.new("RGB", (width, height), WHITE)
        if right > left and bottom > top:
            canvas.paste(self._image.crop((left, top, right, bottom)), (left - x, top - y))
        return canvas

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        self._check_open()
        target = thumbnail_size(self.dimensions, size)
        if target == self._image.size:
            return self._image.copy()
        # reducing_gap: a fast integer reduce first, then an antialiased Lanczos resample.
        return self._image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)

    def close(self) -> None:
        if not self._closed:
            self._image = Image.new("RGB", (1, 1), WHITE)  # release the decoded pixels
        super().close()
