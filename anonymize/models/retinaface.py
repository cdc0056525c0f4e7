"""RetinaFace with a MobileNet-0.25 body (Deng et al. 2019; the Face-Detector-1MB layout), as a plain module.

Module and parameter names follow the published ``mobilenet0.25_Final.pth`` (``body.stage1.0.0.weight``,
``fpn.output1.0.weight``, ``ssh1.conv3X3.0.weight``, ``ClassHead.0.conv1x1.weight`` ...), so its state dict
loads strictly. Each convolution sits in an ``nn.Sequential`` with its batch norm, which the detector
folds for inference. Activations are plain ReLUs: the pinned weights were trained with them. Built here
rather than imported from facexlib, whose package import pulls in torchvision (about 1.5 s of start-up
for every run); ``tests/test_faces.py`` holds the two to the same outputs on the real weights.

Shapes: input ``N x 3 x H x W`` (mean-subtracted pixels); outputs per anchor (2 per position of the
stride-8, -16 and -32 maps, in that order, row-major): box offsets ``N x A x 4``, class probabilities
``N x A x 2`` (background, face), landmark offsets ``N x A x 10``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ANCHORS_PER_POSITION = 2
WIDTH = 64  # the feature pyramid's channels


def _conv_norm(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(outputs)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


def _block(inputs: int, outputs: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    return nn.Sequential(*_conv_norm(inputs, outputs, kernel, stride, relu=relu))


def _separable(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with its norm and ReLU (indices 0-2 and 3-5)."""
    return nn.Sequential(*_conv_norm(inputs, inputs, 3, stride, groups=inputs), *_conv_norm(inputs, outputs, 1))


class MobileNetBody(nn.Module):
    """The three stages whose outputs feed the pyramid: strides 8 (64 ch), 16 (128 ch), 32 (256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_block(3, 8, 3, 2), _separable(8, 16, 1), _separable(16, 32, 2),
                                    _separable(32, 32, 1), _separable(32, 64, 2), _separable(64, 64, 1))
        self.stage2 = nn.Sequential(_separable(64, 128, 2), *(_separable(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_separable(128, 256, 2), _separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.stage1(x)
        second = self.stage2(first)
        return [first, second, self.stage3(second)]


class Pyramid(nn.Module):
    """Top-down feature pyramid: each level 1x1-projected to 64 channels, the coarser one upsampled (nearest) and added."""

    def __init__(self, channels: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        self.output1, self.output2, self.output3 = (_block(c, WIDTH, 1) for c in channels)
        self.merge1 = _block(WIDTH, WIDTH, 3)
        self.merge2 = _block(WIDTH, WIDTH, 3)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        fine, middle, coarse = self.output1(levels[0]), self.output2(levels[1]), self.output3(levels[2])
        middle = self.merge2(middle + F.interpolate(coarse, size=middle.shape[-2:], mode="nearest"))
        fine = self.merge1(fine + F.interpolate(middle, size=fine.shape[-2:], mode="nearest"))
        return [fine, middle, coarse]


class ContextModule(nn.Module):
    """SSH context: 3x3 (half the channels), 5x5 and 7x7 receptive fields (a quarter each) by stacked 3x3s."""

    def __init__(self, channels: int = WIDTH) -> None:
        super().__init__()
        self.conv3X3 = _block(channels, channels // 2, 3, relu=False)
        self.conv5X5_1 = _block(channels, channels // 4, 3)
        self.conv5X5_2 = _block(channels // 4, channels // 4, 3, relu=False)
        self.conv7X7_2 = _block(channels // 4, channels // 4, 3)
        self.conv7x7_3 = _block(channels // 4, channels // 4, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        five = self.conv5X5_1(x)
        seven = self.conv7X7_2(five)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(five), self.conv7x7_3(seven)], dim=1))


class Head(nn.Module):
    """A 1x1 convolution giving ``values`` numbers per anchor, laid out N x (positions x anchors) x values."""

    def __init__(self, values: int, channels: int = WIDTH) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, ANCHORS_PER_POSITION * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


class RetinaFaceMobile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = MobileNetBody()
        self.fpn = Pyramid()
        self.ssh1, self.ssh2, self.ssh3 = ContextModule(), ContextModule(), ContextModule()
        self.BboxHead = nn.ModuleList(Head(4) for _ in range(3))
        self.ClassHead = nn.ModuleList(Head(2) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = [ssh(level) for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), self.fpn(self.body(x)))]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        classes = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, F.softmax(classes, dim=-1), landmarks
