"""The IR / IR-SE trunk's layout read off a checkpoint (ArcFace's ``model_ir_se50.pth``, e4e's ``encoder.*``).

The checkpoints name their tensors as :mod:`anonymize.models.irse` names its modules; what this module
adds is the architecture, read off the tensors instead of being hard-coded, so the same code loads the
real 50-layer network and the tiny test networks: unit count from the ``body.N`` indices, widths from
the convolution shapes, SE from the presence of ``fc1``, and stage boundaries from unit 0 plus every
unit that owns a shortcut convolution (every stage opens with a stride-2 unit). That last rule assumes
each stage after the first widens the channels, which holds for every published IR layout
(64 -> 128 -> 256 -> 512).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from anonymize.models.checkpoint import CheckpointError
from anonymize.models.irse import SE_REDUCTION, UnitSpec

_UNIT_KEY = re.compile(r"^body\.(\d+)\.")


def infer_block_specs(state: Mapping[str, torch.Tensor], source: str) -> list[UnitSpec]:
    """Read the unit layout of an IR(-SE) trunk from its tensors (keys without any outer prefix)."""
    indices = sorted({int(m.group(1)) for key in state if (m := _UNIT_KEY.match(key))})
    if not indices:
        raise CheckpointError(f"{source}: no residual units (body.N.*) found")
    if indices != list(range(len(indices))):
        raise CheckpointError(f"{source}: residual units are not numbered 0..{len(indices) - 1}: {indices}")
    # IR or IR-SE is a choice for the whole network, so one unit's missing SE tensors are reported
    # as missing rather than silently turning that unit into a plain IR unit.
    squeeze_excite = any(_UNIT_KEY.match(key) and ".res_layer.5." in key for key in state)
    specs = []
    for index in indices:
        prefix = f"body.{index}."
        conv = _tensor(state, prefix + "res_layer.1.weight", source)
        depth, in_channels = int(conv.shape[0]), int(conv.shape[1])
        starts_stage = index == 0 or prefix + "shortcut_layer.0.weight" in state
        specs.append(UnitSpec(in_channels, depth, 2 if starts_stage else 1, _se_width(state, prefix, depth) if squeeze_excite else None))
    return specs


def _se_width(state: Mapping[str, torch.Tensor], unit_prefix: str, depth: int) -> int:
    fc1 = state.get(unit_prefix + "res_layer.5.fc1.weight")
    if fc1 is not None:
        return int(fc1.shape[0])
    fc2 = state.get(unit_prefix + "res_layer.5.fc2.weight")
    return int(fc2.shape[1]) if fc2 is not None else depth // SE_REDUCTION


def stem_width(state: Mapping[str, torch.Tensor], source: str) -> int:
    """The stem convolution's output channels (C0), from ``input_layer.0.weight``."""
    return int(_tensor(state, "input_layer.0.weight", source).shape[0])


def with_batchnorm_counters(module: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the BatchNorm step counters that checkpoints saved before PyTorch 0.4.1 lack.

    The counter only matters for training with ``momentum=None``; these networks run frozen in eval mode.
    """
    completed = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in completed:
            if key.removesuffix("num_batches_tracked") + "running_mean" in completed:
                completed[key] = torch.zeros_like(value)
    return completed


def _tensor(state: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{source}: missing tensor {key}")
    return value
