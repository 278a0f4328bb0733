"""Stain transfer: give a patch the colours of another lab's H&E, to measure stain robustness.

A :class:`StainTransfer` is fitted once to a *target* and then re-stains patches with
:meth:`StainTransfer.restain`. The target is an image file, a slide region (``SLIDE@x,y,w,h`` in
level-0 pixels; a slide or large image named alone gives its central region), or a folder, fitted
on a seeded mosaic of up to ``sample`` of its images.

Methods come from torchstain (numpy backend): Macenko (default) separates haematoxylin and eosin
by optical density and swaps in the target's stain vectors; Reinhard matches the mean and spread
of each LAB channel. A patch with almost no tissue (bare glass,
background) is left as it is: it looks alike in every lab, and colour-matching it spreads noise
into blotches. When Macenko fails on a patch with tissue (a singular stain plane, non-finite
values) the patch is re-stained with Reinhard instead, and a patch that defeats both is left as
it is. All are counted in :attr:`StainTransfer.counts` so that a report can say how many
patches were not Macenko-transferred.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Union

import numpy as np
from hashview.errors import HashViewError

METHODS = ("macenko", "reinhard")
TARGET_REGION_SIDE = 2048   # largest region read from a slide or image named without a region
MOSAIC_TILE = 224           # side of each folder image in the mosaic
# Macenko's stain plane needs tissue: fewer optical-density pixels above beta than this
# fraction leaves it to noise (torchstain would divide by ~0 or take percentiles of nothing).
MIN_TISSUE_FRACTION = 0.01
MACENKO_BETA = 0.15         # torchstain's default transparency threshold
MACENKO_IO = 240            # torchstain's default transmitted light


def tissue_fraction(rgb: np.ndarray) -> float:
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / MACENKO_IO)
    return float(np.mean(np.all(od >= MACENKO_BETA, axis=1)))


def _strict(function, *args):
    """Call a torchstain step with numpy's silent NaN/inf turned into errors."""
    with warnings.catch_warnings(), np.errstate(divide="raise", invalid="raise",
                                                over="ignore", under="ignore"):
        warnings.simplefilter("error", RuntimeWarning)
        return function(*args)


_FAILURES = (np.linalg.LinAlgError, FloatingPointError, RuntimeWarning, ValueError, IndexError,
             ZeroDivisionError)


class StainTransfer:
    """Re-stain RGB uint8 patches to a fitted target (see the module notes)."""

    def __init__(self, target_rgb: np.ndarray, method: str = "macenko", name: str = "target"):
        from torchstain.numpy.normalizers import (NumpyMacenkoNormalizer,
                                                  NumpyReinhardNormalizer)
        if method not in METHODS:
            raise HashViewError(None, f"unknown stain method {method!r} "
                                      f"(use {' or '.join(METHODS)})")
        target = _as_rgb(target_rgb, name)
        self.method, self.name = method, name
        self.counts: Counter = Counter()
        self.fallback_reasons: Counter = Counter()  # why Macenko gave way, for the report
        self._reinhard = NumpyReinhardNormalizer()
        self._macenko = NumpyMacenkoNormalizer() if method == "macenko" else None
        try:
            _strict(self._reinhard.fit, target)
            if self._macenko is not None:
                if tissue_fraction(target) < MIN_TISSUE_FRACTION:
                    raise ValueError("almost no tissue")
                _strict(self._macenko.fit, target)
                if not np.all(np.isfinite(self._macenko.HERef)):
                    raise ValueError("stain vectors are not finite")
        except _FAILURES as exc:
            raise HashViewError(name, f"cannot fit a {method} stain target ({exc})") from None

    @classmethod
    def from_reference(cls, method: str, name: str, lab_mean, lab_std, he=None,
                       max_c=None) -> "StainTransfer":
        """A transfer to a reference stored earlier (:meth:`reference`), without its pixels:
        Reinhard's LAB means and spreads, and for Macenko the stain matrix ``he`` (3x2) and
        the 99th-percentile concentrations ``max_c`` (2)."""
        from torchstain.numpy.normalizers import (NumpyMacenkoNormalizer,
                                                  NumpyReinhardNormalizer)
        if method not in METHODS:
            raise HashViewError(name, f"unknown stain method {method!r}")
        transfer = cls.__new__(cls)
        transfer.method, transfer.name = method, name
        transfer.counts, transfer.fallback_reasons = Counter(), Counter()
        transfer._reinhard = NumpyReinhardNormalizer()
        transfer._reinhard.target_means = np.asarray(lab_mean, dtype=np.float32)
        transfer._reinhard.target_stds = np.asarray(lab_std, dtype=np.float32)
        transfer._macenko = None
        if method == "macenko":
            transfer._macenko = NumpyMacenkoNormalizer()
            transfer._macenko.HERef = np.asarray(he, dtype=np.float64)
            transfer._macenko.maxCRef = np.asarray(max_c, dtype=np.float64)
        return transfer

    def reference(self) -> dict:
        """The fitted reference as small arrays (lists), enough for :meth:`from_reference`."""
        found = {"method": self.method, "name": self.name,
                 "lab_mean": np.asarray(self._reinhard.target_means).tolist(),
                 "lab_std": np.asarray(self._reinhard.target_stds).tolist()}
        if self._macenko is not None:
            found.update(he=np.asarray(self._macenko.HERef).tolist(),
                         max_c=np.asarray(self._macenko.maxCRef).tolist())
        return found

    @property
    def fallbacks(self) -> int:
        """Patches with tissue that were not transferred with the chosen method."""
        return self.counts["reinhard_fallback"] + self.counts["unchanged"]

    def restain(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` (HxWx3 uint8) with the target's stain; same shape and dtype."""
        rgb = _as_rgb(rgb, "patch")
        if tissue_fraction(rgb) < MIN_TISSUE_FRACTION:
            # Bare glass or background looks alike in every lab; colour-matching it only
            # spreads noise into blotches (seen with Reinhard on Kather's EMPTY tiles).
            self.counts["no_tissue"] += 1
            return rgb.copy()
        if self._macenko is not None:
            try:
                out = _strict(self._macenko.normalize, rgb, MACENKO_IO, 1, MACENKO_BETA, False)[0]
                self.counts["macenko"] += 1
                return out
            except _FAILURES as exc:
                self.fallback_reasons[str(exc)[:80] or type(exc).__name__] += 1
        try:
            out = _strict(self._reinhard.normalize, rgb)
        except _FAILURES:
            self.counts["unchanged"] += 1
            return rgb.copy()
        self.counts["reinhard" if self._macenko is None else "reinhard_fallback"] += 1
        return out

    def summary(self) -> dict:
        return {"target": self.name, "method": self.method,
                **{k: int(v) for k, v in self.counts.items()},
                "fallback_reasons": dict(self.fallback_reasons)}


def _as_rgb(image, name) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or not array.size:
        raise HashViewError(name, f"expected an RGB uint8 image, got {array.dtype} "
                                  f"{tuple(array.shape)}")
    return array


def read_target_pixels(spec: Union[str, Path], sample: int = 16, seed: int = 0) -> np.ndarray:
    """The RGB pixels a target stands for (see the module notes); one-line errors."""
    from hashview.errors import SourceError
    from hashview.search.query import parse_region
    from hashview.slides import open_source

    text = str(spec)
    path, at, region_text = text.rpartition("@")
    region = None
    if at and not Path(text).exists():
        try:
            region = parse_region(region_text)
        except ValueError as exc:
            raise HashViewError(text, f"unreadable stain target ({exc})") from None
    else:
        path = text
    if Path(path).is_dir():
        return folder_mosaic(path, sample, seed)
    try:
        with open_source(path) as source:
            width, height = source.dimensions
            if region is None:  # the central region, at most TARGET_REGION_SIDE a side
                w, h = min(width, TARGET_REGION_SIDE), min(height, TARGET_REGION_SIDE)
                region = ((width - w) // 2, (height - h) // 2, w, h)
            x, y, w, h = region
            return np.asarray(source.read_region((x, y), 0, (w, h)).convert("RGB"))
    except SourceError as exc:
        raise HashViewError(path, f"unreadable stain target ({exc.reason})") from None


def folder_mosaic(folder: Union[str, Path], sample: int = 16, seed: int = 0) -> np.ndarray:
    """A square-ish mosaic of up to ``sample`` seeded-random images of ``folder`` (recursive)."""
    from hashview.errors import SourceError
    from hashview.slides.folders import IMAGE_EXTENSIONS, walk_files
    from hashview.tiling import load_patch

    files = [p for p in walk_files(folder) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise HashViewError(folder, "no images to fit a stain target to")
    picked = np.random.default_rng(seed).permutation(len(files))[:max(1, sample)]
    tiles = []
    for index in sorted(picked):
        try:
            tiles.append(np.asarray(load_patch(files[index], MOSAIC_TILE)))
        except SourceError:
            continue  # one bad file does not spoil a mosaic of many
    if not tiles:
        raise HashViewError(folder, "none of the sampled images could be read")
    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    mosaic = np.empty((rows * MOSAIC_TILE, columns * MOSAIC_TILE, 3), dtype=np.uint8)
    for i in range(rows * columns):  # a short last row repeats tiles rather than adding blank
        r, c = divmod(i, columns)
        mosaic[r * MOSAIC_TILE:(r + 1) * MOSAIC_TILE,
               c * MOSAIC_TILE:(c + 1) * MOSAIC_TILE] = tiles[i % len(tiles)]
    return mosaic


def fit_stain_target(spec: Union[str, Path], method: str = "macenko", sample: int = 16,
                     seed: int = 0, name: str = "") -> StainTransfer:
    """A :class:`StainTransfer` fitted to an image file, ``SLIDE@x,y,w,h`` or a folder."""
    return StainTransfer(read_target_pixels(spec, sample, seed), method, name or str(spec))
