"""Identity descriptors from dlib's ResNet face recognizer (face_recognition_models).

It is independent of every network a method optimises against (ArcFace, FaRL), so it is a fair
judge of whether an anonymized face still looks like its original. dlib's own threshold: two
descriptors closer than 0.6 are the same person.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np

from anonymize.weights import WeightsStore

SAME_PERSON_DISTANCE = 0.6


class DlibRecognizer:
    """128-d descriptors of faces given by their boxes (landmarks re-fitted with dlib's 5-point model)."""

    def __init__(self, weights: WeightsStore) -> None:
        self._predictor, self._encoder = _load(
            weights.require("dlib_shape_predictor_5"), weights.require("dlib_face_recognition_resnet")
        )

    def descriptors(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """N x 128 descriptors for the given x0, y0, x1, y1 boxes of one image."""
        if len(boxes) == 0:
            return np.zeros((0, 128), np.float32)
        image = np.ascontiguousarray(rgb)
        shapes = dlib.full_object_detections()
        for x0, y0, x1, y1 in boxes:
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            shapes.append(self._predictor(image, rect))
        return np.asarray(self._encoder.compute_face_descriptor(image, shapes), dtype=np.float32)

    def descriptor_of_aligned(self, rgb: np.ndarray) -> np.ndarray:
        """Descriptor of an image that is itself one face crop (the box is the whole image, slightly inset)."""
        height, width = rgb.shape[:2]
        inset_x, inset_y = width * 0.1, height * 0.1
        return self.descriptors(rgb, [(inset_x, inset_y, width - inset_x, height - inset_y)])[0]


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance along the last axis (dlib's metric)."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)


@lru_cache(maxsize=2)
def _load(predictor_path: Path, encoder_path: Path) -> tuple[dlib.shape_predictor, dlib.face_recognition_model_v1]:
    return dlib.shape_predictor(str(predictor_path)), dlib.face_recognition_model_v1(str(encoder_path))
