"""LPIPS v0.1 (AlexNet) weights: the lpips wheel's linear heads and torchvision's AlexNet features.

The linear heads ship in the lpips wheel (artefact ``lpips_alex_linear``); the AlexNet backbone is
torchvision's ImageNet file (artefact ``torchvision_alexnet``), which the user fetches. Both are
read with ``weights_only``; lpips never downloads anything (``pnet_rand=True`` builds the backbone
empty, then torchvision's ``features.<i>`` weights fill lpips's ``net.slice<k>.<i>``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict

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
