"""Face crops as recognisers other than dlib's expect them, cut from 68 landmarks fitted in a box.

The landmarks come from dlib's 68-point predictor (iBUG layout), fitted afresh in each image's box:
an anonymized face is located by its own pixels, as an attacker's pipeline would, never by the
original's landmarks. Two framings:

* square: centred on the landmarks' bounding box, side = its longer side x ``scale`` (HSE FaceRec);
* five-point similarity: eye centres, nose tip and mouth corners mapped onto a template by the
  least-squares rotation + scale + shift (ArcFace's alignment, Umeyama without reflection).
"""

from __future__ import annotations

import cv2
import numpy as np

def five_points(landmarks: np.ndarray) -> np.ndarray:
    """ArcFace's five points from 68 landmarks: eye centres (image left, right), nose tip, mouth corners."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[30], lm[48], lm[54]])


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation + uniform scale + shift taking ``source`` points closest (least squares) to ``target``."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    s, t = source - source_mean, target - target_mean
    norm = float((s**2).sum())
    if norm <= 1e-12:
        raise ValueError("landmarks collapse to one point: no alignment")
    a = float((s[:, 0] * t[:, 0] + s[:, 1] * t[:, 1]).sum()) / norm
    b = float((s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()) / norm
    matrix = np.array([[a, -b, 0.0], [b, a, 0.0]])
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def square_matrix(landmarks: np.ndarray, scale: float, size: int) -> np.ndarray:
    """2 x 3 image -> crop matrix of the square around the landmarks' box, its side scaled by ``scale``."""
    lm = np.asarray(landmarks, np.float64)
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    side = max(x1 - x0, y1 - y0, 1.0) * scale
    zoom = size / side
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([[zoom, 0.0, size / 2 - zoom * centre_x], [0.0, zoom, size / 2 - zoom * centre_y]])


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop under ``matrix``; shrinking reads area averages, the border repeats edge pixels."""
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    source = rgb
    if zoom < 0.5:  # a large face: shrink first so every output pixel averages its footprint
        factor = 0.5 / zoom
        height, width = rgb.shape[:2]
        target = (max(1, int(round(width / factor))), max(1, int(round(height / factor))))
        source = cv2.resize(rgb, target, interpolation=cv2.INTER_AREA)
        matrix = matrix @ np.array([[width / target[0], 0, 0], [0, height / target[1], 0], [0, 0, 1]])
    return cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
