"""Face detectors behind one small interface, built by name.

Each detector returns :class:`Face` records with landmarks, so alignment never needs to know
which detector ran: RetinaFace MobileNet-0.25 (facexlib's network, 5 points), MTCNN
(facenet-pytorch's networks, 5 points), dlib's HOG and CNN (MMOD) detectors with the 68-point
shape predictor, MediaPipe's BlazeFace and full-range detectors (TF.js graphs of the human-models), and ``ensemble``: the union of RetinaFace and MTCNN, for releases where a missed
face costs more than a false positive. ``auto`` (see :mod:`anonymize.faces.choose`) picks the best
detector whose weights this machine has or can get.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from anonymize.faces.types import Detector, Face, keep_large_enough  # noqa: F401 - the interface, re-exported
from anonymize.weights import WeightsStore

AUTO = "auto"
DETECTORS = ("retinaface", "mtcnn", "dlib-hog", "dlib-cnn", "blazeface", "mediapipe-full", "ensemble")
CHOICES = (AUTO, *DETECTORS)
ENSEMBLE_MEMBERS = ("retinaface", "mtcnn")

# Default score thresholds, chosen on the labelled group photos (see README, Detection).
DEFAULT_THRESHOLDS = {"dlib-hog": 0.0, "dlib-cnn": 0.5, "retinaface": 0.9, "mtcnn": 0.85, "blazeface": 0.6, "mediapipe-full": 0.6}
# Recall first (--det-threshold low, and the audit): lower thresholds that still add few false
# positives on the labelled photos and portraits (README, Detection).
RECALL_FIRST_THRESHOLDS = {"dlib-hog": -0.3, "dlib-cnn": 0.3, "retinaface": 0.5, "mtcnn": 0.7, "blazeface": 0.4, "mediapipe-full": 0.4}


@dataclass(frozen=True)
class DetectorSettings:
    threshold: float | None = None  # None: the detector's default
    min_face: int = 0  # drop faces whose box is smaller than this many pixels on its short side
    device: str = "cpu"
    recall_first: bool = False  # thresholds from RECALL_FIRST_THRESHOLDS where no threshold is given
    augment: bool = False  # each detector also searches the padded frame and the mirror image (anonymize.faces.augment)
    heads: bool = False  # a head from the pose model where no face box lies (anonymize.faces.heads)


def threshold_for(name: str, settings: DetectorSettings) -> float:
    if settings.threshold is not None:
        return settings.threshold
    return (RECALL_FIRST_THRESHOLDS if settings.recall_first else DEFAULT_THRESHOLDS)[name]


def pose_model_present(weights: WeightsStore) -> bool:
    """Whether MoveNet MultiPose (for --heads) is in the weights folder, verified."""
    from anonymize.weights.human import artefact_names

    try:
        return all(weights.status(name) == "present" for name in artefact_names("movenet-multipose"))
    except Exception:  # noqa: BLE001 - a lock without the model, an unreadable folder: not present
        return False


def create_detector(name: str, weights: WeightsStore, settings: DetectorSettings = DetectorSettings(),
                    members: tuple[str, ...] = ENSEMBLE_MEMBERS) -> Detector:
    """Build a detector by its CLI name (not ``auto``: resolve that first); raises ValueError for an unknown name.

    For ``ensemble`` an explicit threshold applies to every member, so it only makes sense for
    members on the same 0..1 scale; ``recall_first`` gives each member its own low threshold.
    """
    if settings.heads:
        from anonymize.faces.heads import HeadsDetector, PoseModel

        return HeadsDetector(create_detector(name, weights, replace(settings, heads=False), members), PoseModel(weights, settings.device))
    if name == "ensemble":
        from anonymize.faces.ensemble import EnsembleDetector

        return EnsembleDetector([create_detector(member, weights, settings) for member in members], settings.min_face)
    if settings.augment:
        from anonymize.faces.augment import AugmentedDetector

        return AugmentedDetector(create_detector(name, weights, replace(settings, augment=False)))
    if name in ("dlib-hog", "dlib-cnn"):
        from anonymize.faces.dlib_detectors import DlibDetector

        return DlibDetector(name, weights, threshold_for(name, settings), settings.min_face)
    if name == "retinaface":
        from anonymize.faces.retinaface import RetinaFaceDetector

        return RetinaFaceDetector(weights, threshold_for(name, settings), settings.min_face, settings.device)
    if name in ("blazeface", "mediapipe-full"):
        from anonymize.faces.mediapipe import SPECS, MediaPipeDetector

        return MediaPipeDetector(SPECS[name], weights, threshold_for(name, settings), settings.min_face, settings.device)
    if name == "mtcnn":
        from anonymize.faces.mtcnn import MtcnnDetector

        return MtcnnDetector(weights, threshold_for(name, settings), settings.min_face, settings.device)
    if name == AUTO:
        raise ValueError("detector 'auto' must be resolved first (anonymize.faces.choose.choose_detector)")
    raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(CHOICES)}")
