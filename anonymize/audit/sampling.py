"""``anonymize audit --sample N``: a seeded subset of the release audited face by face, the figures read
with their 95% confidence intervals, and a gate that a sample can honestly pass.

Why: every face costs the audit three detectors, three recognisers and the attribute estimators, many
times the run's one detector, so a large release is audited on a sample. Every released file is still
checked for what costs no network (metadata, byte copies of an original); only the face checks are
sampled. Intervals are Wilson score intervals (Wilson 1927): unlike the normal approximation they stay
inside [0, 1] and are not empty at 0 of n, the usual case for a good release.

A rate measured on a sample passes its gate only when the interval's upper end is under the limit
(0 of 75 faces re-identified bounds the rate by 4.9% at 95% confidence; 0 of 20 only by 16%), and a missed
face in the sample fails it as in a full audit. The pairs are drawn with the seed from the sorted
list of released paths, so the same seed on the same release audits the same images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
T = TypeVar("T")


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes`` of ``trials`` (None without trials)."""
    if trials <= 0:
        return None
    share = successes / trials
    spread = z * z / trials
    centre = (share + spread / 2) / (1 + spread)
    half = z * math.sqrt(share * (1 - share) / trials + spread / (4 * trials)) / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_indices(paths: Sequence[str], size: int | None, seed: int) -> set[int]:
    """The indices of ``paths`` to audit face by face: all of them without a size, else ``size`` drawn with ``seed``
    from the paths in sorted order (the draw does not depend on the order the walk listed them in)."""
    if size is None or size >= len(paths):
        return set(range(len(paths)))
    order = sorted(range(len(paths)), key=lambda index: paths[index])
    chosen = np.random.default_rng(seed).choice(len(order), size=size, replace=False)
    return {order[int(position)] for position in chosen}
