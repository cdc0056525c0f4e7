"""Heads from a pose model: a person whose face no detector finds (turned away, half hidden, blurred by
motion) still has a head where MoveNet MultiPose puts its nose, eyes and ears.

MoveNet MultiPose Lightning (``movenet-multipose`` of the human-models, read by the TF.js reader)
takes int32 RGB of any size whose sides are multiples of 32 and gives up to six people, each 17
keypoints (y, x, score; COCO order: nose, eyes, ears, shoulders...) and a box (ymin, xmin, ymax,
xmax, score), all relative to its input, as ``@vladmandic/human``'s ``movenet.ts`` reads them. The
photo is padded to a square (so nothing is stretched) and resized to INPUT_SIDE, whole and in a 2 x 2
grid of overlapping windows when it is large (the model gives at most six people a call).

A head box is built from the head keypoints the model is sure of (score >= KEYPOINT_SCORE): centred
on them, as wide as the widest of 1.4 ear distances, 3 eye distances, 2.5 eye-to-nose heights and
0.55 shoulder widths (the proportions of an adult head; the box errs large). At least two head
keypoints, or one and both shoulders, make a head. :class:`HeadsDetector` adds a head to a
detector's faces only where no face box lies in it: the face, when found, stays the better record.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from anonymize.faces.types import Detector, Face, keep_large_enough
from anonymize.weights import WeightsStore

MODEL = "movenet-multipose"
INPUT_SIDE = 256  # a multiple of 32
PERSON_SCORE = 0.2  # a person's box score under this: nobody there
KEYPOINT_SCORE = 0.3  # human's default body.minConfidence
WINDOW_OVERLAP = 0.25  # the 2 x 2 windows share this share of their side
WINDOWS_FROM = 2.5  # a photo whose long side is over this many inputs is also searched in windows (0.5 s a call on a CPU)
NOSE, EYE_LEFT, EYE_RIGHT, EAR_LEFT, EAR_RIGHT, SHOULDER_LEFT, SHOULDER_RIGHT = range(7)
FOUND_BY = "movenet"
# where a frontal face's five landmarks sit in its head box (for a head whose eyes the model did not see)
TEMPLATE = np.array([[0.36, 0.42], [0.64, 0.42], [0.5, 0.58], [0.39, 0.72], [0.61, 0.72]], np.float32)


@dataclass(frozen=True)
class Person:
    keypoints: np.ndarray  # 17 x 3: x, y in image pixels, score
    score: float


def head_box(keypoints: np.ndarray) -> tuple[float, float, float, float] | None:
    """The head's square box from a person's keypoints (x, y, score), or None when too little of the head is seen."""
    seen = keypoints[:, 2] >= KEYPOINT_SCORE
    head = [index for index in (NOSE, EYE_LEFT, EYE_RIGHT, EAR_LEFT, EAR_RIGHT) if seen[index]]
    shoulders = bool(seen[SHOULDER_LEFT] and seen[SHOULDER_RIGHT])
    if len(head) < 2 and not (head and shoulders):
        return None
    points = keypoints[:, :2]

    def distance(a: int, b: int) -> float:
        return float(np.linalg.norm(points[a] - points[b])) if seen[a] and seen[b] else 0.0

    eye_height = max(abs(points[NOSE, 1] - points[eye, 1]) for eye in (EYE_LEFT, EYE_RIGHT)) if seen[NOSE] else 0.0
    side = max(1.4 * distance(EAR_LEFT, EAR_RIGHT), 3.0 * distance(EYE_LEFT, EYE_RIGHT), 2.5 * float(eye_height),
               0.55 * distance(SHOULDER_LEFT, SHOULDER_RIGHT), 1.6 * max(distance(a, b) for a in head for b in head))
    if side <= 0:
        return None
    centre_x, centre_y = points[head].mean(axis=0)
    return (float(centre_x - side / 2), float(centre_y - side / 2), float(centre_x + side / 2), float(centre_y + side / 2))


def head_landmarks(keypoints: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Five landmarks for the alignment: the eyes and nose where the model saw them, the mouth below; else a template."""
    seen = keypoints[:, 2] >= KEYPOINT_SCORE
    if seen[EYE_LEFT] and seen[EYE_RIGHT] and seen[NOSE]:
        eye_left, eye_right, nose = (keypoints[index, :2].astype(np.float32) for index in (EYE_LEFT, EYE_RIGHT, NOSE))
        if eye_left[0] > eye_right[0]:  # image-left first, as the detectors give them
            eye_left, eye_right = eye_right, eye_left
        mouth = nose + (nose - (eye_left + eye_right) / 2) * 0.9
        across = (eye_right - eye_left) * 0.4
        return np.stack([eye_left, eye_right, nose, mouth - across, mouth + across]).astype(np.float32)
    x0, y0, x1, y1 = box
    return (TEMPLATE * np.array([x1 - x0, y1 - y0], np.float32) + np.array([x0, y0], np.float32)).astype(np.float32)


class PoseModel:
    """MoveNet MultiPose on a photo: the people it finds (thread-safe)."""

    def __init__(self, weights: WeightsStore, device: str) -> None:
        from anonymize.models.human import load_human_model

        self._weights = weights
        self._model = load_human_model(weights, MODEL, None, device)
        self._device = device
        self._lock = threading.Lock()

    def weights_used(self) -> dict[str, str]:
        from anonymize.weights.human import artefact_names

        return {name: self._weights.sha256(name) or "" for name in artefact_names(MODEL)}

    def people(self, rgb: np.ndarray) -> list[Person]:
        """Everyone the model finds in the whole photo and in a 2 x 2 grid of overlapping windows (it gives at most
        six people a call, and small ones are few pixels of its input); a person seen twice is kept once."""
        height, width = rgb.shape[:2]
        side = max(height, width)
        window = int(np.ceil(side / (2 - WINDOW_OVERLAP)))
        views = [(0, 0, side)]
        if side > WINDOWS_FROM * INPUT_SIDE:  # the model's input would shrink people too much: windows too
            views += [(x, y, window) for y in (0, side - window) for x in (0, side - window) if y < height and x < width]
        found: list[Person] = []
        for x0, y0, size in views:
            for person in self._people_in(rgb, x0, y0, size):
                box = head_box(person.keypoints)
                if box is not None and any(_same_head(box, head_box(other.keypoints)) for other in found):
                    continue
                found.append(person)
        return found

    def _people_in(self, rgb: np.ndarray, x0: int, y0: int, size: int) -> list[Person]:
        """The people in the square window (x0, y0, size) of the photo (padded with black beyond it)."""
        import torch

        square = np.zeros((size, size, 3), np.uint8)
        part = rgb[y0:y0 + size, x0:x0 + size]
        square[:part.shape[0], :part.shape[1]] = part
        pixels = cv2.resize(square, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_AREA if size > INPUT_SIDE else cv2.INTER_LINEAR)
        with self._lock, torch.inference_mode():
            output = next(iter(self._model(torch.from_numpy(pixels[None].astype(np.int32)).to(self._device)).values()))
        people = []
        for row in output[0].cpu().numpy().astype(np.float64):
            if row[55] < PERSON_SCORE:
                continue
            keypoints = row[:51].reshape(17, 3)
            xy = np.column_stack([keypoints[:, 1] * size + x0, keypoints[:, 0] * size + y0])
            people.append(Person(np.column_stack([xy, keypoints[:, 2]]), float(row[55])))
        return people


def _same_head(a: tuple[float, float, float, float], b: tuple[float, float, float, float] | None) -> bool:
    if b is None:
        return False
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return smaller > 0 and inter / smaller >= 0.5


def covered(head: tuple[float, float, float, float], faces: list[Face]) -> bool:
    """Whether a face box's centre lies in the head box (the face is that head's)."""
    x0, y0, x1, y1 = head
    return any(x0 <= (face.box[0] + face.box[2]) / 2 <= x1 and y0 <= (face.box[1] + face.box[3]) / 2 <= y1 for face in faces)


class HeadsDetector:
    """``base``'s faces, plus a head for every person the pose model finds whose head holds no face box."""

    def __init__(self, base: Detector, pose: PoseModel) -> None:
        self.base = base
        self.pose = pose
        self.name = base.name
        self.threshold = getattr(base, "threshold", None)
        self.min_face = getattr(base, "min_face", 0)
        members = getattr(base, "members", None)
        if members:
            self.members = members  # the face detectors: the audit's close-ups ask them

    def weights_used(self) -> dict[str, str]:
        return {**self.base.weights_used(), **self.pose.weights_used()}  # type: ignore[attr-defined]

    def heads(self, rgb: np.ndarray, faces: list[Face]) -> list[Face]:
        height, width = rgb.shape[:2]
        found = []
        for person in self.pose.people(rgb):
            box = head_box(person.keypoints)
            if box is None or covered(box, [*faces, *found]):
                continue
            clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
            if clipped[2] - clipped[0] < 4 or clipped[3] - clipped[1] < 4:
                continue
            found.append(Face(clipped, person.score, head_landmarks(person.keypoints, box), (FOUND_BY,)))
        return found

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = self.base.detect(rgb)
        return [*faces, *keep_large_enough(self.heads(rgb, faces), self.min_face)]
