"""RetinaFace MobileNet-0.25: facexlib's network, our own safe loading and a multi-scale search.

Loading: facexlib's ``init_detection_model`` unpickles the file with a plain ``torch.load``, which
runs code when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set. We build facexlib's module empty and
load the verified state dict ourselves through :func:`anonymize.models.checkpoint.load_checkpoint`
(``weights_only=True`` whatever the environment says), so a pickle in place of the file is refused.

Scales: the network was trained on about 300 px images. At full resolution a large photo gives
confident false positives on textures (a painted background in portraits/biden_2.jpg); shrunk to
640 px, faces under about 40 px in a 2000 px photo vanish. So a large photo is searched as a
pyramid: the whole image at 640 px for large faces, then tiles at finer scales, each finer scale
keeping only faces too small for the coarser one to see. A texture that only looks like a face
when it fills a large part of the frame is thus never searched at a size where it fools the network.
"""

from __future__ import annotations

import cv2
import numpy as np

from anonymize.faces.detect import keep_large_enough
from anonymize.faces.types import Face
from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from anonymize.weights import WeightsError, WeightsStore

ARTEFACT = "retinaface_mobilenet0.25"
# The pinned file (biubug6/Face-Detector-1MB-with-landmark, mobilenet0.25_Final.pth) has facexlib's
# parameter names and shapes but was trained with a slightly different network: smaller anchors
# (with facexlib's, every box comes out 1.6 times too large) and plain ReLU where facexlib uses
# LeakyReLU(0.1). Both belong to the weights, so we set them on facexlib's module after loading.
ANCHOR_MIN_SIZES = [[10, 20], [32, 64], [128, 256]]
DETECTION_MAX_SIDE = 640  # the coarsest scale: the whole photo at most this large
TILE = 640  # finer scales are searched in tiles of this many pixels (of the scaled image) ...
TILE_OVERLAP = 160  # ... overlapping by this much, so a face up to this size lies whole in some tile
SCALE_STEP = 2.5  # each finer scale is this much larger than the previous one, up to the original size
SMALL_AT_COARSER = 24.0  # a finer scale keeps faces whose short side is under this at the previous scale
NMS_IOU = 0.4
INSIDE_SHARE = 0.7  # a box this much inside a better-scored one is a part of that face
X_COLUMNS = [0, 2, 5, 7, 9, 11, 13]  # facexlib's rows: x0 y0 x1 y1 score, then (x, y) of 5 landmarks
Y_COLUMNS = [1, 3, 6, 8, 10, 12, 14]


def load_retinaface(weights: WeightsStore, device: str):
    """facexlib's RetinaFace with the verified pinned weights, loaded without unpickling code."""
    import torch
    from facexlib.detection.retinaface import RetinaFace

    path = weights.require(ARTEFACT)
    try:
        state = load_checkpoint(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
        state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
        model = RetinaFace(network_name="mobile0.25", half=False, device="cpu")
        load_state_dict_strict(model, state, str(path))
    except CheckpointError as exc:
        raise WeightsError(f"{ARTEFACT}: {exc}") from None
    model.cfg = {**model.cfg, "min_sizes": ANCHOR_MIN_SIZES}
    for module in model.modules():
        if isinstance(module, torch.nn.LeakyReLU):
            module.negative_slope = 0.0
    model.device = torch.device(device)
    model.mean_tensor = model.mean_tensor.to(device)
    return model.to(device).eval()


def pyramid_scales(height: int, width: int) -> list[float]:
    """Coarse to fine: the 640 px view, then steps of SCALE_STEP up to the original size."""
    scales = [min(1.0, DETECTION_MAX_SIDE / max(height, width))]
    while scales[-1] < 1.0:
        scales.append(min(1.0, scales[-1] * SCALE_STEP))
    return scales


def tiles(height: int, width: int, tile: int = TILE, overlap: int = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) windows covering the image, overlapping by ``overlap``."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = tile - overlap
        points = list(range(0, length - tile, step))
        return points + [length - tile]

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def nms(rows: np.ndarray, threshold: float = NMS_IOU, inside: float = INSIDE_SHARE) -> np.ndarray:
    """Rows (x0, y0, x1, y1, score, ...) kept by greedy non-maximum suppression, best first.

    A box is also dropped when most of it lies inside a better one: the network sometimes scores
    half a large face (or its chin) as a face of its own.
    """
    if len(rows) == 0:
        return rows
    rows = rows[np.argsort(-rows[:, 4])]
    x0, y0, x1, y1 = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    keep, alive = [], np.ones(len(rows), bool)
    for index in range(len(rows)):
        if not alive[index]:
            continue
        keep.append(index)
        inter_w = np.maximum(0, np.minimum(x1[index], x1) - np.maximum(x0[index], x0))
        inter_h = np.maximum(0, np.minimum(y1[index], y1) - np.maximum(y0[index], y0))
        inter = inter_w * inter_h
        overlap = inter / np.maximum(areas[index] + areas - inter, 1e-9)
        alive &= (overlap <= threshold) & (inter / np.maximum(areas, 1e-9) <= inside)
    return rows[keep]


class RetinaFaceDetector:
    name = "retinaface"

    def __init__(self, weights: WeightsStore, threshold: float, min_face: int, device: str) -> None:
        import torch

        self.threshold = threshold
        self.min_face = min_face
        self._weights = weights
        self._torch = torch
        self._model = load_retinaface(weights, device)

    def weights_used(self) -> dict[str, str]:
        return {ARTEFACT: self._weights.sha256(ARTEFACT) or ""}

    def _run(self, bgr: np.ndarray) -> np.ndarray:
        """Rows (box 4, score, landmarks 10) in ``bgr``'s pixels."""
        with self._torch.inference_mode():
            found = self._model.detect_faces(bgr, conf_threshold=self.threshold, nms_threshold=NMS_IOU, use_origin_size=True)
        return np.asarray(found, dtype=np.float64).reshape(-1, 15)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        found = []
        scales = pyramid_scales(height, width)
        for level, scale in enumerate(scales):
            view = bgr if scale == 1.0 else cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            windows = [(0, 0, view.shape[1], view.shape[0])] if level == 0 else tiles(*view.shape[:2])
            for x0, y0, x1, y1 in windows:
                rows = self._run(np.ascontiguousarray(view[y0:y1, x0:x1]))
                rows[:, X_COLUMNS] = (rows[:, X_COLUMNS] + x0) / scale
                rows[:, Y_COLUMNS] = (rows[:, Y_COLUMNS] + y0) / scale
                if level > 0:
                    # only faces too small for the coarser view: the rest were searched there already
                    short_side = np.minimum(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]) * scales[level - 1]
                    rows = rows[short_side < SMALL_AT_COARSER]
                found.append(rows)
        rows = nms(np.concatenate(found)) if found else np.zeros((0, 15))
        faces = [Face(tuple(float(v) for v in row[:4]), float(row[4]), row[5:15].reshape(5, 2).astype(np.float32)) for row in rows]
        return keep_large_enough(faces, self.min_face)
