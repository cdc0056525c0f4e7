"""Which faces an original holds, and whether each is still found at its place in the output.

The audit's own detector (independent of the run's) looks at the original; faces the run itself
recorded in the manifest and the audit detector did not find are added, so a face either of them
saw is checked. For aligned datasets (one face filling each image) a face the detector cannot find
is the whole image, slightly inset, as the run treats it.

A face only one detector saw may be a logo's letter or a pattern. With an ensemble, a face is
confirmed when two members found it, or when another member finds it again, with its landmarks
inside the box, on an enlarged close-up of the place; otherwise it is a "possible face": listed
and checked for changes, but not counted in re-identification or in the missed-face gate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np

from anonymize.faces.detect import Detector
from anonymize.faces.types import Face, eye_and_mouth_points
from anonymize.metrics.detection import iou

Box = tuple[float, float, float, float]
FoundBy = Literal["audit", "manifest", "both", "whole-image"]
CloseUpCheck = Callable[[np.ndarray, Box, Sequence[Detector]], "str | None"]

SAME_FACE_IOU = 0.3  # boxes overlapping this much are the same face
ALIGNED_INSET = 0.1  # an aligned crop's face: the image without this share on each side
CLOSE_UP_MARGIN = 0.5  # the close-up shows the box grown by this share of its size on each side
CLOSE_UP_FACE = 160  # ... scaled so that the box's longer side is this many pixels


@dataclass(frozen=True)
class SourceFace:
    box: Box
    score: float | None
    found_by: FoundBy
    detectors: tuple[str, ...] = ()  # the ensemble members that found it in the original
    confirmed_by: str | None = None  # what makes it a face: "retinaface+mtcnn", "close-up: dlib-hog", ...
    possible: bool = False  # seen by one detector only and not confirmed
    landmarks: np.ndarray | None = field(default=None, compare=False)  # from the audit detector (None: manifest or whole image)

    @property
    def status(self) -> str:
        return "possible face" if self.possible else "face"


def source_faces(rgb: np.ndarray, detector: Detector, manifest_boxes: Sequence[Box], aligned: bool,
                 detections: Sequence[Face] | None = None) -> list[SourceFace]:
    """The faces of an original image, best-scored audit detections first.

    ``detections``: the audit detector's faces on ``rgb`` when already known (the originals cache,
    :mod:`anonymize.audit.originals_cache`), else it runs here."""
    found = detector.detect(rgb) if detections is None else detections
    detected = [SourceFace(tuple(float(v) for v in face.box), float(face.score), "audit", tuple(face.found_by),
                           landmarks=face.landmarks)
                for face in found]
    if aligned:
        return detected[:1] or [SourceFace(_inset_whole_image(rgb), None, "whole-image")]
    faces = list(detected)
    for box in manifest_boxes:
        overlaps = [(iou(face.box, box), index) for index, face in enumerate(faces)]
        best = max(overlaps, default=(0.0, -1))
        if best[0] >= SAME_FACE_IOU:
            face = faces[best[1]]
            if face.found_by == "audit":
                faces[best[1]] = replace(face, found_by="both")
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


def confirm_faces(rgb: np.ndarray, faces: Sequence[SourceFace], detector: Detector,
                  close_up_check: CloseUpCheck | None = None) -> list[SourceFace]:
    """Mark each face confirmed (two detectors agree) or possible; only an ensemble can give a second opinion.

    ``close_up_check`` replaces :func:`confirmed_on_close_up` (same arguments and answer), e.g. to read
    a verdict the originals cache kept."""
    check = close_up_check or confirmed_on_close_up
    members = list(getattr(detector, "members", []))
    if len(members) < 2:
        return [replace(face, confirmed_by=face.confirmed_by or "single audit detector") for face in faces]
    confirmed = []
    for face in faces:
        if face.found_by == "whole-image":
            confirmed.append(replace(face, confirmed_by="aligned input"))
        elif len(face.detectors) >= 2:
            confirmed.append(replace(face, confirmed_by="+".join(face.detectors)))
        else:
            others = [member for member in members if member.name not in face.detectors]
            second = check(rgb, face.box, others)
            confirmed.append(replace(face, confirmed_by=f"close-up: {second}" if second else None, possible=second is None))
    return confirmed


def close_up(rgb: np.ndarray, box: Box) -> tuple[np.ndarray, float, float, float]:
    """The box's surroundings enlarged (or shrunk) to a standard face size: (image, scale, left, top)."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = box
    grow = CLOSE_UP_MARGIN * max(x1 - x0, y1 - y0)
    left, top = int(max(0, x0 - grow)), int(max(0, y0 - grow))
    right, bottom = int(min(width, np.ceil(x1 + grow))), int(min(height, np.ceil(y1 + grow)))
    scale = CLOSE_UP_FACE / max(x1 - x0, y1 - y0, 1.0)
    crop = rgb[top:max(bottom, top + 1), left:max(right, left + 1)]
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    resized = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    return np.ascontiguousarray(resized), scale, float(left), float(top)


def confirmed_on_close_up(rgb: np.ndarray, box: Box, detectors: Sequence[Detector]) -> str | None:
    """The name of the first detector that finds this face again on a close-up, landmarks inside the box."""
    image, scale, left, top = close_up(rgb, box)
    for detector in detectors:
        for face in detector.detect(image):
            found = (face.box[0] / scale + left, face.box[1] / scale + top, face.box[2] / scale + left, face.box[3] / scale + top)
            if iou(found, box) < SAME_FACE_IOU:
                continue
            points = np.stack(eye_and_mouth_points(face.landmarks)) / scale + (left, top)
            x0, y0, x1, y1 = box
            if ((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)).all():
                return detector.name
    return None
