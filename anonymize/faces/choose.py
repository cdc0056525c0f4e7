"""``--detector auto``: the strongest detection this machine has, or can get, with one line saying why.

1. RetinaFace when its pinned weights are present and verified, else after fetching them (1.8 MB,
   pinned URL and sha256 in weights.lock, cached in the weights dir) when the network allows
   (``ANONYMIZE_OFFLINE=1`` skips the attempt); with MTCNN beside it (its weights come inside the
   facenet-pytorch wheel) the two run as an ensemble;
2. else MTCNN alone. It won the comparison with dlib's HOG detector (the other packaged one) on the
   43 labelled faces of the group photos: 43/43 vs 42/43 at their default thresholds, both without a
   false positive (README, Detection);
3. else dlib-hog (face_recognition_models), when facenet-pytorch is not installed.

Whatever it chooses, ``auto`` searches the frame padded and the mirror image too
(:mod:`anonymize.faces.augment`): on the crowded set (benchmarks/crowd.py) that takes the default
chain from 81 % of the faces to 100 % online and from 80 % to 98.9 % offline (README, Detection). A named
detector runs plain, as fast as it can, unless ``--recall-first``.

The audit chooses differently (:func:`choose_audit_detector`): not the best single detector but the
strongest detection this machine has, the ensemble of every fast detector whose weights are here at
recall-first thresholds, so it is always stronger than what the run used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from anonymize.faces.detect import AUTO, CHOICES, DETECTORS
from anonymize.faces.mtcnn import ARTEFACTS as MTCNN_ARTEFACTS
from anonymize.faces.retinaface import ARTEFACT as RETINAFACE_ARTEFACT
from anonymize.weights import WeightsError, WeightsStore
from anonymize.weights.records import ProgressCallback

OFFLINE_ENV = "ANONYMIZE_OFFLINE"
FALLBACKS = ("mtcnn", "dlib-hog")  # packaged weights, best recall first
PACKAGED_ARTEFACTS = {"mtcnn": tuple(MTCNN_ARTEFACTS.values()), "dlib-hog": ("dlib_shape_predictor_68",)}
AUDIT_ENSEMBLE = ("retinaface", "mtcnn", "dlib-hog")  # every fast detector, strongest first
ENSEMBLE_ARTEFACTS = {"retinaface": (RETINAFACE_ARTEFACT,), **PACKAGED_ARTEFACTS}


@dataclass(frozen=True)
class DetectorChoice:
    requested: str
    name: str  # the detector that runs
    reason: str  # one line for the user and the manifest
    augment: bool = False  # the padded frame and the mirror searched too (auto's default chain)

    def as_dict(self) -> dict[str, object]:
        return {"requested": self.requested, "used": self.name, "reason": self.reason, "augment": self.augment}


AUGMENTED = "the frame padded and the mirror searched"


def _strongest(reason: str, weights: WeightsStore) -> DetectorChoice:
    """RetinaFace is here: with MTCNN beside it when its packaged weights are installed."""
    if all(_present(weights, artefact) for artefact in PACKAGED_ARTEFACTS["mtcnn"]):
        return DetectorChoice(AUTO, "ensemble", f"retinaface+mtcnn ({AUGMENTED}): {reason}", augment=True)
    return DetectorChoice(AUTO, "retinaface", f"retinaface ({AUGMENTED}): {reason}; MTCNN is not installed "
                          "(facenet-pytorch), so it runs alone", augment=True)


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def choose_detector(requested: str, weights: WeightsStore, progress: ProgressCallback | None = None,
                    allow_download: bool | None = None) -> DetectorChoice:
    """Resolve ``auto``; any other known name is returned as it is."""
    if requested != AUTO:
        if requested not in CHOICES:
            raise ValueError(f"unknown detector {requested!r}: choose one of {', '.join(CHOICES)}")
        return DetectorChoice(requested, requested, f"{requested}: chosen with --detector")
    check = weights.check(RETINAFACE_ARTEFACT)
    if check.status == "present":
        return _strongest(f"RetinaFace's verified weights are in {check.path.parent}", weights)
    why_not = f"RetinaFace weights {check.status} ({check.path})"
    if allow_download if allow_download is not None else not offline():
        try:
            weights.fetch([RETINAFACE_ARTEFACT], progress)
            return _strongest(f"downloaded and verified RetinaFace's weights into {weights.path(RETINAFACE_ARTEFACT).parent}", weights)
        except WeightsError as exc:
            why_not += f" and the download failed ({_first_cause(str(exc))})"
    else:
        why_not += f" and downloads are off ({OFFLINE_ENV})"
    for name in FALLBACKS:
        if all(_present(weights, artefact) for artefact in PACKAGED_ARTEFACTS[name]):
            return DetectorChoice(AUTO, name, f"{name} ({AUGMENTED}): {why_not}; {name} uses weights shipped with an installed "
                                  f"package (run `anonymize weights fetch {RETINAFACE_ARTEFACT}` for RetinaFace)", augment=True)
    raise WeightsError(f"no face detector available: {why_not}, and neither facenet-pytorch (MTCNN) nor "
                       f"face_recognition_models (dlib) is installed; run `anonymize weights fetch {RETINAFACE_ARTEFACT}`")


@dataclass(frozen=True)
class AuditDetector:
    """The audit's detector: one named detector, or an ensemble, and why."""

    name: str  # a detector name, "ensemble" for several
    members: tuple[str, ...]  # the ensemble's members (empty for a single detector)
    recall_first: bool
    reason: str


def choose_audit_detector(requested: str, weights: WeightsStore, run_detector: object) -> AuditDetector:
    """``auto``: the ensemble of every available fast detector at recall-first thresholds, and why (compared with
    ``run_detector``, the detector the run recorded, or None); any other known name is used as it is.

    Raises ValueError for an unknown name (the audit turns it into its one-line error)."""
    if requested != AUTO:
        if requested not in DETECTORS:
            raise ValueError(f"unknown detector {requested!r}: choose auto or one of {', '.join(DETECTORS)}")
        return AuditDetector(requested, (), False, "chosen by the user")
    members = tuple(name for name in AUDIT_ENSEMBLE if all(_present(weights, artefact) for artefact in ENSEMBLE_ARTEFACTS[name]))
    described = "+".join(members) + " at recall-first thresholds"
    if not isinstance(run_detector, str):
        comparison = "the run's detector is unknown"
    elif len(members) > len(run_detector.split("+")) or run_detector.split("(")[0] in members:
        comparison = f"stronger than the run's {run_detector} (more detectors, lower thresholds)"
    else:
        comparison = f"the run used {run_detector}: not stronger (install the RetinaFace and MTCNN weights)"
    if len(members) < 2:
        return AuditDetector(members[0] if members else "dlib-hog", (), True, f"{described}; {comparison}; "
                             "only one detector available, so no face can be confirmed by a second one")
    return AuditDetector("ensemble", members, True, f"ensemble of {described}; {comparison}")


def _present(weights: WeightsStore, artefact: str) -> bool:
    try:
        return weights.status(artefact) == "present"
    except WeightsError:  # not in this weights.lock
        return False


def _first_cause(message: str) -> str:
    """The part of a fetch error that says what went wrong, without the advice that follows."""
    start = message.find("(")
    end = message.find(")", start)
    return message[start + 1:end] if 0 <= start < end else message.split(";")[0]
