"""Face parts of an aligned crop from dlib's 68 landmarks, as feathered masks.

The parts are the ones Li et al. (ACM MM 2021) edit: eyebrows, eyes, nose, lips. Each is the
convex hull of its landmarks (both sides together for the paired parts), grown by a margin
proportional to the face (the inter-ocular distance) so the edit has room around the feature, then
feathered with a Gaussian so a composite ``m * edited + (1 - m) * original`` shows no seam. Pixels
where the mask is exactly 0 are left bit-identical by every backend.

Landmarks come from the crop itself: the pipeline's landmarks when they are dlib's 68, otherwise
dlib's 68-point predictor in the box dlib's HOG detector finds on the crop, or, when it finds none,
in :data:`anonymize.faces.landmarks.FFHQ_FACE_BOX` (where the HOG box of an FFHQ-aligned face lies on average: measured on
30 aligned CelebA crops of ../shared/data/celeba-ids, standard deviation 0.04 of the side).
"""

from __future__ import annotations

from collections.abc import Sequence
import cv2
import numpy as np

from anonymize.faces.landmarks import inter_ocular

PARTS: tuple[str, ...] = ("eyebrows", "eyes", "nose", "lips")

# iBUG 68-point indices of each part, one group per connected region.
PART_LANDMARKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "eyebrows": (tuple(range(17, 22)), tuple(range(22, 27))),
    "eyes": (tuple(range(36, 42)), tuple(range(42, 48))),
    "nose": (tuple(range(27, 36)),),
    "lips": (tuple(range(48, 60)),),
}
# Growth of each hull, as a fraction of the inter-ocular distance (eyebrows are thin lines of points).
PART_MARGIN: dict[str, float] = {"eyebrows": 0.22, "eyes": 0.18, "nose": 0.15, "lips": 0.15}
FEATHER = 0.12  # Gaussian sigma of the feathering, fraction of the inter-ocular distance



def parse_parts(text: str) -> tuple[str, ...]:
    """``"nose,lips"`` -> ("nose", "lips"); one-line error naming an unknown part."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    return names


def part_mask(landmarks: np.ndarray, part: str, size: int, feather: float = FEATHER) -> np.ndarray:
    """size x size float32 mask in [0, 1] of one part: grown hulls of its landmark groups, feathered."""
    return union_mask(group_masks(landmarks, part, size, feather))


def group_masks(landmarks: np.ndarray, part: str, size: int, feather: float = FEATHER) -> list[np.ndarray]:
    """One feathered mask per connected group of the part (each eyebrow, each eye)."""
    return [_hull_mask(landmarks, group, part, size, feather) for group in PART_LANDMARKS[part]]


def _hull_mask(landmarks: np.ndarray, group: Sequence[int], part: str, size: int, feather: float) -> np.ndarray:
    scale = max(inter_ocular(landmarks), 1.0)
    hard = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(np.round(landmarks[list(group)]).astype(np.int32))
    cv2.fillConvexPoly(hard, hull, 255)
    grow = max(1, round(PART_MARGIN[part] * scale))
    hard = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    sigma = feather * scale
    # Feathered outward: twice the blurred mask, clipped, is 1 everywhere inside the grown hull (a
    # straight edge blurs to 0.5) and falls smoothly to 0 over about two sigmas outside it.
    soft = 2.0 * cv2.GaussianBlur(hard.astype(np.float32) / 255.0, (0, 0), sigmaX=sigma, sigmaY=sigma)
    soft[soft < 1e-3] = 0.0  # beyond the feather the original stays bit-identical
    return np.clip(soft, 0.0, 1.0)


def part_masks(landmarks: np.ndarray, size: int, parts: Sequence[str] = PARTS) -> dict[str, np.ndarray]:
    return {part: part_mask(landmarks, part, size) for part in parts}


def union_mask(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Soft union (pointwise maximum) of masks of one size (at least one)."""
    return np.maximum.reduce(list(masks))
