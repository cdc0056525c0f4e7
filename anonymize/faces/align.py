"""FFHQ-style alignment: a square crop oriented by the eyes and mouth, with the transform kept.

The quad follows the recipe used to build FFHQ (and expected by e4e, ArcFace-on-FFHQ and FaRL
on FFHQ crops): centred slightly below the eyes, its size the larger of twice the eye distance
and 1.8 times the eye-to-mouth distance, rotated so the eyes are level. We keep the 2x3 affine
matrix (image -> crop) so any method can work on crops and the result can be pasted back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymize.faces.types import eye_and_mouth_points


@dataclass(frozen=True)
class AlignedFace:
    """A square crop and the affine matrix that maps image pixels to crop pixels."""

    crop: np.ndarray  # S x S x 3 uint8
    matrix: np.ndarray  # 2 x 3 float64, image (x, y) -> crop (x, y)
    landmarks: np.ndarray | None  # K x 2 in crop coordinates, when known

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])

    def inverse_matrix(self) -> np.ndarray:
        """Crop -> image."""
        return cv2.invertAffineTransform(self.matrix)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented crop square as 4 corners (top-left, bottom-left, bottom-right, top-right), 4 x 2."""
    eye_left, eye_right, mouth_left, mouth_right = eye_and_mouth_points(landmarks)
    eye_centre = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_centre
    # Horizontal axis: the eye direction blended with the perpendicular of the eye-to-mouth direction.
    x_axis = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x_axis = x_axis / max(np.hypot(*x_axis), 1e-6)
    x_axis = x_axis * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    centre = eye_centre + eye_to_mouth * 0.1
    return np.stack([centre - x_axis - y_axis, centre - x_axis + y_axis, centre + x_axis + y_axis, centre + x_axis - y_axis])


def quad_to_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """Affine matrix taking the quad's top-left, bottom-left, top-right corners to the crop's corners."""
    src = np.float32([quad[0], quad[1], quad[3]])
    dst = np.float32([[0, 0], [0, size], [size, 0]])
    return cv2.getAffineTransform(src, dst).astype(np.float64)


def warp_to_crop(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Resample the image into the crop; outside the photo, reflect (as FFHQ pads)."""
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    # INTER_AREA is only valid for resize; for a shrinking warp, pre-blur instead to avoid aliasing.
    if interpolation == cv2.INTER_AREA:
        sigma = 0.5 / max(scale, 1e-6) - 0.5
        source = cv2.GaussianBlur(rgb, (0, 0), sigma) if sigma > 0.3 else rgb
        return cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_REFLECT)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int) -> AlignedFace:
    """Crop one face FFHQ-style to ``size`` x ``size``."""
    matrix = quad_to_matrix(ffhq_quad(landmarks), size)
    return AlignedFace(warp_to_crop(rgb, matrix, size), matrix, transform_points(landmarks, matrix))


def whole_image_as_face(rgb: np.ndarray, size: int) -> AlignedFace:
    """For already-aligned datasets: the whole image is the face, stretched to a square crop."""
    height, width = rgb.shape[:2]
    matrix = np.array([[size / width, 0.0, 0.0], [0.0, size / height, 0.0]])
    crop = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if size < min(width, height) else cv2.INTER_CUBIC)
    return AlignedFace(crop, matrix, None)
