"""A missed face: one whose pixels the output left as they were.

Every anonymizer repaints the middle of a face, so we compare only the central part of the box
(the edges may legitimately lie outside a pasted ellipse). Re-encoding alone moves a region's mean
absolute difference by about one grey level at JPEG quality 95 (under 2 in the real photos);
a blurred or regenerated face moves it by well over 10. The default threshold sits between.
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]

UNCHANGED_MEAN_ABS_DIFF = 4.0  # grey levels (0..255); at or below: the face region is unchanged
CENTRAL_SHARE = 0.6  # compare the central 60 % of the box's width and height


def central_region(box: Box, shape: tuple[int, ...], share: float = CENTRAL_SHARE) -> tuple[slice, slice]:
    """Row and column slices of the box's central part, clipped to the image (at least one pixel)."""
    height, width = shape[:2]
    x0, y0, x1, y1 = box
    cut_x, cut_y = (x1 - x0) * (1 - share) / 2, (y1 - y0) * (1 - share) / 2
    left = min(max(int(round(x0 + cut_x)), 0), width - 1)
    top = min(max(int(round(y0 + cut_y)), 0), height - 1)
    right = max(min(int(round(x1 - cut_x)), width), left + 1)
    bottom = max(min(int(round(y1 - cut_y)), height), top + 1)
    return slice(top, bottom), slice(left, right)


def region_change(original: np.ndarray, output: np.ndarray, box: Box) -> float:
    """Mean absolute difference (grey levels) between the two images inside the box's central part."""
    if original.shape != output.shape:
        raise ValueError(f"images differ in size: {original.shape} vs {output.shape}")
    rows, cols = central_region(box, original.shape)
    before = original[rows, cols].astype(np.float32)
    after = output[rows, cols].astype(np.float32)
    return float(np.abs(before - after).mean())


def is_unchanged(change: float, threshold: float = UNCHANGED_MEAN_ABS_DIFF) -> bool:
    return change <= threshold
