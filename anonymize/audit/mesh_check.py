"""A second, different model's word on a possible face: does MediaPipe's face mesh fit it?

A possible face (one detector found it, no other confirmed it on a close-up) that the release left
unchanged may be a missed person or a pattern. The face mesh network (``facemesh`` of the
human-models, 468 landmarks and a face-presence score) is trained on face crops, not on detector
outputs: on the crop MediaPipe feeds it (the box enlarged 1.4 times, squared, 192 x 192, RGB in
[0, 1]) real faces score 0.86 to 1.0 and most false detections on ../shared/data (dog fur, a painted
background) under 0.25, though one dog's face scored 0.998. So the mesh can only *rule a face out*:
a score under MESH_FACE_SCORE says no face is there; anything else keeps the possible face counted
against the gate.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from anonymize.weights import WeightsStore

MODEL = "facemesh"
INPUT = 192
CROP_SCALE = 1.4  # MediaPipe's enlargement of a detector box before the mesh
MESH_FACE_SCORE = 0.5  # under this, no face mesh fits the region: the possible face is ruled out


def mesh_crop(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The square around ``box`` (its long side x CROP_SCALE) at INPUT x INPUT, black outside the image."""
    x0, y0, x1, y1 = box
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0, 1.0) * CROP_SCALE / 2
    scale = INPUT / (2 * half)
    matrix = np.array([[scale, 0, -(centre_x - half) * scale], [0, scale, -(centre_y - half) * scale]])
    return cv2.warpAffine(rgb, matrix, (INPUT, INPUT), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


class MeshCheck:
    """The face mesh's presence score of regions of a photo (thread-safe)."""

    name = "facemesh"

    def __init__(self, weights: WeightsStore, device: str) -> None:
        from anonymize.models.human import load_human_model

        self._model = load_human_model(weights, MODEL, ("Identity_1",), device)
        self._device = device
        self._lock = threading.Lock()

    def scores(self, rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[float]:
        if not boxes:
            return []
        import torch

        batch = np.stack([mesh_crop(rgb, box) for box in boxes]).astype(np.float32) / 255.0
        with self._lock, torch.inference_mode():
            out = self._model(torch.from_numpy(batch).to(self._device))
        return [float(value) for value in next(iter(out.values())).reshape(len(boxes), -1)[:, 0].cpu()]
