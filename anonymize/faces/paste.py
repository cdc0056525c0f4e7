"""Paste an anonymized crop back into the photo through a soft face mask.

The mask lives in crop coordinates and is warped back with the crop, so every method (blur,
FALCO, ...) shares one paste-back. Pixels whose warped mask weight rounds to zero are copied
from the original bit for bit: nothing outside the face region changes.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

RegionKind = Literal["ellipse", "hull", "full"]

# Face ellipse in an FFHQ crop, as fractions of the crop side: forehead to chin, ear to ear.
ELLIPSE_CENTRE = (0.5, 0.53)
ELLIPSE_AXES = (0.30, 0.40)


def region_mask(size: int, kind: RegionKind = "ellipse", scale: float = 1.0, feather: float = 0.04,
                landmarks: np.ndarray | None = None) -> np.ndarray:
    """A float32 size x size mask in [0, 1]: 1 on the face, a soft edge of ``feather`` x size, 0 elsewhere."""
    if kind == "full":
        return np.ones((size, size), np.float32)
    hard = np.zeros((size, size), np.uint8)
    if kind == "ellipse":
        centre = (int(round(ELLIPSE_CENTRE[0] * size)), int(round(ELLIPSE_CENTRE[1] * size)))
        axes = (max(1, int(round(ELLIPSE_AXES[0] * size * scale))), max(1, int(round(ELLIPSE_AXES[1] * size * scale))))
        cv2.ellipse(hard, centre, axes, 0, 0, 360, 255, thickness=-1)
    elif kind == "hull":
        if landmarks is None:
            raise ValueError("a landmark-hull region needs landmarks (not available with --aligned)")
        points = _face_outline(np.asarray(landmarks, np.float64), scale)
        cv2.fillConvexPoly(hard, cv2.convexHull(np.round(points).astype(np.int32)), 255)
    else:
        raise ValueError(f"unknown region kind {kind!r}: use ellipse, hull or full")
    mask = hard.astype(np.float32) / 255.0
    sigma = feather * size
    if sigma > 0:
        # Erode first so the soft edge stays inside the requested region instead of spilling out.
        radius = int(round(sigma))
        if radius > 0:
            mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return mask


def _face_outline(landmarks: np.ndarray, scale: float) -> np.ndarray:
    """Landmarks plus a forehead estimate (landmarks stop at the brows), scaled about their centre."""
    if len(landmarks) == 68:
        brows = landmarks[17:27]
        lift = np.linalg.norm(landmarks[8] - landmarks[27]) * 0.45  # chin-to-nose-bridge sets the forehead height
        points = np.concatenate([landmarks, brows - np.array([0.0, lift])])
    else:
        eye_distance = np.linalg.norm(landmarks[1] - landmarks[0])
        centre = landmarks.mean(axis=0)
        ring = np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)])
        points = centre + ring * eye_distance * np.array([1.1, 1.5])
    centre = points.mean(axis=0)
    return centre + (points - centre) * scale


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``crop`` (any square size) into ``image`` where ``mask`` (crop-sized) is non-zero.

    ``matrix`` maps image pixels to a crop of ``mask``'s size; a crop of another size (a generator
    at 1024 px for a 256 px alignment) is scaled to it.
    """
    height, width = image.shape[:2]
    size = mask.shape[0]
    if crop.shape[0] != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_CUBIC)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return image.copy()
    # Work only inside the face's bounding box: shift the matrix so the box origin is (0, 0).
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    box = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped_crop = cv2.warpAffine(crop, shifted, box, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    warped_mask = cv2.warpAffine(mask, shifted, box, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_mask[warped_mask < 0.5 / 255.0] = 0.0
    out = image.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    alpha = warped_mask[..., None]
    blended = np.round(region * (1.0 - alpha) + warped_crop.astype(np.float32) * alpha).astype(np.uint8)
    touched = warped_mask > 0
    out[y0:y1, x0:x1][touched] = blended[touched]
    return out


def replace_whole(image: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """For aligned datasets whose method regenerates the whole crop: the crop at the image's size."""
    height, width = image.shape[:2]
    interpolation = cv2.INTER_AREA if crop.shape[0] > max(height, width) else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interpolation)
