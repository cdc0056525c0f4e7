"""The e4e encoder (Encoder4Editing, Tov et al. 2021): aligned face -> StyleGAN2 W+ code.

Checkpoint ``e4e_ffhq_encode.pt`` (written by e4e's training coach) is a dict:

``state_dict``
    the whole pSp-style network: ``encoder.*`` (this module) and ``decoder.*`` (a StyleGAN2 generator
    in rosinality's layout, loaded by :func:`anonymize.models.stylegan2.stylegan2_from_state_dict`).
``latent_avg``
    the average W the codes are offsets from; [num_ws, w_dim] when the network was trained from a
    StyleGAN checkpoint (e4e repeats the generator's [w_dim] average per layer), [w_dim] accepted too.
``opts``
    the training options: e4e saves ``vars(opts)`` (a plain dict), some re-saves an
    ``argparse.Namespace``; both load under ``weights_only``. Used only for consistency checks
    (``encoder_type`` must be Encoder4Editing, ``stylegan_size`` must match the generator).

Keys under ``encoder.``:

* ``input_layer.*`` / ``body.N.*``: the IR-SE50 trunk (see :mod:`anonymize.models.irse`).
* ``styles.i.convs.{0,2,4,..}.weight|bias``: map-to-style block i, a chain of 3x3 stride-2
  convolutions (each followed by LeakyReLU 0.01 at the odd indices) that shrinks its feature map to
  1 x 1, then ``styles.i.linear.weight|bias``: an equalized linear layer (weight scaled by
  1/sqrt(fan_in) at run time, bias unscaled; learning-rate multiplier 1).
* ``latlayer1`` (1x1 conv, stage-3 width -> stage-4 width) and ``latlayer2`` (stage-2 width ->
  stage-4 width): the feature-pyramid lateral connections.

Inference (e4e's ``Inference`` progressive stage, i.e. every delta on): style 0 reads the last stage's
map c3 and gives w0; styles 1-2 read c3, styles 3-6 read p2 = up(c3) + latlayer1(c2), styles 7+ read
p1 = up(p2) + latlayer2(c1) (bilinear, align_corners=True); code i = w0 + delta_i (code 0 = w0), and
``latent_avg`` is added to every code. c1, c2, c3 are the outputs of the last three stages.

Sizes are read from the tensors: num_ws from the number of style blocks, w_dim from their linear
layers, and the encoder's input side from style 0's convolution count: c3 has side 2^convs (16 for
the real network, whose coarse blocks have 4 convolutions) and each trunk stage halves the input, so
the input side is 2^convs * 2^stages (256 for the real network). The middle and fine blocks must
then have one and two more convolutions; anything else is refused. Input images are resized to that
side (e4e's own transform: resize to 256, values in [-1, 1]).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, sub_state_dict
from anonymize.models.images import CanonicalImages
from anonymize.models.irse import IRTrunk, UnitSpec, infer_block_specs, with_batchnorm_counters
from anonymize.models.stylegan2 import StyleGAN2Generator, stylegan2_from_state_dict

COARSE_END = 3  # styles [0, 3) read c3
MIDDLE_END = 7  # styles [3, 7) read p2, the rest read p1
LEAKY_SLOPE = 0.01


def _pyramid_level(style_index: int) -> int:
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
        self.styles = nn.ModuleList(MapToStyle(top, w_dim, coarse_convs + _pyramid_level(i)) for i in range(num_ws))
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


_STYLE_CONV_KEY = re.compile(r"^styles\.(\d+)\.convs\.(\d+)\.weight$")


def e4e_encoder_from_state_dict(state: Mapping[str, torch.Tensor], latent_avg: object, source: str) -> E4EEncoder:
    """Build an E4EEncoder shaped like ``state`` (keys without ``encoder.``) and load it strictly."""
    specs = infer_block_specs(state, source)
    conv_counts: dict[int, int] = {}
    for key in state:
        if match := _STYLE_CONV_KEY.match(key):
            conv_counts[int(match.group(1))] = conv_counts.get(int(match.group(1)), 0) + 1
    num_ws = len(conv_counts)
    if num_ws == 0 or sorted(conv_counts) != list(range(num_ws)):
        raise CheckpointError(f"{source}: style blocks styles.0..N are missing or not numbered contiguously: {sorted(conv_counts)}")
    coarse_convs = conv_counts[0]
    for index, count in conv_counts.items():
        if count != coarse_convs + _pyramid_level(index):
            raise CheckpointError(
                f"{source}: styles.{index} has {count} convolutions; the pyramid needs {coarse_convs + _pyramid_level(index)}"
            )
    linear = state.get("styles.0.linear.weight")
    if not isinstance(linear, torch.Tensor):
        raise CheckpointError(f"{source}: missing tensor styles.0.linear.weight")
    if not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{source}: the checkpoint has no latent_avg tensor (the codes are offsets from it)")
    w_dim = int(linear.shape[0])
    try:
        encoder = E4EEncoder(specs, num_ws, w_dim, coarse_convs, latent_avg)
    except (CheckpointError, ValueError) as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    load_state_dict_strict(encoder, with_batchnorm_counters(encoder, state), source)
    encoder.eval().requires_grad_(False)
    return encoder


def _options(raw: object, source: str) -> Mapping[str, object]:
    if raw is None:
        return {}
    if isinstance(raw, argparse.Namespace):
        return vars(raw)
    if isinstance(raw, Mapping):
        return raw
    raise CheckpointError(f"{source}: opts is a {type(raw).__name__}, expected a dict or argparse.Namespace")


def load_e4e(path: Path) -> tuple[E4EEncoder, StyleGAN2Generator]:
    """Load ``e4e_ffhq_encode.pt``: the encoder (eval, frozen) and the StyleGAN2 generator it was trained with."""
    source = str(path)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{source}: expected a dict with a 'state_dict' (e4e training checkpoint)")
    state = checkpoint["state_dict"]
    stray = sorted(key for key in state if not key.startswith(("encoder.", "decoder.")))
    if stray:
        raise CheckpointError(f"{source}: unexpected keys outside encoder./decoder.: {', '.join(stray)}")
    opts = _options(checkpoint.get("opts"), source)
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise CheckpointError(f"{source}: encoder_type is {encoder_type!r}; only Encoder4Editing codes are w0 + deltas")
    encoder = e4e_encoder_from_state_dict(sub_state_dict(state, "encoder."), checkpoint.get("latent_avg"), f"{source} (encoder.*)")
    # e4e's latent_avg is the generator's own average w repeated per layer: row 0 is that average.
    generator = stylegan2_from_state_dict(
        sub_state_dict(state, "decoder."), layout="rosinality", source=f"{source} (decoder.*)", w_avg=encoder.latent_avg[0]
    )
    if (encoder.num_ws, encoder.w_dim) != (generator.num_ws, generator.w_dim):
        raise CheckpointError(
            f"{source}: encoder makes {encoder.num_ws} x {encoder.w_dim} codes but the decoder takes {generator.num_ws} x {generator.w_dim}"
        )
    size = opts.get("stylegan_size")
    if size is not None and int(size) != generator.resolution:
        raise CheckpointError(f"{source}: opts.stylegan_size is {size} but the decoder is {generator.resolution} px")
    return encoder, generator
