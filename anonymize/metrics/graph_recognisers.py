"""Identity features from pretrained recognisers that no method here was tuned against (faceres, mobileface).

They are the audit's independent judges: dlib's ResNet sits inside the loss of the adversarial step and
of ``parts -p backend=warp``, so a release those produce can fool dlib while every other recogniser
still matches it. Each face is located afresh in each image (68 landmarks fitted in its box) and cut
as its recogniser's authors cut it (:mod:`anonymize.models.human`). Features are unit vectors: two
faces are one person when their cosine is above the threshold, i.e. their L2 distance below
``sqrt(2 - 2 cos)``. The threshold is the one ``anonymize calibrate`` recorded in the weights folder
when there is one, else the one measured on celeba-ids at FAR 1e-3 (see the config).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from anonymize.faces.crops import five_points, similarity_matrix, square_matrix, warp_crop
from anonymize.faces.landmarks import BoxLandmarks
from anonymize.models.human import RECOGNISERS, RecogniserConfig, load_human_model
from anonymize.models.registry import ARCFACE_TEMPLATE
from anonymize.weights import WeightsStore

Boxes = Sequence[Sequence[float]]
MAX_BATCH = 32  # faces per network call
CALIBRATION_FOLDER = "calibration"  # <weights dir>/calibration/<recogniser>.json, written by `anonymize calibrate`


def calibration_record_path(store: WeightsStore, name: str) -> Path:
    return store.root / CALIBRATION_FOLDER / f"{name}.json"


def read_calibration(store: WeightsStore, name: str) -> dict | None:
    """The user's calibration record of ``name`` (see :mod:`anonymize.audit.calibrate`), or None."""
    path = calibration_record_path(store, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        float(record["cosine"]["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


class GraphRecogniser:
    """Unit identity features of the faces in given boxes, and the same-person threshold to read them by."""

    def __init__(self, store: WeightsStore, name: str, device: str | torch.device = "cpu") -> None:
        if name not in RECOGNISERS:
            raise ValueError(f"unknown recogniser {name!r}: choose one of {', '.join(RECOGNISERS)}")
        self.config: RecogniserConfig = RECOGNISERS[name]
        self.name = name
        self.device = torch.device(device)
        self.network = load_human_model(store, name, (self.config.features,), self.device)
        self._landmarks = BoxLandmarks(store.require("dlib_shape_predictor_68"))
        record = read_calibration(store, name)
        if record is not None:
            self.cosine_threshold = float(record["cosine"]["value"])
            self.threshold_source = (f"calibrated by the user at FAR {record.get('far_wanted')} on {record.get('faces_dir', 'their faces')} "
                                     f"({calibration_record_path(store, name)})")
        else:
            self.cosine_threshold = self.config.cosine_threshold
            self.threshold_source = f"FAR 1e-3 on celeba-ids, measured by the project (TAR {self.config.measured_tar:.2f})"

    @property
    def instrument(self) -> str:
        return self.config.instrument

    @property
    def distance_threshold(self) -> float:
        """L2 distance of unit features below which two faces are one person."""
        return math.sqrt(max(2.0 - 2.0 * self.cosine_threshold, 0.0))

    def crop(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The face as this recogniser's authors cut it, uint8 RGB ``size`` x ``size``."""
        size = self.config.input_size
        if self.config.crop == "arcface":
            matrix = similarity_matrix(five_points(landmarks), ARCFACE_TEMPLATE * (size / 112.0))
        else:
            matrix = square_matrix(landmarks, self.config.crop_scale, size)
        return warp_crop(rgb, matrix, size)

    def crops(self, rgb: np.ndarray, boxes: Boxes) -> list[np.ndarray]:
        return [self.crop(rgb, landmarks) for landmarks in self._landmarks.fit(rgb, boxes)]

    def network_input(self, crops: torch.Tensor) -> torch.Tensor:
        """N x S x S x 3 RGB crops in 0..255 (float, any device) -> the graph's input: channel order, means."""
        x = crops.flip(-1) if self.config.channel_order == "bgr" else crops
        return x - torch.tensor(self.config.means, dtype=x.dtype, device=x.device)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """Unit features of N x S x S x 3 RGB crops in 0..255; differentiable w.r.t. the crops."""
        raw = self.network(self.network_input(crops))[self.config.features]
        return torch.nn.functional.normalize(raw.reshape(raw.shape[0], -1), dim=1)

    def descriptors_of_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, 0), np.float32)
        out = []
        with torch.no_grad():
            for start in range(0, len(crops), MAX_BATCH):
                batch = torch.from_numpy(np.stack(crops[start:start + MAX_BATCH]).astype(np.float32)).to(self.device)
                out.append(self.features(batch).cpu())
        return torch.cat(out).numpy()

    def descriptors(self, rgb: np.ndarray, boxes: Boxes) -> np.ndarray:
        return self.descriptors_of_images([(rgb, boxes)])[0]

    def descriptors_of_images(self, images: Sequence[tuple[np.ndarray, Boxes]]) -> list[np.ndarray]:
        """Features of the faces of several images, one N_i x D array each, computed in shared batches."""
        crops = [self.crops(rgb, boxes) for rgb, boxes in images]
        described = self.descriptors_of_crops([crop for image_crops in crops for crop in image_crops])
        out, start = [], 0
        for image_crops in crops:
            out.append(described[start:start + len(image_crops)])
            start += len(image_crops)
        return out

    def descriptors_of_pair(self, original: np.ndarray, output: np.ndarray, boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
        before, after = self.descriptors_of_images([(original, boxes), (output, boxes)])
        return before, after
