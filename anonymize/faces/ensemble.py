"""The union of several detectors: a face any of them finds is kept, duplicates merged by overlap.

Detectors miss different faces (RetinaFace: some blurred and turned ones; MTCNN: some small ones),
so their union recalls more than either, at the cost of each one's false positives. Two boxes are
the same face when they overlap enough (IoU, or one lying mostly inside the other: dlib's boxes are
tighter than RetinaFace's). The merged face keeps the box and landmarks of the first member that
found it and records in ``found_by`` every member that did: a face found by one member only is less
certain, which the audit reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymize.faces.types import Detector, Face, keep_large_enough

Box = tuple[float, float, float, float]
SAME_FACE_IOU = 0.3
SAME_FACE_INSIDE = 0.7  # share of the smaller box inside the larger one
MAX_SIZE_RATIO = 2.5  # ... for boxes whose sides differ by at most this factor


def same_face(a: Box, b: Box) -> bool:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    if area_a <= 0 or area_b <= 0:
        return False
    if inter / (area_a + area_b - inter) >= SAME_FACE_IOU:
        return True
    ratio = max(area_a, area_b) / min(area_a, area_b)
    return inter / min(area_a, area_b) >= SAME_FACE_INSIDE and ratio <= MAX_SIZE_RATIO ** 2


def merge(detections: Sequence[tuple[str, Sequence[Face]]]) -> list[Face]:
    """Union of each member's faces (member order = priority); ``found_by`` lists who found each."""
    merged: list[Face] = []
    for member, faces in detections:
        for face in faces:
            for index, kept in enumerate(merged):
                if member not in kept.found_by and same_face(kept.box, face.box):
                    merged[index] = Face(kept.box, kept.score, kept.landmarks, (*kept.found_by, member))
                    break
            else:
                merged.append(Face(face.box, face.score, face.landmarks, (member,)))
    merged.sort(key=lambda face: (-len(face.found_by), -face.score))
    return merged


class EnsembleDetector:
    def __init__(self, members: Sequence[Detector], min_face: int = 0) -> None:
        self.members = list(members)
        self.min_face = min_face
        self.name = "ensemble(" + "+".join(member.name for member in self.members) + ")"

    def weights_used(self) -> dict[str, str]:
        return {name: sha for member in self.members for name, sha in member.weights_used().items()}

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return keep_large_enough(merge([(member.name, member.detect(rgb)) for member in self.members]), self.min_face)
