"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) from the ``lpips`` package, with weights loaded here.

The linear heads ship in the lpips wheel (artefact ``lpips_alex_linear``); the AlexNet backbone is
torchvision's ImageNet file (artefact ``torchvision_alexnet``), which the user fetches. Both are
read with ``weights_only``; lpips never downloads anything (``pnet_rand=True`` builds the backbone
empty, then torchvision's ``features.<i>`` weights fill lpips's ``net.slice<k>.<i>``). Inputs are
RGB in [-1, 1]; lower is more alike (0: identical).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict

LPIPS_INPUT = 64  # face crops are compared at this size (LPIPS's own patch size in its 2AFC data)
# torchvision AlexNet features.<index> -> lpips alexnet slice (lpips.pretrained_networks.alexnet)
_SLICE_OF_LAYER = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def _backbone_state(features: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    state = {}
    for layer, slice_index in _SLICE_OF_LAYER.items():
        for kind in ("weight", "bias"):
            key = f"features.{layer}.{kind}"
            if key not in features:
                raise CheckpointError(f"{source}: no '{key}'; not a torchvision AlexNet state dict")
            state[f"net.slice{slice_index}.{layer}.{kind}"] = features[key]
    return state


def load_lpips(linear_path: Path, alexnet_path: Path) -> torch.nn.Module:
    """lpips.LPIPS(net='alex') with the wheel's linear heads and torchvision's AlexNet features."""
    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated pretrained= argument (with False)
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    linear = load_checkpoint(linear_path)
    backbone = load_checkpoint(alexnet_path)
    if not isinstance(linear, dict) or not isinstance(backbone, dict):
        raise CheckpointError(f"{linear_path} / {alexnet_path}: not state dicts")
    scaling = {key: value for key, value in model.state_dict().items() if key.startswith("scaling_layer.")}  # constants
    aliases = {f"lins.{key[3:]}": value for key, value in linear.items() if key.startswith("lin")}  # lins[i] is lin<i>
    state = {**scaling, **_backbone_state(backbone, str(alexnet_path)), **linear, **aliases}
    load_state_dict_strict(model, state, f"{linear_path} + {alexnet_path}")
    return model.eval()


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
