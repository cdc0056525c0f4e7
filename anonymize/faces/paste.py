"""Paste an anonymized crop back into the photo through a soft face mask.

The mask lives in crop coordinates and is warped back with the crop, so every method (blur,
FALCO, ...) shares one paste-back. It is built at the resolution of the method's output, and the
alignment matrix is scaled to that resolution, so a 1024 px generated face reaches a large face in
the photo at full detail instead of through the 256 px alignment crop. Pixels whose warped mask
weight rounds to zero are copied from the original bit for bit: nothing outside the region changes.

Regions (``--region``):

- ``ellipse`` (classical methods' default): the face ellipse of the aligned crop, united with the
  detected box extended down to the chin, so turned faces (whose ellipse slides off a cheek and
  an ear) and beards below the ellipse are covered;
- ``crop`` (generative methods' default): the whole aligned square, feathered at its edges and
  clipped to the photo; a generated face brings its own hair, ears and jaw line, and pasting all
  of it leaves no seam between the new face and the original hair (which would also carry identity);
- ``hull``: the landmark outline plus a forehead estimate (68-point landmarks give the tightest fit);
- ``full``: the crop without feathering.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

from anonymize.faces.align import AlignedFace, transform_points
from anonymize.faces.types import eye_and_mouth_points

RegionKind = Literal["ellipse", "hull", "crop", "full"]
REGION_KINDS: tuple[str, ...] = ("ellipse", "hull", "crop", "full")

# Face ellipse in an FFHQ crop, as fractions of the crop side: forehead to chin, ear to ear.
ELLIPSE_CENTRE = (0.5, 0.53)
ELLIPSE_AXES = (0.30, 0.40)
# With 5 landmarks the chin is estimated this many eye-to-mouth distances below the mouth: in
# FFHQ's template the mouth is 0.26 of the crop side below the eyes and the chin about 0.15 below
# the mouth (0.6 x); 0.8 x leaves room for a beard.
CHIN_BELOW_MOUTH = 0.8


@dataclass(frozen=True)
class Region:
    """Which part of the aligned crop is pasted back, and how softly."""

    kind: RegionKind = "ellipse"
    scale: float = 1.0
    feather: float = 0.04  # soft edge width, as a fraction of the crop side


def region_mask(size: int, kind: RegionKind = "ellipse", scale: float = 1.0, feather: float = 0.04,
                landmarks: np.ndarray | None = None, cover: np.ndarray | None = None) -> np.ndarray:
    """A float32 size x size mask in [0, 1]: 1 on the region, a soft edge of ``feather`` x size, 0 elsewhere.

    ``cover`` (ellipse only): a polygon in crop pixels that must be covered too (the detected box
    extended to the chin, :func:`face_cover_polygon`); it is grown by the feather radius first, so
    its own edge ends half-way up the soft edge instead of inside it.
    """
    if kind == "full":
        return np.ones((size, size), np.float32)
    sigma = feather * size
    radius = int(round(sigma))
    if kind == "crop":
        hard = np.zeros((size, size), np.float32)
        inset = min(radius, size // 4)
        hard[inset:size - inset, inset:size - inset] = 1.0
        return cv2.GaussianBlur(hard, (0, 0), sigma) if sigma > 0 else hard
    hard = np.zeros((size, size), np.uint8)
    if kind == "ellipse":
        centre = (int(round(ELLIPSE_CENTRE[0] * size)), int(round(ELLIPSE_CENTRE[1] * size)))
        axes = (max(1, int(round(ELLIPSE_AXES[0] * size * scale))), max(1, int(round(ELLIPSE_AXES[1] * size * scale))))
        cv2.ellipse(hard, centre, axes, 0, 0, 360, 255, thickness=-1)
        if cover is not None:
            polygon = np.zeros_like(hard)
            cv2.fillConvexPoly(polygon, cv2.convexHull(np.round(cover).astype(np.int32)), 255)
            if radius > 0:
                polygon = cv2.dilate(polygon, _disc(radius))
            hard = np.maximum(hard, polygon)
    elif kind == "hull":
        if landmarks is None or len(landmarks) == 0:
            raise ValueError("a landmark-hull region needs landmarks (none for an undetected --aligned face)")
        points = _face_outline(np.asarray(landmarks, np.float64), scale)
        cv2.fillConvexPoly(hard, cv2.convexHull(np.round(points).astype(np.int32)), 255)
    else:
        raise ValueError(f"unknown region kind {kind!r}: use {', '.join(REGION_KINDS)}")
    mask = hard.astype(np.float32) / 255.0
    if sigma > 0:
        # Erode first so the soft edge stays inside the requested region instead of spilling out.
        if radius > 0:
            mask = cv2.erode(mask, _disc(radius))
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return mask


@lru_cache(maxsize=16)
def _shared_mask(size: int, kind: str, scale: float, feather: float) -> np.ndarray:
    """Masks that do not depend on the face, built once per size (read-only)."""
    mask = region_mask(size, kind, scale, feather)  # type: ignore[arg-type]
    mask.setflags(write=False)
    return mask


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


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


def chin_point(landmarks: np.ndarray) -> np.ndarray:
    """The chin: landmark 8 of 68, or estimated below the mouth from 5 points."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape == (68, 2):
        return lm[8]
    eye_left, eye_right, mouth_left, mouth_right = eye_and_mouth_points(lm)
    mouth = (mouth_left + mouth_right) / 2
    return mouth + CHIN_BELOW_MOUTH * (mouth - (eye_left + eye_right) / 2)


def face_cover_polygon(box: tuple[float, float, float, float], matrix: np.ndarray,
                       landmarks: np.ndarray | None = None) -> np.ndarray:
    """The detected box in crop pixels (``matrix``: image -> crop), its lower corners extended down to the chin.

    ``landmarks`` are in crop pixels; the crop is upright, so "down" is the crop's +y.
    """
    x0, y0, x1, y1 = box
    corners = transform_points(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64), matrix)
    if landmarks is None or len(landmarks) == 0:
        return corners
    chin_y = chin_point(landmarks)[1]
    lower = corners[np.argsort(corners[:, 1])[2:]]  # the two lowest corners
    extended = np.column_stack([lower[:, 0], np.maximum(lower[:, 1], chin_y)])
    return np.concatenate([corners, extended])


def scaled_matrix(matrix: np.ndarray, factor: float) -> np.ndarray:
    """The image -> crop matrix for the same crop rendered ``factor`` times larger."""
    return np.asarray(matrix, np.float64) * factor


def paste_face(image: np.ndarray, crop: np.ndarray, aligned: AlignedFace, region: Region,
               box: tuple[float, float, float, float] | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a method's output ``crop`` (any square size) for ``aligned`` into ``image`` through ``region``.

    The mask is built at the crop's own resolution and the alignment matrix scaled to it, so no
    detail is lost to the alignment size. ``box`` (the detected face, image pixels) widens the
    ellipse region; pass None when no face was detected. ``mask`` (the crop's size, in [0, 1]), when
    given, is the region: the method says where it changed the crop.
    """
    crop = _no_larger_than_needed(crop, aligned)
    size = int(crop.shape[0])
    factor = size / aligned.size
    matrix = scaled_matrix(aligned.matrix, factor)
    landmarks = None if aligned.landmarks is None else np.asarray(aligned.landmarks, np.float64) * factor
    if mask is not None:
        mask = np.asarray(mask, np.float32)
        if mask.shape[:2] != (size, size):
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    elif region.kind == "hull":
        mask = region_mask(size, "hull", region.scale, region.feather, landmarks=landmarks)
    elif region.kind == "ellipse" and box is not None:
        cover = face_cover_polygon(box, matrix, landmarks)
        mask = region_mask(size, "ellipse", region.scale, region.feather, cover=cover)
    else:
        mask = _shared_mask(size, region.kind, region.scale, region.feather)
    return paste_back(image, crop, matrix, mask)


def _no_larger_than_needed(crop: np.ndarray, aligned: AlignedFace) -> np.ndarray:
    """The crop, area-downscaled to the face's size in the photo when it is smaller (bilinear warping
    alone would alias a 1024 px face pasted at 100 px); never upscaled."""
    crop_px_per_image_px = float(np.sqrt(abs(np.linalg.det(aligned.matrix[:, :2]))))
    side_in_image = int(np.ceil(aligned.size / max(crop_px_per_image_px, 1e-9)))
    if side_in_image >= crop.shape[0]:
        return crop
    target = max(side_in_image, 16)
    return cv2.resize(crop, (target, target), interpolation=cv2.INTER_AREA)


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``crop`` into ``image`` where ``mask`` is non-zero; ``matrix`` maps image pixels to crop pixels.

    ``crop`` and ``mask`` have the same size, the one ``matrix`` was made for (see :func:`scaled_matrix`).
    """
    height, width = image.shape[:2]
    size = mask.shape[0]
    if crop.shape[:2] != mask.shape[:2]:
        raise ValueError(f"crop {crop.shape[:2]} and mask {mask.shape[:2]} must have the same size")
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
    """For FFHQ-framed inputs whose method regenerates the whole crop: the crop at the image's size."""
    height, width = image.shape[:2]
    interpolation = cv2.INTER_AREA if crop.shape[0] > max(height, width) else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interpolation)
