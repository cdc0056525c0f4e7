"""The face record passed from detection to alignment and the manifest, and the detector interface.

Backends import only this module (not the factory in :mod:`anonymize.faces.detect`), so the factory can
import them without a cycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FaceCrop:
    """One aligned face, as every method and attribute source sees it: the crop, its landmarks in crop
    pixels (None for --aligned input without a detector) and a stable id."""

    image: np.ndarray  # S x S x 3 uint8
    landmarks: np.ndarray | None
    key: str  # "<relative path>#<face index>": seeds, saved latents and attribute tables are keyed by it


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    ``landmarks`` is K x 2 (x, y): K = 68 (dlib's iBUG layout) or 5 (RetinaFace: eye on the image
    left, eye on the image right, nose tip, mouth corner left, mouth corner right).
    """

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray
    found_by: tuple[str, ...] = ()  # the ensemble's members that found this face (empty: a single detector)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def eye_and_mouth_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(eye on image left, eye on image right, mouth corner left, mouth corner right) for 5 or 68 landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        return lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[48], lm[54]
    if lm.shape == (5, 2):
        return lm[0], lm[1], lm[3], lm[4]
    raise ValueError(f"expected 5 or 68 landmarks, got an array of shape {lm.shape}")


class Detector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an H x W x 3 uint8 RGB image, best score first."""
        ...

    def weights_used(self) -> dict[str, str]:
        """Artefact name -> sha256, for the run metadata."""
        ...


def keep_large_enough(faces: list[Face], min_face: int) -> list[Face]:
    return [face for face in faces if min(face.width, face.height) >= min_face]
