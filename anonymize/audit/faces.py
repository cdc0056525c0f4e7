"""Which faces an original holds, and whether each is still found at its place in the output.

The audit's own detector (independent of the run's) looks at the original; faces the run itself
recorded in the manifest and the audit detector did not find are added, so a face either of them
saw is checked. For aligned datasets (one face filling each image) a face the detector cannot find
is the whole image, slightly inset, as the run treats it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from anonymize.faces.detect import Detector
from anonymize.metrics.detection import iou

Box = tuple[float, float, float, float]
FoundBy = Literal["audit", "manifest", "both", "whole-image"]

SAME_FACE_IOU = 0.3  # boxes overlapping this much are the same face
ALIGNED_INSET = 0.1  # an aligned crop's face: the image without this share on each side


@dataclass(frozen=True)
class SourceFace:
    box: Box
    score: float | None
    found_by: FoundBy


def source_faces(rgb: np.ndarray, detector: Detector, manifest_boxes: Sequence[Box], aligned: bool) -> list[SourceFace]:
    """The faces of an original image, best-scored audit detections first."""
    detected = [SourceFace(tuple(float(v) for v in face.box), float(face.score), "audit") for face in detector.detect(rgb)]
    if aligned:
        return detected[:1] or [SourceFace(_inset_whole_image(rgb), None, "whole-image")]
    faces = list(detected)
    for box in manifest_boxes:
        overlaps = [(iou(face.box, box), index) for index, face in enumerate(faces)]
        best = max(overlaps, default=(0.0, -1))
        if best[0] >= SAME_FACE_IOU:
            face = faces[best[1]]
            if face.found_by == "audit":
                faces[best[1]] = SourceFace(face.box, face.score, "both")
        else:
            faces.append(SourceFace(tuple(float(v) for v in box), None, "manifest"))
    return faces


def match_boxes(source: Sequence[Box], found: Sequence[Box], threshold: float = SAME_FACE_IOU) -> list[float | None]:
    """For each source box, the IoU of the output detection matched to it one-to-one (None: no match)."""
    pairs = sorted(((iou(s, f), i, j) for i, s in enumerate(source) for j, f in enumerate(found)), reverse=True)
    matched: list[float | None] = [None] * len(source)
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if matched[i] is None and j not in used:
            matched[i] = overlap
            used.add(j)
    return matched


def _inset_whole_image(rgb: np.ndarray) -> Box:
    height, width = rgb.shape[:2]
    return (width * ALIGNED_INSET, height * ALIGNED_INSET, width * (1 - ALIGNED_INSET), height * (1 - ALIGNED_INSET))
