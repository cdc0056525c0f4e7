"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) between the same face box in two images.

The network is the ``lpips`` package's; :mod:`anonymize.models.legacy.lpips_alex` fills it from the
wheel's linear heads and torchvision's ImageNet AlexNet file (nothing is downloaded). Inputs follow the
``lpips_alex`` contract of :mod:`anonymize.models.registry`: box crops resized to 64 px, RGB in [-1, 1]
([N, 3, 64, 64] each side); the output is [N] distances, lower is more alike (0: identical).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from anonymize.models.legacy.lpips_alex import load_lpips
from anonymize.models.registry import contract_of

LPIPS_INPUT = contract_of("lpips_alex").size  # face crops are compared at this size


class LpipsDistance:
    """LPIPS between the same face box in two images (crops resized to ``LPIPS_INPUT``)."""

    def __init__(self, linear_path: Path, alexnet_path: Path, device: str = "cpu") -> None:
        self.device = device
        self.model = _model(Path(linear_path), Path(alexnet_path), device)

    def _tensor(self, crops: list[np.ndarray]) -> torch.Tensor:
        resized = np.stack([cv2.resize(crop, (LPIPS_INPUT, LPIPS_INPUT), interpolation=cv2.INTER_AREA) for crop in crops])
        return torch.from_numpy(resized).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def distances(self, originals: list[np.ndarray], outputs: list[np.ndarray]) -> list[float]:
        if not originals:
            return []
        with torch.inference_mode():
            values = self.model(self._tensor(originals), self._tensor(outputs))
        return [float(v) for v in values.flatten().cpu()]


@lru_cache(maxsize=2)
def _model(linear_path: Path, alexnet_path: Path, device: str) -> torch.nn.Module:
    return load_lpips(linear_path, alexnet_path).to(device)
