"""Face detectors behind one small interface, built by name.

Each detector returns :class:`Face` records with landmarks, so alignment never needs to know
which detector ran: dlib's HOG and CNN (MMOD) detectors with the 68-point shape predictor, and
RetinaFace MobileNet-0.25 (through facexlib) with its own 5 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from anonymize.faces.types import Face
from anonymize.weights import WeightsStore

DETECTORS = ("dlib-hog", "dlib-cnn", "retinaface")

# Default score thresholds, chosen on the labelled group photos (see README, detection figures).
DEFAULT_THRESHOLDS = {"dlib-hog": 0.0, "dlib-cnn": 0.5, "retinaface": 0.9}


class Detector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an H x W x 3 uint8 RGB image, best score first."""
        ...

    def weights_used(self) -> dict[str, str]:
        """Artefact name -> sha256, for the run metadata."""
        ...


@dataclass(frozen=True)
class DetectorSettings:
    threshold: float | None = None  # None: the detector's default
    min_face: int = 0  # drop faces whose box is smaller than this many pixels on its short side
    device: str = "cpu"


def create_detector(name: str, weights: WeightsStore, settings: DetectorSettings = DetectorSettings()) -> Detector:
    """Build a detector by its CLI name; raises ValueError for an unknown name."""
    threshold = DEFAULT_THRESHOLDS.get(name) if settings.threshold is None else settings.threshold
    if name in ("dlib-hog", "dlib-cnn"):
        from anonymize.faces.dlib_detectors import DlibDetector

        return DlibDetector(name, weights, threshold, settings.min_face)
    if name == "retinaface":
        from anonymize.faces.retinaface import RetinaFaceDetector

        return RetinaFaceDetector(weights, threshold, settings.min_face, settings.device)
    raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}")


def keep_large_enough(faces: list[Face], min_face: int) -> list[Face]:
    return [face for face in faces if min(face.width, face.height) >= min_face]
