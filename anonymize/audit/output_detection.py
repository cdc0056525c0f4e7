"""Every detector's look at one output, each network run once.

The audit looks for faces in each output twice: with its own detector (the recall-first ensemble,
for the missed-face and detection checks) and with each paper detector at its default threshold
(dlib HOG, MTCNN, RetinaFace, for the per-detector detection rates). The ensemble's members are
those same detectors at lower thresholds, so running both repeated the same networks on the same
pixels: that was a fifth of the audit's time on the portraits.

A default-threshold detection is derived from the member's recall-first one instead, only when that
is exactly what the detector itself would return: same detector class and minimum face size,
member threshold not above the default one, and a detector whose faces are kept by a score test
followed by greedy non-maximum suppression best-first (RetinaFace, MTCNN's last stage, dlib HOG).
In greedy suppression a face is removed only by a better-scored face, so the faces scoring above
the default threshold, and which of them survive, are the same whether the lower-scored candidates
were there or not. Any other detector (or a user-set threshold above the default) runs on its own,
as before. No check is weakened: the same networks see the same pixels; only repeats are skipped.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from anonymize.faces.detect import Detector
from anonymize.faces.ensemble import merge
from anonymize.faces.types import Face, keep_large_enough

# How each detector compares a score with its threshold (RetinaFace and MTCNN: score > t; dlib HOG: score >= t).
SCORE_TESTS: dict[str, Callable[[float, float], bool]] = {"retinaface": operator.gt, "mtcnn": operator.gt, "dlib-hog": operator.ge}


@dataclass(frozen=True)
class OutputFaces:
    """What the audit detector and each output detector found in one output."""

    audit: list[Face]  # the audit detector's faces (the ensemble's merged union, or the single detector's)
    by_detector: dict[str, list[Face]]  # output detector name -> its faces at its own threshold


def _sources(audit_detector: Detector) -> list[Detector]:
    """The detectors whose raw faces make the audit detector's: an ensemble's members, or the detector itself."""
    members = getattr(audit_detector, "members", None)
    return list(members) if members else [audit_detector]


def derivable_from(source: Detector, target: Detector) -> bool:
    """Whether ``target``'s faces are exactly ``source``'s above ``target``'s threshold (see the module doc)."""
    name = getattr(target, "name", None)
    return (name in SCORE_TESTS and getattr(source, "name", None) == name and type(source) is type(target)
            and getattr(source, "min_face", None) == getattr(target, "min_face", None)
            and isinstance(getattr(source, "threshold", None), float | int) and isinstance(getattr(target, "threshold", None), float | int)
            and source.threshold <= target.threshold)


class OutputDetection:
    """Runs each distinct detector network once per output; derives the rest (see the module doc for when)."""

    def __init__(self, audit_detector: Detector, output_detectors: Mapping[str, Detector]) -> None:
        self.audit_detector = audit_detector
        self.output_detectors = dict(output_detectors)
        self._ensemble = bool(getattr(audit_detector, "members", None))
        self._sources = _sources(audit_detector)
        self.derived: dict[str, int] = {}  # output detector name -> index of the source it is read from
        for name, detector in self.output_detectors.items():
            for index, source in enumerate(self._sources):
                if derivable_from(source, detector):
                    self.derived[name] = index
                    break

    def detect(self, rgb: np.ndarray) -> OutputFaces:
        """The audit detector's faces and each output detector's, as if each had run on ``rgb`` alone."""
        raw = [source.detect(rgb) for source in self._sources]
        if self._ensemble:
            audit = keep_large_enough(merge([(source.name, faces) for source, faces in zip(self._sources, raw)]),
                                      getattr(self.audit_detector, "min_face", 0))
        else:
            audit = raw[0]
        by_detector = {}
        for name, detector in self.output_detectors.items():
            if name in self.derived:
                passes = SCORE_TESTS[name]
                by_detector[name] = [face for face in raw[self.derived[name]] if passes(face.score, detector.threshold)]
            else:
                by_detector[name] = detector.detect(rgb)
        return OutputFaces(audit, by_detector)
