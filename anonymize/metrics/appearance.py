"""How an output looks next to its original: where the pixels changed, and whether the face stayed sharp.

Two numbers that a method's pictures can fail (issue 24, "Look at the results"):

* **changed pixels outside the face**: of the pixels an anonymizer changed, the share lying outside every
  face region. A face region is the convex hull of dlib's 68 landmarks of the *original* face, scaled
  by ``FACE_SCALE`` about its centre, so it takes in the forehead, jaw line and a margin but not the
  hair, background or clothes. A method that pastes a square (another photo's background, a whole
  aligned crop) shows up as a large share; a method confined to the face as a share near zero.
* **face-region sharpness**: the variance of the Laplacian of the grey image inside the face regions
  (a standard focus measure: it grows with fine detail and falls with blur). The ratio output /
  original says whether the face is still a photograph's face (about 1) or a smear (near 0).

A pixel counts as changed when one of its channels moved by more than ``CHANGE_THRESHOLD`` of 255.
JPEG re-encoding at the run's default quality 95 (full chroma) moves 0.04% of the pixels of the real
test photos by more than 8 and none by more than 20, while the methods' changes are tens of levels,
so re-encoding an untouched photo counts as (almost) nothing changed; a lower threshold counts the
re-encoding noise (0.8% of pixels exceed 4), a higher one misses smooth changes such as a blurred cheek.

Landmarks come from dlib's HOG detector and 68-point shape predictor (:class:`DlibDetector`) run on the
original photo, every face it finds: the measure is independent of the run's own detector and region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anonymize.faces.blend import laplacian_variance
from anonymize.weights import WeightsStore

FACE_SCALE = 1.4
CHANGE_THRESHOLD = 8  # of 255, on the largest channel difference


def face_outline(landmarks68: np.ndarray, scale: float = FACE_SCALE) -> np.ndarray:
    """N x 2 float polygon: the convex hull of one face's landmarks, scaled by ``scale`` about the hull's centre.

    The centre is the hull's centroid (area-weighted, from its moments), not the landmarks' mean:
    the 68 points crowd around the eyes, nose and mouth, so scaling about their mean would grow the
    region unevenly (more on the side away from the crowd).
    """
    points = np.asarray(landmarks68, dtype=np.float32).reshape(-1, 2)
    hull = cv2.convexHull(points).reshape(-1, 2).astype(np.float64)
    moments = cv2.moments(hull.astype(np.float32))
    centre = np.array([moments["m10"], moments["m01"]]) / moments["m00"] if moments["m00"] > 0 else hull.mean(axis=0)
    return centre + (hull - centre) * scale


def face_region(landmarks68: np.ndarray, shape: tuple[int, ...], scale: float = FACE_SCALE) -> np.ndarray:
    """H x W bool: the inside of :func:`face_outline` (only the first two entries of ``shape`` are used)."""
    height, width = shape[:2]
    mask = np.zeros((height, width), np.uint8)
    if len(np.asarray(landmarks68).reshape(-1, 2)) < 3:
        return mask.astype(bool)
    shift = 8  # fillPoly's fractional bits: the scaled polygon stays sub-pixel exact until it is rasterised
    polygon = np.round(face_outline(landmarks68, scale) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def faces_mask(faces_landmarks: Sequence[np.ndarray], shape: tuple[int, ...], scale: float = FACE_SCALE) -> np.ndarray:
    """H x W bool: the union of every face's region (all False when there is no face)."""
    mask = np.zeros(shape[:2], bool)
    for landmarks in faces_landmarks:
        mask |= face_region(landmarks, shape, scale)
    return mask


def changed_mask(original: np.ndarray, output: np.ndarray, threshold: int = CHANGE_THRESHOLD) -> np.ndarray:
    """H x W bool: pixels where some channel differs by more than ``threshold`` (grey or RGB, uint8)."""
    if original.shape != output.shape:
        raise ValueError(f"original and output differ in shape: {original.shape} vs {output.shape}")
    difference = np.abs(original.astype(np.int16) - output.astype(np.int16))
    return (difference.max(axis=-1) if difference.ndim == 3 else difference) > threshold


@dataclass(frozen=True)
class ChangeCount:
    """Changed pixels of one image (or many, summed), and how many of them lie outside every face.

    Kept as counts, not a share, so a benchmark can pool images: a large photo weighs by its pixels.
    """

    changed: int
    outside: int

    @property
    def share(self) -> float | None:
        """Outside / changed; None when nothing changed (no share to speak of)."""
        return self.outside / self.changed if self.changed else None

    def __add__(self, other: ChangeCount) -> ChangeCount:
        return ChangeCount(self.changed + other.changed, self.outside + other.outside)


def count_changes(original: np.ndarray, output: np.ndarray, face_masks: Sequence[np.ndarray] | np.ndarray,
                  threshold: int = CHANGE_THRESHOLD) -> ChangeCount:
    """The changed pixels and those of them outside every mask in ``face_masks`` (a list of masks or their union)."""
    changed = changed_mask(original, output, threshold)
    inside = _union(face_masks, changed.shape)
    return ChangeCount(int(changed.sum()), int((changed & ~inside).sum()))


def changed_outside_share(original: np.ndarray, output: np.ndarray, face_masks: Sequence[np.ndarray] | np.ndarray,
                          threshold: int = CHANGE_THRESHOLD) -> float | None:
    """Of the pixels that changed by more than ``threshold``, the share outside every face region (None: none changed)."""
    return count_changes(original, output, face_masks, threshold).share


def laplacian_sharpness(image: np.ndarray, mask: np.ndarray) -> float | None:
    """Variance of the grey image's 3 x 3 Laplacian over the pixels of ``mask`` (None for an empty mask)."""
    mask = np.asarray(mask, bool)
    return laplacian_variance(image, mask) if mask.any() else None


def sharpness_ratio(original: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float | None:
    """Laplacian variance of the output over the original's, inside ``mask``: 1 for an untouched face,
    below 1 for a blurred one. None when the mask is empty or the original is flat there."""
    before = laplacian_sharpness(original, mask)
    after = laplacian_sharpness(output, mask)
    if before is None or after is None or before == 0.0:
        return None
    return after / before


def _union(face_masks: Sequence[np.ndarray] | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(face_masks, np.ndarray) and face_masks.ndim == 2:
        return face_masks.astype(bool)
    inside = np.zeros(shape[:2], bool)
    for mask in face_masks:
        inside |= np.asarray(mask, bool)
    return inside


class FaceLandmarker:
    """dlib's HOG detector and 68-point predictor, all faces of a photo (the project's :class:`DlibDetector`,
    which upsamples small photos so CelebA's 178 x 218 faces are found). Loads the weights once."""

    def __init__(self, weights: WeightsStore | None = None, threshold: float = 0.0) -> None:
        from anonymize.faces.dlib_detectors import DlibDetector  # dlib only when landmarks are wanted

        self._detector = DlibDetector("dlib-hog", weights or WeightsStore(), threshold, 0)

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        """68 x 2 float landmarks of every face found, in image pixels."""
        return [np.asarray(face.landmarks, np.float64) for face in self._detector.detect(rgb)]
