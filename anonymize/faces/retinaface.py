"""RetinaFace MobileNet-0.25: the network (:mod:`anonymize.models.retinaface`, facexlib's layout), safe
loading and a multi-scale search.

Loading: facexlib's ``init_detection_model`` unpickles the file with a plain ``torch.load``, which
runs code when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set. We build the module empty and load the
verified state dict ourselves through :func:`anonymize.models.checkpoint.load_checkpoint`
(``weights_only=True`` whatever the environment says), so a pickle in place of the file is refused.

Scales: the network was trained on about 300 px images. At full resolution a large photo gives
confident false positives on textures (a painted background in portraits/biden_2.jpg); shrunk to
640 px, faces under about 40 px in a 2000 px photo vanish. So a large photo is searched as a
pyramid: the whole image at 640 px for large faces, then finer scales in even steps of at most
SCALE_STEP up to the original size, each finer scale keeping only faces too small for the coarser
one to see. A texture that only looks like a face when it fills a large part of the frame is thus
never searched at a size where it fools the network. A finer scale is searched whole when it fits
in TILE x TILE pixels (the network is convolutional: one call equals overlapping tiles, without
their overlap), else in the fewest overlapping tiles of at most that size, which bounds memory.

Speed (CPU): the network runs with its batch norms folded into the convolutions and in channels-last
memory order (1.4 to 2 times faster than facexlib's module on two cores, the same outputs within 2e-5), and
its outputs are decoded here with anchors cached per input size, only for the anchors above the
score threshold (facexlib builds every anchor in Python loops on every call).
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import cv2
import numpy as np

from anonymize.faces.types import Face, keep_large_enough
from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from anonymize.weights import WeightsError, WeightsStore

ARTEFACT = "retinaface_mobilenet0.25"
# The pinned file (biubug6/Face-Detector-1MB-with-landmark, mobilenet0.25_Final.pth) has facexlib's
# parameter names and shapes but was trained with a slightly different network: smaller anchors
# (with facexlib's, every box comes out 1.6 times too large) and plain ReLU where facexlib uses
# LeakyReLU(0.1). Both belong to the weights: the module has plain ReLUs, the anchors are these.
ANCHOR_MIN_SIZES = [[10, 20], [32, 64], [128, 256]]
ANCHOR_STEPS = [8, 16, 32]  # the strides of the network's three outputs
VARIANCES = (0.1, 0.2)  # the box encoding's scales (centre, log size), as in training
MEAN_RGB = (123.0, 117.0, 104.0)  # the training images' mean, subtracted from the input
DETECTION_MAX_SIDE = 640  # the coarsest scale: the whole photo at most this large
TILE = 2048  # a finer scale larger than this (of the scaled image) is searched in tiles at most this large ...
TILE_OVERLAP = 160  # ... overlapping by at least this much, so a face up to this size lies whole in some tile
SCALE_STEP = 2.5  # each finer scale is at most this much larger than the previous one, up to the original size
SMALL_AT_COARSER = 24.0  # a finer scale keeps faces whose short side is under this at the previous scale
NMS_IOU = 0.4
INSIDE_SHARE = 0.7  # a box this much inside a better-scored one is a part of that face
X_COLUMNS = [0, 2, 5, 7, 9, 11, 13]  # rows: x0 y0 x1 y1 score, then (x, y) of 5 landmarks
Y_COLUMNS = [1, 3, 6, 8, 10, 12, 14]


def load_retinaface(weights: WeightsStore, device: str):
    """RetinaFace with the verified pinned weights, loaded without unpickling code, ready for inference.

    Its forward takes RGB minus MEAN_RGB in channels-last order (see :class:`RetinaFaceDetector`), not
    the BGR that facexlib's own ``detect_faces`` feeds it: call it through the detector."""
    import torch

    from anonymize.models.retinaface import RetinaFaceMobile

    path = weights.require(ARTEFACT)
    try:
        state = load_checkpoint(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
        state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
        model = RetinaFaceMobile()
        load_state_dict_strict(model, state, str(path))
    except CheckpointError as exc:
        raise WeightsError(f"{ARTEFACT}: {exc}") from None
    model.eval()
    _fold_batch_norms(model)
    _read_rgb(model)
    model.device = torch.device(device)
    return model.to(device).to(memory_format=torch.channels_last)


def _fold_batch_norms(model) -> None:
    """Each convolution followed by a batch norm becomes one convolution (eval mode: the same affine map,
    one pass over the activations fewer). The network keeps every such pair inside an ``nn.Sequential``."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, torch.nn.Identity())


def _read_rgb(model) -> None:
    """The first convolution takes RGB: its input channels were trained on BGR, so they are reversed
    (the decoded image then needs no colour conversion)."""
    import torch

    first = next(module for module in model.body.modules() if isinstance(module, torch.nn.Conv2d))
    with torch.no_grad():
        first.weight.copy_(first.weight.flip(1))


def pyramid_scales(height: int, width: int) -> list[float]:
    """Coarse to fine: the 640 px view, then even steps of at most SCALE_STEP up to the original size."""
    coarsest = min(1.0, DETECTION_MAX_SIDE / max(height, width))
    if coarsest == 1.0:
        return [1.0]
    steps = math.ceil(math.log(1.0 / coarsest) / math.log(SCALE_STEP) - 1e-9)
    return [coarsest ** (1.0 - level / steps) for level in range(steps)] + [1.0]


def tiles(height: int, width: int, tile: int = TILE, overlap: int = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) windows covering the image: the fewest of at most ``tile`` pixels a side with
    neighbours overlapping by at least ``overlap``, spread evenly (no thin last tile repeating its neighbour)."""

    def spans(length: int) -> list[tuple[int, int]]:
        if length <= tile:
            return [(0, length)]
        count = math.ceil((length - overlap) / (tile - overlap))
        size = min(tile, math.ceil((length + (count - 1) * overlap) / count))
        return [(start, start + size) for start in np.linspace(0, length - size, count).round().astype(int).tolist()]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


@lru_cache(maxsize=64)
def anchors(height: int, width: int) -> np.ndarray:
    """The network's anchors for an input of ``height`` x ``width``: rows (centre x, centre y, side) in pixels,
    in the order of its outputs (per stride, row-major positions, each position's sizes in turn)."""
    parts = []
    for step, sizes in zip(ANCHOR_STEPS, ANCHOR_MIN_SIZES):
        rows, columns = math.ceil(height / step), math.ceil(width / step)
        centre_y, centre_x = np.meshgrid((np.arange(rows) + 0.5) * step, (np.arange(columns) + 0.5) * step, indexing="ij")
        centres = np.repeat(np.column_stack([centre_x.ravel(), centre_y.ravel()]), len(sizes), axis=0)
        sides = np.tile(np.asarray(sizes, np.float64), rows * columns)
        parts.append(np.column_stack([centres, sides]))
    table = np.concatenate(parts)
    table.setflags(write=False)
    return table


def decode(anchor: np.ndarray, loc: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Rows (box 4, score, landmarks 10) in input pixels from the network's offsets to ``anchor`` (rows of :func:`anchors`)."""
    centre, side = anchor[:, :2], anchor[:, 2:3]
    box_centre = centre + loc[:, :2] * VARIANCES[0] * side
    box_size = side * np.exp(loc[:, 2:] * VARIANCES[1])
    points = centre[:, None, :] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * side[:, :, None]
    return np.column_stack([box_centre - box_size / 2, box_centre + box_size / 2, scores, points.reshape(-1, 10)])


def nms(rows: np.ndarray, threshold: float = NMS_IOU, inside: float | None = INSIDE_SHARE) -> np.ndarray:
    """Rows (x0, y0, x1, y1, score, ...) kept by greedy non-maximum suppression, best first.

    A box is also dropped when more than ``inside`` of it lies inside a better one (None: overlap
    only): the network sometimes scores half a large face (or its chin) as a face of its own.
    """
    if len(rows) == 0:
        return rows
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
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
        alive &= overlap <= threshold
        if inside is not None:
            alive &= inter / np.maximum(areas, 1e-9) <= inside
    return rows[keep]


BACKENDS = ("auto", "opencv", "torch")
# After an input above this many pixels the OpenCV network is read again from its graph (10 ms), which frees
# the layer outputs it kept at that size: with two workers, a blur run over ../shared/data (a 4000 px photo
# searched in 2048 px tiles among them) peaked at 0.80 to 0.95 GB with them kept, 0.72 to 0.77 GB without,
# in the same time.
OPENCV_LARGE_INPUT = 1_500_000


class TorchNetwork:
    """The module on ``device`` (CUDA, or the CPU when asked): pixels in, rows above the threshold out."""

    def __init__(self, weights: WeightsStore, device: str) -> None:
        import torch

        self._torch = torch
        self._model = load_retinaface(weights, device)
        self._mean = torch.tensor(MEAN_RGB, device=self._model.device).view(1, 3, 1, 1)

    def __call__(self, rgb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            # H x W x 3 bytes seen as 1 x 3 x H x W is already channels-last: no copy but the float one
            pixels = torch.from_numpy(np.ascontiguousarray(rgb)).to(self._model.device).permute(2, 0, 1)[None]
            loc, confidence, landmarks = self._model(pixels.float() - self._mean)
            scores = confidence[0, :, 1].cpu().numpy()
            chosen = np.flatnonzero(scores > threshold)
            index = torch.from_numpy(chosen).to(loc.device)
            return chosen, scores[chosen], loc[0, index].cpu().numpy(), landmarks[0, index].cpu().numpy()


def _blob(rgb: np.ndarray) -> np.ndarray:
    """1 x 3 x H x W float32 of ``rgb`` minus MEAN_RGB (what cv2.dnn.blobFromImage gives, in half its time)."""
    blob = np.empty((1, 3, *rgb.shape[:2]), np.float32)
    for channel, plane in enumerate(cv2.split(np.ascontiguousarray(rgb))):
        cv2.subtract(plane, MEAN_RGB[channel], dst=blob[0, channel], dtype=cv2.CV_32F)
    return blob


class OpenCVNetwork:
    """The same network as an ONNX graph run by OpenCV (:mod:`anonymize.models.retinaface_graph`): no torch."""

    def __init__(self, weights: WeightsStore) -> None:
        from anonymize.models.retinaface_graph import OUTPUT_NAMES, graph_bytes, read_graph

        self._read = read_graph
        self._graph = graph_bytes(weights, ARTEFACT, lambda: load_retinaface(weights, "cpu"))
        self._net = read_graph(self._graph)
        self._outputs = list(OUTPUT_NAMES)
        self._lock = threading.Lock()  # one OpenCV network runs one input at a time (the audit's threads share it)

    def __call__(self, rgb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        blob = _blob(rgb)
        with self._lock:
            self._net.setInput(blob)
            loc, confidence, landmarks = self._net.forward(self._outputs)
            if rgb.shape[0] * rgb.shape[1] > OPENCV_LARGE_INPUT:
                self._net = self._read(self._graph)  # OpenCV keeps every layer's output at the largest size it saw: let go
        scores = confidence[0, :, 1]
        chosen = np.flatnonzero(scores > threshold)
        return chosen, scores[chosen], loc[0, chosen], landmarks[0, chosen]


class RetinaFaceDetector:
    """``backend``: ``auto`` runs OpenCV's graph on the CPU and the torch module on CUDA."""

    name = "retinaface"

    def __init__(self, weights: WeightsStore, threshold: float, min_face: int, device: str, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown RetinaFace backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.threshold = threshold
        self.min_face = min_face
        self._weights = weights
        if backend == "auto":
            backend = "opencv" if device == "cpu" else "torch"
        self.backend = backend
        self._network = OpenCVNetwork(weights) if backend == "opencv" else TorchNetwork(weights, device)

    def weights_used(self) -> dict[str, str]:
        return {ARTEFACT: self._weights.sha256(ARTEFACT) or ""}

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        """Rows (box 4, score, landmarks 10) in ``rgb``'s pixels above the threshold, overlaps suppressed."""
        height, width = rgb.shape[:2]
        chosen, scores, loc, landmarks = self._network(rgb, self.threshold)
        if len(chosen) == 0:
            return np.zeros((0, 15))
        rows = decode(anchors(height, width)[chosen], loc.astype(np.float64), scores.astype(np.float64),
                      landmarks.astype(np.float64))
        return nms(rows, inside=None)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        found = []
        scales = pyramid_scales(height, width)
        for level, scale in enumerate(scales):
            view = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            windows = [(0, 0, view.shape[1], view.shape[0])] if level == 0 else tiles(*view.shape[:2])
            for x0, y0, x1, y1 in windows:
                rows = self._run(view[y0:y1, x0:x1])
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
