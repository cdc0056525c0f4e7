"""Identity embeddings of aligned crops, by which k-Same groups faces and tells people apart.

``dlib`` (default): dlib's ResNet recogniser, the same one the audit judges with; the chip is cut
from the crop with dlib's own 5-point landmarks. ``arcface``: FALCO's ArcFace (needs its weights),
L2-normalised so that Euclidean order is cosine order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from anonymize.metrics.identity import SAME_PERSON_DISTANCE
from anonymize.models.images import CanonicalImages
from anonymize.weights import WeightsStore

EMBEDDERS = ("dlib", "arcface")
# Two faces closer than this are one person when --identity-from cluster: dlib's own threshold
# (Euclidean), and for ArcFace a cosine similarity of 0.4 (distance 0.6), a common verification threshold.
SAME_PERSON = {"dlib": SAME_PERSON_DISTANCE, "arcface": 0.6}
CROP_INSET = 0.1  # the face box inside an aligned crop (as DlibRecogniser.descriptor_of_aligned)


class Embedder:
    """N x D identity embeddings of aligned uint8 crops, and how to compare them."""

    def __init__(self, name: str, weights: WeightsStore, device: str) -> None:
        self.name = name
        self.metric: Literal["euclidean", "cosine"] = "euclidean" if name == "dlib" else "cosine"
        self.same_person_distance = SAME_PERSON[name]
        self.device = torch.device(device)
        if name == "dlib":
            from anonymize.metrics.identity import DlibRecogniser

            self._dlib = DlibRecogniser(weights, device=self.device)
        else:
            from anonymize.models.registry import load_arcface_model

            self._arcface = load_arcface_model(weights, self.device)

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, 128 if self.name == "dlib" else 512), np.float32)
        if self.name == "dlib":
            images = []
            for crop in crops:
                height, width = crop.shape[:2]
                box = (width * CROP_INSET, height * CROP_INSET, width * (1 - CROP_INSET), height * (1 - CROP_INSET))
                images.append((crop, [box]))
            return np.concatenate(self._dlib.descriptors_of_images(images)).astype(np.float32)
        with torch.no_grad():
            features = self._arcface(CanonicalImages.from_uint8(np.stack(crops), self.device)).float()
        return torch.nn.functional.normalize(features, dim=1).cpu().numpy()
