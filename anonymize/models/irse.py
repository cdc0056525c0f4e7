"""The IR / IR-SE residual trunk shared by ArcFace (InsightFace IR-SE50) and the e4e encoder.

Both published checkpoints (``model_ir_se50.pth`` and the ``encoder.`` half of ``e4e_ffhq_encode.pt``)
store the same trunk under the same names, so one module reads both:

``input_layer.0.weight``
    3x3 stem convolution, 3 -> C0 channels, stride 1, no bias.
``input_layer.1.*``
    BatchNorm2d(C0) (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``).
``input_layer.2.weight``
    PReLU with one slope per channel, shape [C0].
``body.N.*``
    residual unit N, numbered across all stages. Inside a unit (``in`` -> ``depth`` channels):
    ``res_layer.0`` BatchNorm2d(in); ``res_layer.1`` 3x3 conv in -> depth, stride 1;
    ``res_layer.2`` PReLU(depth); ``res_layer.3`` 3x3 conv depth -> depth carrying the unit's stride;
    ``res_layer.4`` BatchNorm2d(depth); ``res_layer.5.fc1`` / ``res_layer.5.fc2`` the squeeze-excitation
    1x1 convolutions (depth -> depth/16 -> depth, no bias; absent in plain IR units).
    ``shortcut_layer.0`` (1x1 conv, stride) and ``shortcut_layer.1`` (BatchNorm2d) exist only when the
    unit changes width; otherwise the shortcut is a parameter-free strided subsampling.

Every stage opens with a stride-2 unit. The architecture is read off the tensors instead of being
hard-coded, so the same code loads the real 50-layer network and the tiny test networks: unit count
from the ``body.N`` indices, widths from the convolution shapes, SE from the presence of ``fc1``, and
stage boundaries from unit 0 plus every unit that owns a shortcut convolution. That last rule assumes
each stage after the first widens the channels, which holds for every published IR layout
(64 -> 128 -> 256 -> 512).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.checkpoint import CheckpointError

SE_REDUCTION = 16
STAGE_WIDTHS = (64, 128, 256, 512)
UNITS_PER_STAGE = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class UnitSpec:
    """One residual unit: channels in, channels out (``depth``), stride, squeeze-excitation width."""

    in_channels: int
    depth: int
    stride: int
    se_channels: int | None  # None for a plain IR unit


def block_specs(num_layers: int, se: bool = True) -> list[UnitSpec]:
    """The published IR(-SE) 50/100/152 layouts, unit by unit."""
    if num_layers not in UNITS_PER_STAGE:
        raise ValueError(f"IR backbones come in 50, 100 or 152 layers, not {num_layers}")
    specs: list[UnitSpec] = []
    in_channels = STAGE_WIDTHS[0]
    for depth, units in zip(STAGE_WIDTHS, UNITS_PER_STAGE[num_layers]):
        for unit in range(units):
            specs.append(UnitSpec(in_channels, depth, 2 if unit == 0 else 1, depth // SE_REDUCTION if se else None))
            in_channels = depth
    return specs


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (``fc1``/``fc2`` as in the checkpoints)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck ("improved residual") unit, optionally with squeeze-excitation."""

    def __init__(self, spec: UnitSpec) -> None:
        super().__init__()
        self.stride = spec.stride
        layers: list[nn.Module] = [
            nn.BatchNorm2d(spec.in_channels),
            nn.Conv2d(spec.in_channels, spec.depth, 3, 1, 1, bias=False),
            nn.PReLU(spec.depth),
            nn.Conv2d(spec.depth, spec.depth, 3, spec.stride, 1, bias=False),
            nn.BatchNorm2d(spec.depth),
        ]
        if spec.se_channels is not None:
            layers.append(SqueezeExcite(spec.depth, spec.se_channels))
        self.res_layer = nn.Sequential(*layers)
        self.shortcut_layer = (
            nn.Sequential(nn.Conv2d(spec.in_channels, spec.depth, 1, spec.stride, bias=False), nn.BatchNorm2d(spec.depth))
            if spec.in_channels != spec.depth
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same-width shortcut: a 1x1 max-pool with stride, i.e. plain subsampling.
        shortcut = self.shortcut_layer(x) if self.shortcut_layer is not None else x[:, :, :: self.stride, :: self.stride]
        return self.res_layer(x) + shortcut


class IRTrunk(nn.Module):
    """Stem plus residual body; subclasses add their heads next to ``input_layer`` and ``body``."""

    def __init__(self, specs: list[UnitSpec]) -> None:
        super().__init__()
        if not specs:
            raise ValueError("an IR trunk needs at least one residual unit")
        stem = specs[0].in_channels
        self.input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem))
        self.body = nn.Sequential(*(ResidualUnit(spec) for spec in specs))
        starts = [0] + [i for i, spec in enumerate(specs) if i > 0 and spec.stride != 1]
        self.stage_ends = [start - 1 for start in starts[1:]] + [len(specs) - 1]
        self.stage_widths = [specs[end].depth for end in self.stage_ends]

    @property
    def num_stages(self) -> int:
        return len(self.stage_ends)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, finest first (each stage halves the resolution)."""
        x = self.input_layer(x)
        outputs = []
        ends = set(self.stage_ends)
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in ends:
                outputs.append(x)
        return outputs


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
