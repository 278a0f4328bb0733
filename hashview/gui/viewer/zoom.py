"""Zoom limits and magnification presets of the slide viewer.

Magnification follows the microscope convention of :mod:`.overview`: objective = 10 / (µm per
screen pixel), so a preset of 20x means 0.5 µm per screen pixel whatever the scanner. Zooming in
stops at twice the scanned resolution (2 screen pixels per level-0 pixel, 40x on a 20x scan):
past that, the view only enlarges the scanner's pixels and the eye sees blur, not detail.
"""

from __future__ import annotations

from hashview.tiling import ASSUMED_MPP

MAX_ZOOM_OVER_SCAN = 2.0
MIN_DOWNSAMPLE = 1.0 / MAX_ZOOM_OVER_SCAN     # level-0 px per screen px, at the zoom limit
MAGNIFICATION_PRESETS = (1, 5, 10, 20, 40)    # keys 1..5


def scan_magnification(mpp: float | None) -> float:
    """The objective that level 0 corresponds to (20 for 0.5 µm/px; assumed 20 if unknown)."""
    return 10.0 / (mpp or ASSUMED_MPP)


def max_magnification(mpp: float | None) -> float:
    return scan_magnification(mpp) * MAX_ZOOM_OVER_SCAN


def downsample_for_magnification(mpp: float | None, magnification: float) -> float:
    """Level-0 px per screen px that shows ``magnification`` (not clamped to any limit)."""
    return scan_magnification(mpp) / float(magnification)
