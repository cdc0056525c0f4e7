"""FFHQ-style alignment: a square crop oriented by the eyes and mouth, with the transform kept.

The quad follows the recipe used to build FFHQ (and expected by e4e, ArcFace-on-FFHQ and FaRL
on FFHQ crops): centred slightly below the eyes, its size the larger of twice the eye distance
and 1.8 times the eye-to-mouth distance, rotated so the eyes are level. We keep the 2x3 affine
matrix (image -> crop) so any method can work on crops and the result can be pasted back.

Already-aligned datasets (``--aligned``) are not all FFHQ-framed: CelebA's 178 x 218 crops show
the face smaller and off-square, so stretching the whole image to the method's square would squash
the face. :func:`align_single_face` crops them FFHQ-style like any photo, from the landmarks of
the one centred face, or, when no face is found, from :data:`CELEBA_TEMPLATE` (CelebA's average
landmark positions); only an input whose FFHQ quad is the whole image (FFHQ itself, CelebA-HQ) is
used whole (:func:`is_ffhq_framed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anonymize.faces.types import Face, eye_and_mouth_points

if TYPE_CHECKING:
    from anonymize.faces.detect import Detector


@dataclass(frozen=True)
class AlignedFace:
    """A square crop and the affine matrix that maps image pixels to crop pixels."""

    crop: np.ndarray  # S x S x 3 uint8
    matrix: np.ndarray  # 2 x 3 float64, image (x, y) -> crop (x, y)
    landmarks: np.ndarray | None  # K x 2 in crop coordinates, when known
    whole_image: bool = False  # the crop is the whole (FFHQ-framed) image: a generated face may replace it

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
    """For FFHQ-framed datasets: the whole image is the face crop (non-square images are stretched)."""
    height, width = rgb.shape[:2]
    matrix = np.array([[size / width, 0.0, 0.0], [0.0, size / height, 0.0]])
    crop = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if size < min(width, height) else cv2.INTER_CUBIC)
    return AlignedFace(crop, matrix, None, whole_image=True)


# Five landmarks (eye on image left, eye on image right, nose, mouth corners) where FFHQ alignment
# puts an average face, as fractions of the crop side: facexlib's 512 px FFHQ template, divided by 512.
FFHQ_TEMPLATE = np.array([[0.3769, 0.4686], [0.6229, 0.4691], [0.5012, 0.6133], [0.3931, 0.7254], [0.6115, 0.7249]])

# CelebA's aligned 178 x 218 framing: average eye centres and mouth corners of the centred face,
# measured with RetinaFace (and, within 1.3 px, dlib) on the 150 photos of ../shared/data/celeba-ids.
# Scaled per axis to the image, it stands in for the landmarks when no face is detected.
CELEBA_SIZE = (178, 218)  # width, height
CELEBA_TEMPLATE = np.array([[69.3, 112.4], [108.3, 112.4], [88.8, 132.5], [76.0, 152.8], [101.6, 152.8]])

# An input counts as FFHQ-framed when it is square and every corner of its FFHQ quad lies within
# this fraction of the side from the image's corner (landmark detectors differ by ~2% of the side).
FFHQ_FRAMED_TOLERANCE = 0.06


def celeba_template_landmarks(width: int, height: int) -> np.ndarray:
    """CelebA's average landmarks scaled to a ``width`` x ``height`` image (5 x 2)."""
    return CELEBA_TEMPLATE * np.array([width / CELEBA_SIZE[0], height / CELEBA_SIZE[1]])


def is_ffhq_framed(shape: tuple[int, ...], landmarks: np.ndarray, tolerance: float = FFHQ_FRAMED_TOLERANCE) -> bool:
    """True when the image is square and the face's FFHQ quad is the whole image, within ``tolerance``."""
    height, width = shape[:2]
    if height != width:
        return False
    corners = np.array([[0, 0], [0, height], [width, height], [width, 0]], np.float64)
    return bool(np.abs(ffhq_quad(landmarks) - corners).max() <= tolerance * width)


def align_single_face(rgb: np.ndarray, landmarks: np.ndarray | None, size: int, framing: str = "auto") -> AlignedFace:
    """The one face of an already-aligned image, as the method's ``size`` crop.

    ``framing="ffhq"`` takes the whole (square) image as the FFHQ crop; ``"auto"`` does so only when
    the landmarks say it is FFHQ-framed, and otherwise crops FFHQ-style from the landmarks, or from
    CelebA's template when ``landmarks`` is None.
    """
    height, width = rgb.shape[:2]
    if framing == "ffhq":
        if height != width:
            raise ValueError(f"--aligned ffhq expects square FFHQ-framed images, got {width} x {height} (use --aligned)")
        return whole_image_as_face(rgb, size)
    if landmarks is not None and is_ffhq_framed(rgb.shape, landmarks):
        return whole_image_as_face(rgb, size)
    return align_face(rgb, celeba_template_landmarks(width, height) if landmarks is None else landmarks, size)


def centred_face(faces: Sequence[Face], shape: tuple[int, ...]) -> Face | None:
    """The detected face whose box centre is nearest the image centre (the subject of an aligned crop)."""
    if not faces:
        return None
    height, width = shape[:2]
    return min(faces, key=lambda face: np.hypot((face.box[0] + face.box[2]) / 2 - width / 2,
                                                (face.box[1] + face.box[3]) / 2 - height / 2))


def align_aligned_input(rgb: np.ndarray, detector: Detector | None, size: int, framing: str = "auto") -> tuple[Face, AlignedFace]:
    """The face record and crop of an already-aligned image (``--aligned``); see :func:`align_single_face`.

    Without a detector (``--aligned ffhq``, or no detector could be built) or when it finds no face,
    the face record spans the whole image and carries no landmarks.
    """
    height, width = rgb.shape[:2]
    face = centred_face(detector.detect(rgb), rgb.shape) if detector is not None and framing != "ffhq" else None
    aligned = align_single_face(rgb, None if face is None else face.landmarks, size, framing)
    if face is None:
        face = Face((0.0, 0.0, float(width), float(height)), 1.0, np.zeros((0, 2), np.float32))
    return face, aligned
