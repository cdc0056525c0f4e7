"""pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (artefact ``inception_fid``) as a :class:`FidInceptionV3`.

The file is a bare state dict named as :mod:`anonymize.models.inception` names its modules (BatchNorms
with running statistics and, in files saved after PyTorch 0.4.1, ``num_batches_tracked``); it is
loaded strictly: every key and shape must match.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from anonymize.models.inception import FidInceptionV3


def _with_batchnorm_counters(state: Mapping[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Files saved before PyTorch 0.4.1 lack BatchNorm's step counter; it plays no part in evaluation."""
    filled = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = torch.zeros_like(value)
    return filled


def load_fid_inception(path: Path | str, device: torch.device | str = "cpu") -> FidInceptionV3:
    """Build the network from the pytorch-fid state dict at ``path`` (strictly: every key and shape must match)."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = FidInceptionV3()
    load_state_dict_strict(model, _with_batchnorm_counters(state, model), str(path))
    return model.to(device)
