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

Every stage opens with a stride-2 unit. :mod:`anonymize.models.legacy.irse` reads the unit layout off
a checkpoint's tensors, so the real 50-layer network and the tiny test networks load through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
