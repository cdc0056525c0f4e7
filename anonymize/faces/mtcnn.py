"""MTCNN (Zhang et al. 2016) through facenet-pytorch 2.5.3, whose wheel ships the three networks' weights.

facenet-pytorch's own loader unpickles ``pnet.pt``/``rnet.pt``/``onet.pt`` with a plain ``torch.load``;
we build its P-, R- and O-Net empty and load each state dict ourselves with ``weights_only=True``,
after the file's sha256 matched ``weights.lock`` (``source = "package:facenet_pytorch"``). The
cascade itself (image pyramid, three stages, box regression) is facenet-pytorch's ``detect_face``.
Landmarks are MTCNN's 5 points in RetinaFace's order (eyes, nose tip, mouth corners).
"""

from __future__ import annotations

import numpy as np

from anonymize.faces.types import Face, keep_large_enough
from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from anonymize.weights import WeightsError, WeightsStore

ARTEFACTS = {"pnet": "mtcnn_pnet", "rnet": "mtcnn_rnet", "onet": "mtcnn_onet"}
MIN_FACE_SIZE = 20  # pixels: the smallest face the pyramid looks for (facenet-pytorch's default)
STAGE_THRESHOLDS = (0.6, 0.6)  # P-Net and R-Net (facenet-pytorch: 0.6, 0.7; R-Net at 0.6 keeps a 37 px face of the group photos); O-Net: the score threshold
PYRAMID_FACTOR = 0.709


def load_mtcnn_networks(weights: WeightsStore, device: str) -> dict[str, object]:
    """P-, R- and O-Net with the verified packaged weights, loaded without unpickling code."""
    try:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except ImportError as exc:
        raise WeightsError(f"MTCNN needs the Python package facenet-pytorch 2.5.3 ({exc}); "
                           "install it with `pip install facenet-pytorch==2.5.3` (it keeps the installed torch)") from None
    networks = {}
    for key, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        path = weights.require(ARTEFACTS[key])
        network = cls(pretrained=False)
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
            load_state_dict_strict(network, state, str(path))
        except CheckpointError as exc:
            raise WeightsError(f"{ARTEFACTS[key]}: {exc}") from None
        networks[key] = network.to(device).eval()
    return networks


class MtcnnDetector:
    name = "mtcnn"

    def __init__(self, weights: WeightsStore, threshold: float, min_face: int, device: str) -> None:
        import torch

        self.threshold = threshold
        self.min_face = min_face
        self.device = device
        self._weights = weights
        self._torch = torch
        self._networks = load_mtcnn_networks(weights, device)

    def weights_used(self) -> dict[str, str]:
        return {name: self._weights.sha256(name) or "" for name in ARTEFACTS.values()}

    def detect(self, rgb: np.ndarray) -> list[Face]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        if min(rgb.shape[:2]) < 12:
            return []
        with self._torch.inference_mode():
            boxes, points = detect_face(
                np.ascontiguousarray(rgb), max(MIN_FACE_SIZE, 12), self._networks["pnet"], self._networks["rnet"],
                self._networks["onet"], [*STAGE_THRESHOLDS, self.threshold], PYRAMID_FACTOR, self.device)
        boxes = np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)
        points = np.asarray(points[0], dtype=np.float64).reshape(-1, 5, 2)
        faces = [Face(tuple(float(v) for v in box[:4]), float(box[4]), landmarks.astype(np.float32))
                 for box, landmarks in zip(boxes, points) if box[4] >= self.threshold]
        faces.sort(key=lambda face: -face.score)
        return keep_large_enough(faces, self.min_face)
