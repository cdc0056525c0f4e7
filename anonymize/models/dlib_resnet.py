"""dlib's 128-d face recognition ResNet as a plain PyTorch module (the network only).

``dlib_face_recognition_resnet_model_v1.dat`` (face_recognition_models) is a ``loss_metric`` network
saved with dlib's ``serialize``. Through dlib's Python binding it is a black box (one CPU, no
gradients); read by :mod:`anonymize.models.legacy.dlib_resnet`, it becomes a batched, CUDA-capable,
differentiable recogniser whose descriptors equal dlib's. The architecture is ``anet_type`` of
``examples/dnn_face_recognition_ex.cpp``: chips [B, 3, 150, 150] -> 7x7/2 conv (32) -> 3x3/2 max pool
-> residual stages of 32, 64, 128 and 256 channels (each later one opened by a down-sampling block)
-> global average -> fc -> descriptors [B, 128].

Semantics that differ from the obvious PyTorch choice:

* ``con<N,r,c,s,s>`` pads ``r//2`` when the stride is 1 and nothing otherwise (the same for pools);
* ``affine`` is the frozen batch norm ``x * gamma + beta`` per channel; a ``bn_con`` in the file is
  folded into one the way dlib converts it (``gamma / sqrt(running_var + eps)``);
* ``add_prev`` adds two tensors of different shapes by zero-padding both to the larger size at the
  end of every axis (channels, rows, columns): the down-sampling blocks rely on it (e.g. 3x3 + 4x4);
* the input layer maps 8-bit RGB to ``(value - channel mean) / 256`` with the means from the file (the
  ``dlib_resnet`` contract of :mod:`anonymize.models.registry`);
* the loss layer outputs the fc layer as it is (no normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.registry import contract_of

CHIP_SIZE = contract_of("dlib_resnet").size
DESCRIPTOR_SIZE = 128


# ---- the architecture -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One dlib layer: kind is input | con | affine | relu | max_pool | avg_pool | fc | tag | skip | add_prev.

    ``size`` is the filter/window side (0 for avg_pool_everything), ``outputs`` the number of filters
    or fc outputs, ``tag`` the tag number for tag/skip/add_prev.
    """

    kind: str
    outputs: int = 0
    size: int = 0
    stride: int = 1
    tag: int = 0

    @property
    def padding(self) -> int:
        """dlib's default: half the window when the stride is 1, else none."""
        return self.size // 2 if self.stride == 1 else 0


def _block(width: int, stride: int) -> list[LayerSpec]:
    return [LayerSpec("con", width, 3, stride), LayerSpec("affine"), LayerSpec("relu"),
            LayerSpec("con", width, 3, 1), LayerSpec("affine")]


def _residual(width: int) -> list[LayerSpec]:
    return [LayerSpec("tag", tag=1), *_block(width, 1), LayerSpec("add_prev", tag=1), LayerSpec("relu")]


def _residual_down(width: int) -> list[LayerSpec]:
    return [LayerSpec("tag", tag=1), *_block(width, 2), LayerSpec("tag", tag=2), LayerSpec("skip", tag=1),
            LayerSpec("avg_pool", size=2, stride=2), LayerSpec("add_prev", tag=2), LayerSpec("relu")]


def face_recognition_layers() -> list[LayerSpec]:
    """``anet_type`` of dlib's dnn_face_recognition_ex.cpp, from the input up to the fc layer."""
    layers = [LayerSpec("input", size=CHIP_SIZE), LayerSpec("con", 32, 7, 2), LayerSpec("affine"), LayerSpec("relu"),
              LayerSpec("max_pool", size=3, stride=2)]
    stages = [(32, 3, False), (64, 3, True), (128, 2, True), (256, 2, True), (256, 0, True)]
    for width, plain, down in stages:
        if down:
            layers += _residual_down(width)
        for _ in range(plain):
            layers += _residual(width)
    return layers + [LayerSpec("avg_pool", size=0, stride=1), LayerSpec("fc", DESCRIPTOR_SIZE)]


@dataclass
class ParsedLayer:
    """One layer as the file holds it: its spec, its tensors (con, affine, fc) and its flags."""

    spec: LayerSpec
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    fused_relu: bool = False
    disabled: bool = False


@dataclass
class ParsedNetwork:
    """Everything :class:`DlibFaceResNet` is built from: the layers (input first) and the loss's settings."""

    layers: list[ParsedLayer]
    channel_means: tuple[float, float, float]
    margin: float
    distance_threshold: float


# ---- the PyTorch network --------------------------------------------------------------------------


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: both tensors zero-padded at the end of channels, rows and columns to the larger size."""
    if a.shape == b.shape:
        return a + b
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c))

    return pad(a) + pad(b)


class _Step(nn.Module):
    """One layer of the program: maps (current tensor, tag table) to the next tensor."""

    def __init__(self, parsed: ParsedLayer) -> None:
        super().__init__()
        spec = parsed.spec
        self.kind, self.tag, self.size, self.stride, self.padding = spec.kind, spec.tag, spec.size, spec.stride, spec.padding
        self.fused_relu = parsed.fused_relu
        self.disabled = parsed.disabled
        for key, value in parsed.tensors.items():
            tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            if self.kind == "affine":
                tensor = tensor.view(1, -1, 1, 1)
            self.register_buffer(key, tensor)

    def forward(self, x: torch.Tensor, tags: dict[int, torch.Tensor]) -> torch.Tensor:
        kind = self.kind
        if kind == "con":
            x = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
            return F.relu(x) if self.fused_relu else x
        if kind == "affine":
            return x if self.disabled else x * self.scale + self.shift
        if kind == "relu":
            return x if self.disabled else F.relu(x)
        if kind == "max_pool":
            return F.max_pool2d(x, self.size, self.stride, self.padding)
        if kind == "avg_pool":
            if self.size == 0:
                return x.mean(dim=(2, 3), keepdim=True)
            return F.avg_pool2d(x, self.size, self.stride, self.padding)
        if kind == "tag":
            tags[self.tag] = x
            return x
        if kind == "skip":
            return tags[self.tag]
        if kind == "add_prev":
            return add_zero_padded(x, tags[self.tag])
        if kind == "fc":
            return F.linear(x.flatten(1), self.weight)
        raise ValueError(f"unknown dlib layer kind {kind!r}")


class DlibFaceResNet(nn.Module):
    """dlib's face recognition ResNet: RGB chips [B, 3, 150, 150] in 0..255 -> descriptors [B, 128].

    Chips are what ``dlib.get_face_chip(image, shape, 150, 0.25)`` returns (see
    :mod:`anonymize.faces.chips`), as float or uint8, channels first. Frozen: always in eval mode,
    no parameters to train; gradients flow to the chips.
    """

    def __init__(self, network: ParsedNetwork) -> None:
        super().__init__()
        self.steps = nn.ModuleList(_Step(layer) for layer in network.layers[1:])
        self.register_buffer("channel_means", torch.tensor(network.channel_means, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("channel_stds", torch.tensor(contract_of("dlib_resnet").std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.distance_threshold = network.distance_threshold
        self.requires_grad_(False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"expected chips of shape [B, 3, {CHIP_SIZE}, {CHIP_SIZE}], got {tuple(chips.shape)}")
        x = (chips.to(self.channel_means.dtype) - self.channel_means) / self.channel_stds
        tags: dict[int, torch.Tensor] = {}
        for step in self.steps:
            x = step(x, tags)
        return x

    def descriptors(self, chips: torch.Tensor) -> torch.Tensor:
        """[B, 128] float32 descriptors; two faces closer than 0.6 are the same person (dlib's threshold)."""
        return self(chips)
