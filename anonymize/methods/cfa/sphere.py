"""The identity sphere: where CFA puts a face's new identity, relative to its original one.

CFA-Net (Ma et al.) anonymizes by moving a face's unit identity code ``e`` to a new unit vector at
an angle ``alpha`` from it (their Eq. 10): the angle sets how anonymous the result is, the
direction which new person it becomes. Any unit target at angle ``alpha`` is

    z* = cos(alpha) e + sin(alpha) u,      u unit and orthogonal to e,

so cos(e, z*) = cos(alpha) exactly, and the choice of ``u`` (a point of the unit sphere of e's
orthogonal complement) is the choice of person. Everything here works in float64, so the geometry
holds to rounding, and returns float64 arrays.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

DEGENERATE = 1e-6  # a vector this close to the line of e has no usable direction orthogonal to it


class DegenerateDirection(ValueError):
    """The vector lies (numerically) on the line of e: it gives no direction away from e."""


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(vector)
    if norm < DEGENERATE:
        raise DegenerateDirection("a zero vector has no direction")
    return vector / norm


def orthogonal_direction(anchor: np.ndarray, toward: np.ndarray, avoid: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The unit direction of ``toward`` with its components along ``anchor`` (and along each unit vector of
    ``avoid``, themselves orthogonal to ``anchor``) removed: ``normalize(f - (f.e) e)`` of the spec."""
    residual = np.asarray(toward, dtype=np.float64).copy()
    for basis in (unit(anchor), *avoid):
        residual -= (residual @ basis) * basis
    for basis in (unit(anchor), *avoid):  # a second pass (Gram-Schmidt twice is enough) for exact orthogonality
        residual -= (residual @ basis) * basis
    if np.linalg.norm(residual) < DEGENERATE * max(1.0, float(np.linalg.norm(toward))):
        raise DegenerateDirection("the vector lies on the line of the original identity")
    return residual / np.linalg.norm(residual)


def target_on_sphere(anchor: np.ndarray, direction: np.ndarray, angle_degrees: float) -> np.ndarray:
    """``cos(alpha) e + sin(alpha) u``: unit length and at exactly ``alpha`` from ``e`` (``u`` unit, orthogonal to e)."""
    alpha = math.radians(angle_degrees)
    return math.cos(alpha) * unit(anchor) + math.sin(alpha) * np.asarray(direction, dtype=np.float64)


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """The angle in degrees between two vectors (any length)."""
    cosine = float(np.clip(unit(a) @ unit(b), -1.0, 1.0))
    return math.degrees(math.acos(cosine))


def direction_seed(seed: int, key: str, variant: int, attempt: int) -> int:
    """A 63-bit seed for one random direction: a function of the run seed, the face (or person) key,
    the variant and the attempt (a redraw after the leakage screen)."""
    digest = hashlib.sha256(f"cfa-direction:{seed}:{variant}:{attempt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def random_direction(anchor: np.ndarray, seed: int, avoid: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A direction orthogonal to ``anchor`` (and to ``avoid``), uniform over that sphere: an isotropic Gaussian
    vector projected onto the orthogonal complement is uniform over the complement's unit sphere."""
    gaussian = np.random.default_rng(seed).standard_normal(len(anchor))
    return orthogonal_direction(anchor, gaussian, avoid)
