"""Patch folders and the user's list of inputs.

Choices (kept deliberately simple and predictable):

- Walking is recursive, in sorted order of the path relative to the root (so results never depend
  on the file system's listing order), skips hidden files and folders (``.DS_Store``, ``._x.png``
  AppleDouble files) and follows symlinked folders once (real paths are tracked, so loops end).
- A patch's label comes from ``labels.csv`` in the root folder when it lists the file; otherwise
  from the *top-level* class subfolder (``root/TUMOR/patient7/a.png`` -> ``TUMOR``, the
  torchvision ``ImageFolder`` convention); files directly in the root have no label.
- ``labels.csv`` columns are matched by name: ``path`` (or ``file``/``filename``), ``label`` (or
  ``class``) and optional ``patient_id`` (or ``patient``), so ``path,patient_id,x,y,label`` works.
- ``expand_inputs``: a file named on the command line is always one slide item (a plain PNG given
  directly is tiled like a slide); inside a folder, slide formats are slide items and plain images
  are patch items (one tile each). A ``.tif``/``.tiff`` in a folder is a slide when OpenSlide
  recognises it (a tiled pyramid) and a patch otherwise (Kather-style striped tiles).
- One rule says whether an image is a patch or a slide, for indexing a folder, for a search with
  an image file (CLI, scripts, the app) and for a drop on the app (:func:`image_kind`): slide
  formats are slides, and so is a plain image larger than :data:`PATCH_MAX_SIDE` on either side
  (squashed into one tile it would lose its detail: it is tiled, or searched by region).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import HashViewError, SourceError, printable
from .openslide_source import load_openslide

# Formats only ever used for whole slides (never for patches).
SLIDE_EXTENSIONS = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif",
                              ".svslide", ".dcm"})
# Plain image formats; .tif/.tiff may also be pyramidal slides (see is_slide_file).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
LABELS_FILE = "labels.csv"

_PATH_COLUMNS = ("path", "file", "filename")
_LABEL_COLUMNS = ("label", "class")
_PATIENT_COLUMNS = ("patient_id", "patient")


@dataclass(frozen=True)
class PatchEntry:
    path: Path
    label: str | None = None
    patient_id: str | None = None


@dataclass(frozen=True)
class InputItem:
    path: Path
    kind: str  # "slide" (tiled on a grid) or "patch" (the whole image is one tile)
    label: str | None = None
    patient_id: str | None = None


def walk_files(root: str | Path) -> list[Path]:
    """All regular files under ``root`` (recursive), sorted by relative path, hidden ones skipped."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    visited: set[str] = set()

    def visit(folder: Path, relative: str) -> None:
        real = os.path.realpath(folder)
        if real in visited:  # a symlink loop or a second link to a folder already walked
            return
        visited.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return  # unreadable subfolder: skip it rather than abort the whole walk
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child_relative = f"{relative}{entry.name}"
            try:
                if entry.is_dir():  # follows symlinks; loops are stopped by `visited`
                    visit(Path(entry.path), child_relative + "/")
                elif entry.is_file():
                    found.append((child_relative, Path(entry.path)))
            except OSError:
                continue

    visit(root, "")
    found.sort(key=lambda pair: pair[0])
    return [path for _, path in found]


def _pick_column(fieldnames: list[str], candidates: tuple[str, ...]) -> str | None:
    normalised = {name.strip().lower(): name for name in fieldnames if name}
    for candidate in candidates:
        if candidate in normalised:
            return normalised[candidate]
    return None


def _relative_key(path: str | Path) -> str:
    """Normalise a relative path so ``./a\\b.png`` and ``a/b.png`` match."""
    return os.path.normpath(str(path).strip().replace("\\", "/")).replace("\\", "/")


def read_labels_csv(csv_path: str | Path) -> dict[str, tuple[str | None, str | None]]:
    """``{relative path: (label, patient_id)}`` from a labels file; empty cells become ``None``."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fieldnames = reader.fieldnames or []
            path_column = _pick_column(fieldnames, _PATH_COLUMNS)
            label_column = _pick_column(fieldnames, _LABEL_COLUMNS)
            patient_column = _pick_column(fieldnames, _PATIENT_COLUMNS)
            if path_column is None or label_column is None:
                missing = "path" if path_column is None else "label"
                raise SourceError(csv_path, f"missing column '{missing}' (header: "
                                            f"{','.join(fieldnames) or 'empty'})")
            labels = {}
            for row in reader:
                relative = (row.get(path_column) or "").strip()
                if not relative:
                    continue
                label = (row.get(label_column) or "").strip() or None
                patient = None
                if patient_column is not None:
                    patient = (row.get(patient_column) or "").strip() or None
                labels[_relative_key(relative)] = (label, patient)
            return labels
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SourceError(csv_path, f"cannot read labels: {' '.join(str(error).split())}") from None


def _labeller(root: Path) -> Callable[[Path], tuple[str | None, str | None]]:
    """A function giving ``(label, patient_id)`` for a file under ``root``."""
    csv_path = root / LABELS_FILE
    from_csv = read_labels_csv(csv_path) if csv_path.is_file() else {}

    def label_of(path: Path) -> tuple[str | None, str | None]:
        relative = path.relative_to(root)
        listed = from_csv.get(_relative_key(relative.as_posix()))
        if listed is not None:
            return listed
        return (relative.parts[0] if len(relative.parts) > 1 else None), None

    return label_of


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


# Patches of public sets are 50-1024 px (IDC 50, Kather 150, PanNuke 256, CRC-100K 224); an
# image larger than this on either side is treated as a (small) slide.
PATCH_MAX_SIDE = 1024


def image_size(path: str | Path) -> tuple[int, int] | None:
    """A plain image's (width, height) from its header; ``None`` when Pillow cannot tell."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # a corrupt header's warning is not a second line
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                return image.size
    except Exception:  # noqa: BLE001  (unreadable or a decompression bomb: whoever reads it
        return None    # says why, in one line)


def image_kind(path: str | Path) -> str:
    """"slide" or "patch": the one rule (module notes) for what an image file is."""
    if is_slide_file(path):
        return "slide"
    size = image_size(path)
    return "slide" if size is not None and max(size) > PATCH_MAX_SIDE else "patch"


def is_slide_file(path: str | Path) -> bool:
    """Whether a file inside a folder should be tiled as a whole slide (see module notes)."""
    suffix = Path(path).suffix.lower()
    if suffix in SLIDE_EXTENSIONS:
        return True
    if suffix in (".tif", ".tiff"):
        openslide = load_openslide()
        if openslide is None:
            return False
        try:
            return openslide.OpenSlide.detect_format(str(path)) is not None
        except Exception:  # noqa: BLE001  (an unreadable header just means "not a slide")
            return False
    return False


def _require_folder(folder: Path) -> None:
    if not folder.exists():
        raise SourceError(folder, "no such folder")
    if not folder.is_dir():
        raise SourceError(folder, "not a folder")


def scan_patch_folder(folder: str | Path) -> list[PatchEntry]:
    """Every image file under ``folder`` with its label and patient, in deterministic order.

    Raises :class:`SourceError` for a missing folder, an unreadable ``labels.csv`` or a folder
    without images.
    """
    folder = Path(folder)
    _require_folder(folder)
    label_of = _labeller(folder)
    entries = [PatchEntry(path, *label_of(path)) for path in walk_files(folder) if _is_image(path)]
    if not entries:
        raise SourceError(folder, "no images found")
    return entries


def _expand_folder(folder: Path) -> Iterator[InputItem]:
    label_of = _labeller(folder)
    for path in walk_files(folder):
        if is_slide_file(path):
            yield InputItem(path, "slide")
        elif _is_image(path):
            size = image_size(path)  # a large plain image: tiled, not squashed (image_kind)
            if size is not None and max(size) > PATCH_MAX_SIDE:
                yield InputItem(path, "slide")
            else:
                yield InputItem(path, "patch", *label_of(path))


# A library stores paths as UTF-8 text, so a name holding other bytes (e.g. Latin-1 from an old
# archive) could be neither stored nor reopened from a search hit: it is refused up front.
NOT_UTF8_REASON = "file name is not valid UTF-8; rename the file to index it"


def is_utf8_path(path: str | Path) -> bool:
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes came in as lone surrogates
        return False
    return True


def expand_inputs(paths) -> tuple[list[InputItem], list[HashViewError]]:
    """Turn command-line paths into items to index, collecting problems instead of raising.

    Items keep the order of ``paths`` (and sorted order inside each folder); a file reached twice
    is listed once, at its first position.
    """
    items: list[InputItem] = []
    errors: list[HashViewError] = []
    seen: set[str] = set()

    def add(item: InputItem) -> None:
        key = os.path.realpath(item.path)
        if key in seen:
            return
        seen.add(key)
        if not is_utf8_path(item.path):
            errors.append(SourceError(printable(os.fspath(item.path)), NOT_UTF8_REASON))
        else:
            items.append(item)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                found = list(_expand_folder(path))
            except SourceError as error:  # e.g. a broken labels.csv: skip the whole folder
                errors.append(error)
                continue
            if not found:
                errors.append(SourceError(path, "no slides or images found"))
            for item in found:
                add(item)
        elif path.is_file():
            add(InputItem(path, "slide"))
        elif path.exists():
            errors.append(SourceError(path, "not a regular file or folder"))
        else:
            errors.append(SourceError(path, "no such file or folder"))
    return items, errors
