"""dlib's 68 landmarks (iBUG layout) of faces: fitted in given boxes, or found on an aligned crop.

Both read ``shape_predictor_68_face_landmarks`` (face_recognition_models), loaded once per process.
:data:`FFHQ_FACE_BOX` is where dlib's HOG box of an FFHQ-aligned face lies on average (measured on 30
aligned CelebA crops of ../shared/data/celeba-ids, standard deviation 0.04 of the side): the box used
on a crop where the detector finds no face.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np

from anonymize.weights import WeightsStore

Box = Sequence[float]
FFHQ_FACE_BOX = (0.20, 0.30, 0.78, 0.88)  # x0, y0, x1, y1 as fractions of the crop side


@lru_cache(maxsize=2)
def shape_predictor(path: Path) -> dlib.shape_predictor:
    """dlib's landmark predictor from its file, read once per process (68- and 5-point models)."""
    return dlib.shape_predictor(str(path))


def box_rectangle(box: Box) -> dlib.rectangle:
    """An x0, y0, x1, y1 box (end exclusive, float) as dlib's inclusive integer rectangle."""
    x0, y0, x1, y1 = box
    return dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)


@lru_cache(maxsize=1)
def _hog_detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


class BoxLandmarks:
    """A dlib landmark predictor (68- or 5-point) fitted in given x0, y0, x1, y1 boxes."""

    def __init__(self, predictor_path: Path) -> None:
        self._predictor = shape_predictor(Path(predictor_path))

    def fit(self, rgb: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        image = np.ascontiguousarray(rgb)
        fitted = []
        for box in boxes:
            shape = self._predictor(image, box_rectangle(box))
            fitted.append(np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float64))
        return fitted


class LandmarkFinder:
    """dlib's 68 landmarks of the one face of an aligned crop."""

    def __init__(self, weights: WeightsStore) -> None:
        self.predictor = shape_predictor(weights.require("dlib_shape_predictor_68"))
        self.detector = _hog_detector()

    def __call__(self, crop: np.ndarray, given: np.ndarray | None = None) -> np.ndarray:
        """68 x 2 float landmarks in crop pixels (``given`` is used as it is when it already has 68 points)."""
        if given is not None and np.asarray(given).shape == (68, 2):
            return np.asarray(given, dtype=np.float64)
        image = np.ascontiguousarray(crop)
        shape = self.predictor(image, self.face_rect(image))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)

    def face_rect(self, crop: np.ndarray) -> dlib.rectangle:
        """The HOG box of the face nearest the crop's centre, or the average FFHQ box when none is found."""
        side = crop.shape[0]
        found = list(self.detector(np.ascontiguousarray(crop), 0))
        if found:
            return min(found, key=lambda r: abs((r.left() + r.right()) / 2 - side / 2) + abs((r.top() + r.bottom()) / 2 - side / 2))
        x0, y0, x1, y1 = (round(v * side) for v in FFHQ_FACE_BOX)
        return dlib.rectangle(x0, y0, x1, y1)


def inter_ocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[36:42].mean(axis=0) - landmarks[42:48].mean(axis=0)))
