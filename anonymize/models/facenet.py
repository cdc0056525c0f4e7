"""FaceNet (InceptionResnetV1) embeddings, the recogniser FALCO and CFA-Net report re-identification with.

The network is facenet-pytorch's ``InceptionResnetV1`` class; its weights are the state dicts
timesler/facenet-pytorch publishes (Sandberg's models trained on CASIA-WebFace and on VGGFace2),
read by :mod:`anonymize.models.legacy.facenet`, never through facenet-pytorch's own download.

Faces are cut as facenet-pytorch's MTCNN cuts them (the ``facenet_*`` contracts of
:mod:`anonymize.models.registry`): the detector's box, square-free, resized to 160 x 160, standardised
with (x - 127.5) / 128. Embeddings are [N, 512] and L2-normalised; the distance is Euclidean.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from anonymize.models.legacy.facenet import load_facenet
from anonymize.models.registry import artefact_of, contract_of

FACENET_ARTEFACTS = {"casia-webface": artefact_of("facenet_casia_webface"), "vggface2": artefact_of("facenet_vggface2")}
_CONTRACT = contract_of("facenet_vggface2")  # both trainings share the cut and the standardisation
FACENET_INPUT = _CONTRACT.size
# Verification operating point: L2 distance between unit embeddings under which two faces are one person.
# 1.1 is the usual FaceNet threshold on LFW-style crops (Sandberg's validate_on_lfw lands near it);
# the audit also reports TPR at fixed FARs, which needs no such constant.
FACENET_SAME_PERSON_DISTANCE = 1.1
MAX_BATCH = 32

Boxes = Sequence[Sequence[float]]


def face_crops(rgb: np.ndarray, boxes: Boxes, size: int = FACENET_INPUT) -> np.ndarray:
    """N x size x size x 3 uint8 crops of the boxes (clipped to the image), as facenet-pytorch's MTCNN cuts them."""
    height, width = rgb.shape[:2]
    crops = []
    for x0, y0, x1, y1 in boxes:
        left, top = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
        right, bottom = int(min(width, np.ceil(x1))), int(min(height, np.ceil(y1)))
        crop = rgb[top:max(bottom, top + 1), left:max(right, left + 1)]
        crops.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


class FaceNetRecogniser:
    """512-d unit embeddings of faces given by their boxes, all the faces of a call in shared batches."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.device = device
        self.network = _network(Path(path), device)
        self.mean, self.std = _CONTRACT.mean[0], _CONTRACT.std[0]  # the same for every channel

    def descriptors(self, rgb: np.ndarray, boxes: Boxes) -> np.ndarray:
        return self.descriptors_of_crops(face_crops(rgb, boxes))

    def descriptors_of_pair(self, original: np.ndarray, output: np.ndarray, boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
        """The same boxes in two images (an original and its anonymized copy), in one batch."""
        both = self.descriptors_of_crops(np.concatenate([face_crops(original, boxes), face_crops(output, boxes)]))
        return both[:len(boxes)], both[len(boxes):]

    def descriptors_of_crops(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, 512), np.float32)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(crops), MAX_BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(crops[start:start + MAX_BATCH])).to(self.device)
                batch = (batch.permute(0, 3, 1, 2).float() - self.mean) / self.std
                outputs.append(self.network(batch).cpu())
        return torch.cat(outputs).numpy().astype(np.float32)


@lru_cache(maxsize=2)
def _network(path: Path, device: str) -> torch.nn.Module:
    return load_facenet(path).to(device)
