"""Verification thresholds: where a recogniser's "same person" line falls at a chosen false-accept rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Threshold:
    value: float  # the score threshold
    far: float  # the false-accept rate actually reached at it
    tar: float  # the share of same-identity pairs accepted at it


def threshold_at_far(same: np.ndarray, different: np.ndarray, far: float, higher_is_same: bool = True) -> Threshold:
    """The threshold at which at most ``far`` of the different pairs are accepted (the least strict such one).

    With scores where higher means "same" (cosines), pairs with score > t are accepted; t is the
    (floor(far * n) + 1)-th highest different-pair score, so at most floor(far * n) pairs lie above it.
    For distances (``higher_is_same=False``) the same holds with signs flipped (accept score < t).
    """
    if not 0 <= far < 1:
        raise ValueError(f"the false-accept rate must be in [0, 1), got {far}")
    sign = 1.0 if higher_is_same else -1.0
    impostors = np.sort(sign * np.asarray(different, dtype=np.float64))[::-1]
    if len(impostors) == 0 or len(same) == 0:
        raise ValueError("calibration needs same-person and different-person pairs")
    allowed = int(math.floor(far * len(impostors)))
    threshold = impostors[allowed] if allowed < len(impostors) else impostors[-1] - 1e-9
    accepted_far = float(np.mean(impostors > threshold))
    tar = float(np.mean(sign * np.asarray(same, dtype=np.float64) > threshold))
    return Threshold(float(sign * threshold), accepted_far, tar)
