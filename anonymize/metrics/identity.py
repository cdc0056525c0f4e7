"""Identity descriptors from dlib's ResNet face recogniser (face_recognition_models).

It is independent of every network a method optimises against (ArcFace, FaRL), so it is a fair
judge of whether an anonymized face still looks like its original. dlib's own threshold: two
descriptors closer than 0.6 are the same person.

Two backends compute the same descriptors (within 1e-4 per component, see tests/test_dlib_resnet.py):
``torch`` (default) runs the network read from dlib's file by :mod:`anonymize.models.dlib_resnet`,
all the faces of a call in one batch, on CPU or CUDA; ``dlib`` runs dlib's Python binding. Both cut
the face chips with dlib (5-point landmarks re-fitted in each box, ``get_face_chips(…, 150, 0.25)``),
so callers see the same numbers whichever runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np
import torch

from anonymize.faces.chips import CHIP_PADDING, CHIP_SIZE
from anonymize.faces.landmarks import box_rectangle, shape_predictor
from anonymize.models.dlib_resnet import DlibFaceResNet
from anonymize.models.legacy.dlib_resnet import load_dlib_face_resnet
from anonymize.weights import WeightsStore

SAME_PERSON_DISTANCE = 0.6
BACKENDS = ("torch", "dlib")
MAX_BATCH = 64  # faces per network call: bounds the memory of the torch backend

Boxes = Sequence[Sequence[float]]


class DlibRecogniser:
    """128-d descriptors of faces given by their boxes (landmarks re-fitted with dlib's 5-point model)."""

    def __init__(self, weights: WeightsStore, backend: str = "torch", device: str | torch.device = "cpu") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown recogniser backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._predictor = shape_predictor(weights.require("dlib_shape_predictor_5"))
        encoder_path = weights.require("dlib_face_recognition_resnet")
        if backend == "torch":
            self._network: DlibFaceResNet | None = dlib_face_network(encoder_path, str(torch.device(device)))
            self._encoder = None
        else:
            self._network = None
            self._encoder = _encoder(encoder_path)

    @property
    def network(self) -> DlibFaceResNet:
        """The PyTorch network (torch backend): differentiable, for attacks through the chips."""
        if self._network is None:
            raise ValueError("the dlib backend has no PyTorch network")
        return self._network

    def landmarks(self, rgb: np.ndarray, boxes: Boxes) -> list[np.ndarray]:
        """dlib's 5 landmarks (5 x 2, x and y) fitted in each x0, y0, x1, y1 box: where :meth:`chips` cuts."""
        return [np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float64)
                for shape in self._shapes(np.ascontiguousarray(rgb), boxes)]

    def _shapes(self, image: np.ndarray, boxes: Boxes) -> dlib.full_object_detections:
        shapes = dlib.full_object_detections()
        for box in boxes:
            shapes.append(self._predictor(image, box_rectangle(box)))
        return shapes

    def chips(self, rgb: np.ndarray, boxes: Boxes) -> list[np.ndarray]:
        """dlib's 150 x 150 uint8 RGB chips of the faces in the given x0, y0, x1, y1 boxes."""
        if len(boxes) == 0:
            return []
        image = np.ascontiguousarray(rgb)
        return list(dlib.get_face_chips(image, self._shapes(image, boxes), size=CHIP_SIZE, padding=CHIP_PADDING))

    def descriptors(self, rgb: np.ndarray, boxes: Boxes) -> np.ndarray:
        """N x 128 descriptors for the given x0, y0, x1, y1 boxes of one image."""
        return self.descriptors_of_images([(rgb, boxes)])[0]

    def descriptors_of_images(self, images: Sequence[tuple[np.ndarray, Boxes]]) -> list[np.ndarray]:
        """Descriptors of the faces of several images, one N_i x 128 array each, computed in shared batches."""
        chips = [self.chips(rgb, boxes) for rgb, boxes in images]
        flat = [chip for image_chips in chips for chip in image_chips]
        described = self.descriptors_of_chips(flat)
        out, start = [], 0
        for image_chips in chips:
            out.append(described[start:start + len(image_chips)])
            start += len(image_chips)
        return out

    def descriptors_of_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """N x 128 descriptors of 150 x 150 uint8 RGB chips as :meth:`chips` cuts them."""
        if len(chips) == 0:
            return np.zeros((0, 128), np.float32)
        if self._encoder is not None:
            return np.asarray(self._encoder.compute_face_descriptor(list(chips)), dtype=np.float32)
        assert self._network is not None
        device = self._network.channel_means.device
        outputs = []
        with torch.no_grad():
            for start in range(0, len(chips), MAX_BATCH):
                batch = torch.from_numpy(np.stack(chips[start:start + MAX_BATCH])).to(device)
                outputs.append(self._network(batch.permute(0, 3, 1, 2).float()).cpu())
        return torch.cat(outputs).numpy()

    def descriptor_of_aligned(self, rgb: np.ndarray) -> np.ndarray:
        """Descriptor of an image that is itself one face crop (the box is the whole image, slightly inset)."""
        height, width = rgb.shape[:2]
        inset_x, inset_y = width * 0.1, height * 0.1
        return self.descriptors(rgb, [(inset_x, inset_y, width - inset_x, height - inset_y)])[0]


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance along the last axis (dlib's metric)."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)


@lru_cache(maxsize=2)
def _encoder(path: Path) -> dlib.face_recognition_model_v1:
    return dlib.face_recognition_model_v1(str(path))


@lru_cache(maxsize=4)
def dlib_face_network(path: Path, device: str) -> DlibFaceResNet:
    """dlib's recogniser network read from ``path`` on ``device``, loaded once per process (a model cache)."""
    return load_dlib_face_resnet(path).to(device)
