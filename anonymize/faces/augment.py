"""Test-time augmentation for recall: the frame padded, and the mirror image searched too.

A face cut by the frame is half a face at the image's border, where a detector's convolutions see
zeros and its anchors have no room: padding the photo by PAD_SHARE of its long side with its own
reflection across each edge puts the half face inside the network's field and completes it with its
mirror half (a face is nearly symmetric), and its box is clipped back to the frame. On the crowded set
the reflection found 50 of the 50 cut faces with the default ensemble, where padding with the edge's
mean colour found 48 (small faces 22 px inside the frame; README, Detection). A detector's errors are
not mirror-symmetric (anchors, training crops), so searching the mirrored photo finds some faces the
original misses. Faces found both ways are merged as the
ensemble merges its members' (:func:`anonymize.faces.ensemble.same_face`); a face found only in the
mirror gets its landmarks mirrored back (left and right swapped, as five points); a face found both
ways keeps the original's box and landmarks and the union of who found it (``found_by``).
"""

from __future__ import annotations

import numpy as np

from anonymize.faces.ensemble import same_face
from anonymize.faces.types import Detector, Face, eye_and_mouth_points, keep_large_enough

PAD_SHARE = 0.1  # padding on each side, as a share of the photo's long side


def five_points_of(face: Face) -> np.ndarray:
    """The face's landmarks as five points (eyes, nose, mouth corners); 68 iBUG points are reduced."""
    landmarks = np.asarray(face.landmarks, np.float32)
    if landmarks.shape == (5, 2):
        return landmarks
    eye_left, eye_right, mouth_left, mouth_right = eye_and_mouth_points(landmarks)
    return np.stack([eye_left, eye_right, landmarks[30], mouth_left, mouth_right]).astype(np.float32)


def mirrored(face: Face, width: int) -> Face:
    """A face found in the mirror image, in the original's coordinates (five landmarks, left and right swapped)."""
    x0, y0, x1, y1 = face.box
    points = five_points_of(face).copy()
    points[:, 0] = width - points[:, 0]
    points = points[[1, 0, 2, 4, 3]]
    return Face((width - x1, y0, width - x0, y1), face.score, points, face.found_by)


def clipped(face: Face, height: int, width: int) -> Face | None:
    """The face with its box clipped to the frame (None when nothing of it is inside)."""
    x0, y0, x1, y1 = face.box
    box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    return Face(box, face.score, face.landmarks, face.found_by)


def reflect_padded(rgb: np.ndarray, margin: int) -> np.ndarray:
    """``rgb`` with ``margin`` pixels on every side, each the image reflected across its nearest edge (edge row
    repeated, as a mirror placed on the frame; a margin wider than the image is reflected back and forth)."""
    return np.pad(rgb, ((margin, margin), (margin, margin), (0, 0)), mode="symmetric")


class AugmentedDetector:
    """``base`` on the padded photo, and on its mirror when ``flips``; the union of what both find."""

    def __init__(self, base: Detector, pad: bool = True, flips: bool = True) -> None:
        self.base = base
        self.pad = pad
        self.flips = flips
        self.name = base.name  # the same detector, looking harder: found_by and reports keep its name
        self.threshold = getattr(base, "threshold", None)
        self.min_face = getattr(base, "min_face", 0)

    def weights_used(self) -> dict[str, str]:
        return self.base.weights_used()  # type: ignore[attr-defined]

    def _padded_detect(self, rgb: np.ndarray) -> list[Face]:
        if not self.pad:
            return self.base.detect(rgb)
        height, width = rgb.shape[:2]
        margin = int(round(PAD_SHARE * max(height, width)))
        canvas = reflect_padded(rgb, margin)
        found = []
        for face in self.base.detect(canvas):
            x0, y0, x1, y1 = face.box
            shifted = Face((x0 - margin, y0 - margin, x1 - margin, y1 - margin), face.score,
                           np.asarray(face.landmarks, np.float32) - margin, face.found_by)
            kept = clipped(shifted, height, width)
            if kept is not None:
                found.append(kept)
        return found

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = self._padded_detect(rgb)
        if not self.flips:
            return faces
        width = rgb.shape[1]
        merged = list(faces)
        for face in (mirrored(face, width) for face in self._padded_detect(np.ascontiguousarray(rgb[:, ::-1]))):
            for index, kept in enumerate(merged):
                if same_face(kept.box, face.box):
                    found_by = tuple(dict.fromkeys((*kept.found_by, *face.found_by)))
                    merged[index] = Face(kept.box, max(kept.score, face.score), kept.landmarks, found_by)
                    break
            else:
                merged.append(face)
        merged.sort(key=lambda face: -face.score)
        return keep_large_enough(merged, self.min_face)
