"""ArcFace's ``model_ir_se50.pth`` (InsightFace IR-SE50, TreB1eN's port) as an :class:`ArcFace`.

The file is a bare state dict: the trunk (``input_layer.*``, ``body.0.*`` .. ``body.23.*``, layout read
by :mod:`anonymize.models.legacy.irse`) and the head ``output_layer``, a Sequential whose parameterised
members are

* ``output_layer.0``: BatchNorm2d over the last stage's 512 channels,
* ``output_layer.3``: Linear from the flattened 512 x 7 x 7 map to the 512-d embedding,
* ``output_layer.4``: BatchNorm1d(512) (with ``weight``/``bias`` when affine, as in this file),

with a Dropout at index 1 and a Flatten at index 2. Widths, unit count and the final map side (7, so
the input side 7 * 2^stages = 112) are read from the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from anonymize.models.arcface import ArcFace
from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from anonymize.models.legacy.irse import infer_block_specs, with_batchnorm_counters


def arcface_from_state_dict(state: Mapping[str, torch.Tensor], source: str) -> ArcFace:
    """Build an ArcFace shaped like ``state`` and load it strictly."""
    specs = infer_block_specs(state, source)
    linear = state.get("output_layer.3.weight")
    if not isinstance(linear, torch.Tensor) or linear.ndim != 2:
        raise CheckpointError(f"{source}: missing the embedding layer output_layer.3.weight")
    width = specs[-1].depth
    final_side = math.isqrt(int(linear.shape[1]) // width)
    if final_side * final_side * width != linear.shape[1]:
        raise CheckpointError(f"{source}: output_layer.3.weight takes {linear.shape[1]} inputs, not {width} x s x s")
    model = ArcFace(specs, final_side, int(linear.shape[0]), affine_output_norm="output_layer.4.weight" in state)
    load_state_dict_strict(model, with_batchnorm_counters(model, state), source)
    model.requires_grad_(False)
    return model


def load_arcface(path: Path) -> ArcFace:
    """Load ``model_ir_se50.pth`` (a bare state dict) as a frozen, eval-mode ArcFace."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a bare state dict of tensors (InsightFace IR-SE50)")
    return arcface_from_state_dict(state, str(path))
