"""dlib's HOG and MMOD-CNN face detectors with the 68-point shape predictor (face_recognition_models)."""

from __future__ import annotations

import threading

import dlib
import numpy as np

from anonymize.faces.types import Face, keep_large_enough
from anonymize.weights import WeightsStore

# dlib finds faces down to about 80 px; one 2x upsampling reaches about 40 px. Upsample only
# while the upsampled image stays this small, so big photos do not cost minutes.
MAX_UPSAMPLED_SIDE = {"dlib-hog": 2200, "dlib-cnn": 1400}


class DlibDetector:
    def __init__(self, name: str, weights: WeightsStore, threshold: float, min_face: int) -> None:
        self.name = name
        self.threshold = threshold
        self.min_face = min_face
        self._artefacts = ["dlib_shape_predictor_68"] + (["dlib_mmod_detector"] if name == "dlib-cnn" else [])
        self._weights = weights
        self._predictor = dlib.shape_predictor(str(weights.require("dlib_shape_predictor_68")))
        if name == "dlib-cnn":
            self._cnn = dlib.cnn_face_detection_model_v1(str(weights.require("dlib_mmod_detector")))
        else:
            self._hog = dlib.get_frontal_face_detector()
        # dlib's detectors release the GIL and are not safe to call from two threads at once (the audit's threads
        # share one detector: that crashed the process); each call holds the detector
        self._lock = threading.Lock()

    def weights_used(self) -> dict[str, str]:
        return {name: self._weights.sha256(name) or "" for name in self._artefacts}

    def _upsample_times(self, rgb: np.ndarray) -> int:
        side, times = max(rgb.shape[:2]), 0
        while times < 2 and side * 2 <= MAX_UPSAMPLED_SIDE[self.name]:
            side, times = side * 2, times + 1
        return times

    def detect(self, rgb: np.ndarray) -> list[Face]:
        with self._lock:
            return self._detect(rgb)

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        image = np.ascontiguousarray(rgb)
        upsample = self._upsample_times(image)
        if self.name == "dlib-cnn":
            found = [(d.rect, float(d.confidence)) for d in self._cnn(image, upsample)]
        else:
            rects, scores, _ = self._hog.run(image, upsample, self.threshold)
            found = list(zip(rects, (float(s) for s in scores)))
        faces = []
        for rect, score in found:
            if score < self.threshold:
                continue
            shape = self._predictor(image, rect)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            box = (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))
            faces.append(Face(box, score, landmarks))
        faces.sort(key=lambda face: -face.score)
        return keep_large_enough(faces, self.min_face)
