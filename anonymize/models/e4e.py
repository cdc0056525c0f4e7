"""The e4e encoder (Encoder4Editing, Tov et al. 2021): aligned face -> StyleGAN2 W+ code (the network only).

Modules (named as in e4e's checkpoint, which :mod:`anonymize.models.legacy.e4e` reads):

* ``input_layer`` / ``body``: the IR-SE50 trunk (see :mod:`anonymize.models.irse`).
* ``styles[i]``: map-to-style block i, a chain of 3x3 stride-2 convolutions (each followed by
  LeakyReLU 0.01) that shrinks its feature map to 1 x 1, then ``linear``: an equalized linear layer
  (weight scaled by 1/sqrt(fan_in) at run time, bias unscaled; learning-rate multiplier 1).
* ``latlayer1`` (1x1 conv, stage-3 width -> stage-4 width) and ``latlayer2`` (stage-2 width ->
  stage-4 width): the feature-pyramid lateral connections.

Inference (e4e's ``Inference`` progressive stage, i.e. every delta on): style 0 reads the last stage's
map c3 and gives w0; styles 1-2 read c3, styles 3-6 read p2 = up(c3) + latlayer1(c2), styles 7+ read
p1 = up(p2) + latlayer2(c1) (bilinear, align_corners=True); code i = w0 + delta_i (code 0 = w0), and
``latent_avg`` [num_ws, w_dim] is added to every code. c1, c2, c3 are the outputs of the last three stages.

Shapes: images [N, 3, H, W] as :class:`CanonicalImages` -> codes [N, num_ws, w_dim] (18 x 512 for the
real network). c3 has side 2^coarse_convs (16 for the real network, whose coarse blocks have 4
convolutions) and each trunk stage halves the input, so the input side is 2^coarse_convs * 2^stages
(256 for the real network, the ``e4e`` contract in :mod:`anonymize.models.registry`: e4e's own
transform, resize to 256, values in [-1, 1]); images of another size are resized to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.checkpoint import CheckpointError
from anonymize.models.images import CanonicalImages
from anonymize.models.irse import IRTrunk, UnitSpec

COARSE_END = 3  # styles [0, 3) read c3
MIDDLE_END = 7  # styles [3, 7) read p2, the rest read p1
LEAKY_SLOPE = 0.01


def pyramid_level(style_index: int) -> int:
    """Which pyramid map style ``style_index`` reads: 0 (c3), 1 (p2) or 2 (p1); each level adds one convolution."""
    return 0 if style_index < COARSE_END else 1 if style_index < MIDDLE_END else 2


class EqualizedLinear(nn.Module):
    """Linear layer whose weight is rescaled by 1/sqrt(fan_in) at run time (StyleGAN's equalized lr)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class MapToStyle(nn.Module):
    """Strided convolutions down to 1 x 1, then an equalized linear layer: one W+ entry."""

    def __init__(self, in_channels: int, w_dim: int, num_convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(num_convs):
            layers += [nn.Conv2d(in_channels if index == 0 else w_dim, w_dim, 3, 2, 1), nn.LeakyReLU(LEAKY_SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualizedLinear(w_dim, w_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(features).flatten(1))


def _upsample_add(coarse: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    return F.interpolate(coarse, size=lateral.shape[2:], mode="bilinear", align_corners=True) + lateral


class E4EEncoder(IRTrunk):
    """IR-SE trunk + feature pyramid + one map-to-style block per W+ entry; outputs absolute W+ codes."""

    def __init__(self, specs: list[UnitSpec], num_ws: int, w_dim: int, coarse_convs: int, latent_avg: torch.Tensor) -> None:
        super().__init__(specs)
        if self.num_stages < 3:
            raise ValueError(f"e4e needs a trunk with at least 3 stages, got {self.num_stages}")
        top = self.stage_widths[-1]
        self.num_ws = num_ws
        self.w_dim = w_dim
        self.input_size = 2**coarse_convs * 2**self.num_stages
        self.styles = nn.ModuleList(MapToStyle(top, w_dim, coarse_convs + pyramid_level(i)) for i in range(num_ws))
        self.latlayer1 = nn.Conv2d(self.stage_widths[-2], top, 1)
        self.latlayer2 = nn.Conv2d(self.stage_widths[-3], top, 1)
        self.register_buffer("latent_avg", _per_layer_average(latent_avg, num_ws, w_dim), persistent=False)

    def forward(self, images: CanonicalImages) -> torch.Tensor:
        if not isinstance(images, CanonicalImages):
            raise TypeError(f"E4EEncoder takes CanonicalImages, got {type(images).__name__}")
        c1, c2, c3 = self.stage_features(images.resized(self.input_size).tensor)[-3:]
        w0 = self.styles[0](c3)
        codes = [w0]
        features = c3
        for index in range(1, self.num_ws):
            if index == COARSE_END:
                features = p2 = _upsample_add(c3, self.latlayer1(c2))
            elif index == MIDDLE_END:
                features = _upsample_add(p2, self.latlayer2(c1))
            codes.append(w0 + self.styles[index](features))
        return torch.stack(codes, dim=1) + self.latent_avg


def _per_layer_average(latent_avg: torch.Tensor, num_ws: int, w_dim: int) -> torch.Tensor:
    average = latent_avg.detach().float()
    if average.shape == (w_dim,) or average.shape == (1, w_dim):
        return average.reshape(1, w_dim).repeat(num_ws, 1)
    if average.shape == (num_ws, w_dim):
        return average.clone()
    raise CheckpointError(f"latent_avg has shape {tuple(average.shape)}; expected ({num_ws}, {w_dim}) or ({w_dim},)")
