"""RetinaFace MobileNet-0.25 through facexlib, loaded from the weights dir (never from its download URL)."""

from __future__ import annotations

import cv2
import numpy as np

from anonymize.faces.detect import keep_large_enough
from anonymize.faces.types import Face
from anonymize.weights import WeightsStore

ARTEFACT = "retinaface_mobilenet0.25"
# The pinned file (biubug6/Face-Detector-1MB-with-landmark, mobilenet0.25_Final.pth) has facexlib's
# parameter names and shapes but was trained with a slightly different network: smaller anchors
# (with facexlib's, every box comes out 1.6 times too large) and plain ReLU where facexlib uses
# LeakyReLU(0.1). Both belong to the weights, so we set them on facexlib's module after loading.
ANCHOR_MIN_SIZES = [[10, 20], [32, 64], [128, 256]]
# The network was trained on 300 px images; at full resolution large photos give confident false
# positives on textures (a painted background in portraits/biden_2.jpg). Larger photos are
# detected at this size: recall on the labelled group photos stays 43/43, false positives drop to 0.
DETECTION_MAX_SIDE = 640


class RetinaFaceDetector:
    name = "retinaface"

    def __init__(self, weights: WeightsStore, threshold: float, min_face: int, device: str) -> None:
        import torch
        from facexlib.detection import init_detection_model

        path = weights.require(ARTEFACT)  # verified; facexlib then finds it under its own file name
        self.threshold = threshold
        self.min_face = min_face
        self._weights = weights
        self._torch = torch
        self._model = init_detection_model("retinaface_mobile0.25", half=False, device=device, model_rootpath=str(path.parent))
        self._model.cfg = {**self._model.cfg, "min_sizes": ANCHOR_MIN_SIZES}
        for module in self._model.modules():
            if isinstance(module, torch.nn.LeakyReLU):
                module.negative_slope = 0.0

    def weights_used(self) -> dict[str, str]:
        return {ARTEFACT: self._weights.sha256(ARTEFACT) or ""}

    def detect(self, rgb: np.ndarray) -> list[Face]:
        scale = min(1.0, DETECTION_MAX_SIDE / max(rgb.shape[:2]))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if scale < 1.0:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        with self._torch.inference_mode():
            detections = self._model.detect_faces(bgr, conf_threshold=self.threshold, nms_threshold=0.4, use_origin_size=True)
        faces = []
        for row in np.asarray(detections, dtype=np.float64).reshape(-1, 15):
            box = tuple(float(v) for v in row[:4] / scale)
            landmarks = (row[5:15].reshape(5, 2) / scale).astype(np.float32)
            faces.append(Face(box, float(row[4]), landmarks))
        faces.sort(key=lambda face: -face.score)
        return keep_large_enough(faces, self.min_face)
