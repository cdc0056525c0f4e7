"""StyleGAN2 config-f generator in plain PyTorch, loadable from the three published conversions.

FALCO inverts faces into W+ with e4e, searches fake faces made by a StyleGAN2 generator, and
optimises W+ codes through it. The official NVlabs FFHQ weights reach us converted three ways:
rosinality's ``stylegan2-ffhq-config-f.pt``, the ``decoder.*`` inside e4e's
``e4e_ffhq_encode.pt`` (rosinality's layout again), and GenForce's ``stylegan2_ffhq1024.pth``
(used by the FALCO reference). They store the same numbers under different names and in different
forms, so each loader maps keys AND values onto one internal module; one set of weights then
renders the same image whichever file it came from.

Network (config-f; widths, depth and resolution are read from the checkpoint):

* mapping: z [N, z_dim] -> pixel norm -> ``mapping_layers`` equalized-lr dense layers with learning
  rate multiplier 0.01 (weight used as ``weight * 0.01 / sqrt(fan_in)``, bias as ``bias * 0.01``),
  each followed by leaky ReLU(0.2) times sqrt(2) -> w [N, w_dim]. Truncation: ``w_avg + psi * (w - w_avg)``.
* synthesis: W+ ws [N, num_ws, w_dim], ``num_ws = 2 * log2(resolution) - 2`` (18 at 1024 px). A learned
  4x4 constant; per resolution 2^r a 3x3 modulated conv that upsamples (except at 4x4) and one
  that does not, each followed by per-pixel noise times a learned strength, a bias, and leaky ReLU(0.2)
  times sqrt(2) (no activation clamp: config-f and all three converters use none); a 1x1 modulated
  toRGB (no demodulation) whose output is added to the 2x-upsampled running image (skip
  architecture). Conv k reads ``ws[:, k]`` and toRGB b reads ``ws[:, 2b + 1]``.
* modulated conv: ``styles = affine(w)`` (equalized lr, gain 1/sqrt(w_dim), bias holding the +1
  offset), weight ``[O, I, k, k] / sqrt(I k k)`` times styles over I, demodulated by
  ``rsqrt(sum over I, k, k of weight^2 + 1e-8)``. Upsampling = stride-2 transposed conv followed by
  the [1,3,3,1] blur (outer product, normalised, times 4, padding 1 each side); the skip image is
  upsampled by zero insertion then the same filter (padding 2 before, 1 after).

Internal weight conventions (what the tables below convert to): every weight is stored raw and
scaled at run time (equalized learning rate), the affine biases include the +1, and the weight of
an upsampling conv is stored spatially flipped relative to the TensorFlow original, ready for
``conv_transpose2d`` after swapping its in/out axes (the orientation rosinality and NVlabs'
PyTorch port use). ``noise_const`` holds the fixed noise map of each conv layer for reproducible
images (``noise_mode="const"``).

Key mapping, rosinality (``g_ema`` of ``stylegan2-ffhq-config-f.pt``, and e4e's ``decoder.*``).
Conv k is ``conv1`` for k = 0 and ``convs.{k-1}`` otherwise; toRGB b is ``to_rgb1`` for b = 0 and
``to_rgbs.{b-1}`` otherwise; mapping layer i is ``style.{i+1}`` (``style.0`` is the pixel norm):

====================================  =======================================  ======================
rosinality key                        internal key                             value change
====================================  =======================================  ======================
style.{i+1}.weight / .bias            mapping_net.layers.{i}.weight / .bias    none
input.input [1, C, 4, 4]              synthesis_net.const [C, 4, 4]            drop batch axis
{conv}.conv.weight [1, O, I, 3, 3]    synthesis_net.convs.{k}.weight           drop leading axis
{conv}.conv.modulation.weight / .bias synthesis_net.convs.{k}.affine.*         none (bias has +1)
{conv}.noise.weight [1]               synthesis_net.convs.{k}.noise_strength   to a scalar
{conv}.activate.bias                  synthesis_net.convs.{k}.bias             none
noises.noise_{k} [1, 1, R, R]         synthesis_net.convs.{k}.noise_const      to [R, R]
{rgb}.conv.weight [1, 3, C, 1, 1]     synthesis_net.to_rgbs.{b}.weight         drop leading axis
{rgb}.conv.modulation.weight / .bias  synthesis_net.to_rgbs.{b}.affine.*       none (bias has +1)
{rgb}.bias [1, 3, 1, 1]               synthesis_net.to_rgbs.{b}.bias           to [3]
convs.{odd}.conv.blur.kernel,         (fixed resampling filters)               checked, not loaded
to_rgbs.{b}.upsample.kernel
====================================  =======================================  ======================

Key mapping, GenForce (``generator_smooth``, else ``generator``, of ``stylegan2_ffhq1024.pth``). Its
converter only transposes the TensorFlow variables, so two values differ from ours:

=========================================  =======================================  ======================
GenForce key                               internal key                             value change
=========================================  =======================================  ======================
mapping.dense{i}.weight / .bias            mapping_net.layers.{i}.weight / .bias    none
truncation.w_avg [w_dim]                   w_avg                                    none
synthesis.early_layer.const [1, C, 4, 4]   synthesis_net.const                      drop batch axis
synthesis.layer{k}.weight [O, I, 3, 3]     synthesis_net.convs.{k}.weight           flip 3x3 when k is odd
synthesis.layer{k}.style.weight            synthesis_net.convs.{k}.affine.weight    none
synthesis.layer{k}.style.bias              synthesis_net.convs.{k}.affine.bias      add 1 (GenForce adds
                                                                                    it at run time)
synthesis.layer{k}.noise_strength []       synthesis_net.convs.{k}.noise_strength   none
synthesis.layer{k}.noise [1, 1, R, R]      synthesis_net.convs.{k}.noise_const      to [R, R]
synthesis.layer{k}.bias                    synthesis_net.convs.{k}.bias             none
synthesis.output{b}.weight [3, C, 1, 1]    synthesis_net.to_rgbs.{b}.weight         none
synthesis.output{b}.style.weight / .bias   synthesis_net.to_rgbs.{b}.affine.*       bias: add 1
synthesis.output{b}.bias [3]               synthesis_net.to_rgbs.{b}.bias           none
synthesis.layer{odd}.filter.kernel,        (fixed resampling filters)               checked, not loaded
synthesis.upsample.kernel
=========================================  =======================================  ======================

The average w (``w_avg``) comes from GenForce's ``truncation.w_avg``; from rosinality's top-level
``latent_avg`` (the TF ``dlatent_avg``); from row 0 of e4e's ``latent_avg``, which e4e stores as
that same vector repeated once per W+ layer; and, where a file has none, it is estimated as the
mean of ``mapping(z)`` over 10,000 z drawn from a generator seeded with 0 (what rosinality's
``mean_latent`` does, made reproducible).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, sub_state_dict
from anonymize.models.images import CanonicalImages

NoiseMode = Literal["const", "random", "none"]
StateLayout = Literal["rosinality", "genforce"]
FileLayout = Literal["auto", "rosinality", "e4e", "genforce"]

BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
W_AVG_SAMPLES = 10_000
W_AVG_SEED = 0


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of one generator; ``channels`` maps each resolution 4, 8, ..., ``resolution`` to its width."""

    resolution: int
    z_dim: int
    w_dim: int
    mapping_layers: int
    channels: Mapping[int, int] = field(hash=False)
    mapping_lr_multiplier: float = 0.01

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {r}")
        if min(self.z_dim, self.w_dim, self.mapping_layers) < 1:
            raise ValueError("z_dim, w_dim and mapping_layers must be positive")
        wanted = self.resolutions
        if sorted(self.channels) != list(wanted) or min(self.channels.values()) < 1:
            raise ValueError(f"channels must give a positive width for each of {wanted}, got {dict(self.channels)}")
        object.__setattr__(self, "channels", {res: int(self.channels[res]) for res in wanted})

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(2**i for i in range(2, int(math.log2(self.resolution)) + 1))

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    @classmethod
    def config_f(
        cls,
        resolution: int = 1024,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
    ) -> StyleGAN2Config:
        """The paper's config-f widths, ``min(channel_base // res, channel_max)`` (512 ... 32 at 1024 px)."""
        channels = {2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(resolution)) + 1)}
        return cls(resolution, z_dim, w_dim, mapping_layers, channels)


# --------------------------------------------------------------------------------------------
# Building blocks.


def _blur_kernel(gain: float) -> Tensor:
    """The 2-D [1,3,3,1] filter, normalised to sum 1, times ``gain`` (4 after 2x upsampling keeps DC)."""
    taps = torch.tensor(BLUR_TAPS)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum() * gain


def _upfirdn2d(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """Upsample by zero insertion, zero-pad, then convolve every channel with ``kernel``.

    x: [N, C, H, W], kernel: [kh, kw], pad: (before, after) on both axes ->
    [N, C, H * up + before + after - kh + 1, W * up + before + after - kw + 1].
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = kernel.flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


def _modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool, blur: Tensor | None = None) -> Tensor:
    """One conv per sample with its own styled weights, as a grouped conv.

    x: [N, I, H, W], weight: [O, I, k, k] (gain already applied), styles: [N, I].
    ``blur`` given: 2x upsampling (transposed conv then blur) -> [N, O, 2H, 2W]; else -> [N, O, H, W].
    """
    n, in_channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_channels, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=[2, 3, 4]) + 1e-8).reshape(n, out_channels, 1, 1, 1)
    x = x.reshape(1, n * in_channels, height, width)
    if blur is None:
        out = F.conv2d(x, w.reshape(n * out_channels, in_channels, kh, kw), padding=kh // 2, groups=n)
        return out.reshape(n, out_channels, height, width)
    w = w.transpose(1, 2).reshape(n * in_channels, out_channels, kh, kw)  # conv_transpose2d wants [in, out, k, k]
    out = F.conv_transpose2d(x, w, stride=2, groups=n)
    out = out.reshape(n, out_channels, out.shape[2], out.shape[3])
    return _upfirdn2d(out, blur, up=1, pad=(1, 1))


class EqualizedLinear(nn.Module):
    """Dense layer with the equalized learning rate: raw parameters, scaled on every call.

    x: [N, in_features] -> [N, out_features].
    """

    def __init__(self, in_features: int, out_features: int, lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)


class MappingNetwork(nn.Module):
    """z [N, z_dim] -> w [N, w_dim]: pixel norm, then dense + leaky ReLU (times sqrt 2) layers."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int, lr_multiplier: float) -> None:
        super().__init__()
        widths = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualizedLinear(widths[i], widths[i + 1], lr_multiplier=lr_multiplier) for i in range(num_layers)
        )

    def forward(self, z: Tensor) -> Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LRELU_SLOPE) * LRELU_GAIN
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + leaky ReLU.

    x: [N, I, R/2, R/2] when upsampling else [N, I, R, R]; w: [N, w_dim] -> [N, O, R, R].
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.resolution = resolution
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: Tensor, w: Tensor, noise_mode: NoiseMode, blur: Tensor) -> Tensor:
        styles = self.affine(w)
        x = _modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=True, blur=blur if self.upsample else None)
        if noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), LRELU_SLOPE) * LRELU_GAIN


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB, not demodulated, plus bias. x: [N, C, R, R], w: [N, w_dim] -> [N, 3, R, R]."""

    def __init__(self, in_channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = _modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), demodulate=False)
        return x + self.bias.reshape(1, -1, 1, 1)


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, 3, R, R] (skip architecture: toRGB at every resolution, summed)."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        ch = config.channels
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        convs = [SynthesisLayer(ch[4], ch[4], config.w_dim, 4, upsample=False)]
        to_rgbs = [ToRGBLayer(ch[4], config.w_dim)]
        for res in config.resolutions[1:]:
            convs.append(SynthesisLayer(ch[res // 2], ch[res], config.w_dim, res, upsample=True))
            convs.append(SynthesisLayer(ch[res], ch[res], config.w_dim, res, upsample=False))
            to_rgbs.append(ToRGBLayer(ch[res], config.w_dim))
        self.convs = nn.ModuleList(convs)
        self.to_rgbs = nn.ModuleList(to_rgbs)
        self.register_buffer("blur", _blur_kernel(gain=4.0), persistent=False)

    def forward(self, ws: Tensor, noise_mode: NoiseMode) -> Tensor:
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        x = self.convs[0](x, ws[:, 0], noise_mode, self.blur)
        image = self.to_rgbs[0](x, ws[:, 1])
        for block in range(1, len(self.to_rgbs)):
            x = self.convs[2 * block - 1](x, ws[:, 2 * block - 1], noise_mode, self.blur)
            x = self.convs[2 * block](x, ws[:, 2 * block], noise_mode, self.blur)
            image = _upfirdn2d(image, self.blur, up=2, pad=(2, 1)) + self.to_rgbs[block](x, ws[:, 2 * block + 1])
        return image


class StyleGAN2Generator(nn.Module):
    """Mapping z -> w, truncation toward ``w_avg``, and W+ synthesis; one module for every file layout."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        self.config = config
        self.resolution = config.resolution
        self.z_dim = config.z_dim
        self.w_dim = config.w_dim
        self.num_ws = config.num_ws
        self.mapping_net = MappingNetwork(config.z_dim, config.w_dim, config.mapping_layers, config.mapping_lr_multiplier)
        self.synthesis_net = SynthesisNetwork(config)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def mapping(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """z [N, z_dim] -> w [N, w_dim], pulled toward ``w_avg`` by ``truncation_psi`` (1 = untouched, 0 = w_avg)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping needs z of shape [N, {self.z_dim}], got {tuple(z.shape)}")
        w = self.mapping_net(z)
        if truncation_psi != 1.0:
            w = self.w_avg + truncation_psi * (w - self.w_avg)
        return w

    def synthesis(self, ws: Tensor, noise_mode: NoiseMode = "const") -> Tensor:
        """W+ ws [N, num_ws, w_dim] -> images [N, 3, R, R], nominally in [-1, 1] (not clamped).

        noise_mode: "const" adds the fixed noise maps stored in the checkpoint (reproducible),
        "random" draws fresh noise from torch's global generator, "none" adds none.
        """
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis needs ws of shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        return self.synthesis_net(ws, noise_mode)

    def forward(self, ws: Tensor, noise_mode: NoiseMode = "const") -> CanonicalImages:
        """W+ ws [N, num_ws, w_dim] -> canonical images (clamped to [-1, 1], differentiable inside)."""
        return CanonicalImages.from_generator(self.synthesis(ws, noise_mode))

    @torch.no_grad()
    def estimate_w_avg(self, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED) -> Tensor:
        """Mean of mapping(z) over ``samples`` z from a generator seeded with ``seed`` -> [w_dim]."""
        z = torch.randn(samples, self.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.w_avg.device)
        return torch.cat([self.mapping_net(chunk) for chunk in z.split(2048)]).mean(dim=0)


# --------------------------------------------------------------------------------------------
# Checkpoint layouts.


@dataclass(frozen=True)
class _Rule:
    """One tensor of a foreign layout: where it goes internally and how its value changes on the way."""

    source: str
    target: str | None  # None: a fixed resampling filter, compared with ``expected`` and not loaded
    convert: Callable[[Tensor], Tensor] = lambda t: t
    expected: Tensor | None = None


def _squeeze0(t: Tensor) -> Tensor:
    return t.squeeze(0)


def _flip_kernel(t: Tensor) -> Tensor:
    return t.flip([2, 3])


def _add_one(t: Tensor) -> Tensor:
    return t + 1.0


def _scalar(t: Tensor) -> Tensor:
    return t.reshape(())


def _square_map(t: Tensor) -> Tensor:
    return t.reshape(t.shape[-2], t.shape[-1])


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1)


def _rosinality_rules(config: StyleGAN2Config) -> list[_Rule]:
    rules = [_Rule("input.input", "synthesis_net.const", _squeeze0)]
    for i in range(config.mapping_layers):
        for name in ("weight", "bias"):
            rules.append(_Rule(f"style.{i + 1}.{name}", f"mapping_net.layers.{i}.{name}"))
    filter_kernel = _blur_kernel(gain=4.0)
    for k in range(2 * len(config.resolutions) - 1):
        src, dst = ("conv1" if k == 0 else f"convs.{k - 1}"), f"synthesis_net.convs.{k}"
        rules += [
            _Rule(f"{src}.conv.weight", f"{dst}.weight", _squeeze0),
            _Rule(f"{src}.conv.modulation.weight", f"{dst}.affine.weight"),
            _Rule(f"{src}.conv.modulation.bias", f"{dst}.affine.bias"),
            _Rule(f"{src}.noise.weight", f"{dst}.noise_strength", _scalar),
            _Rule(f"{src}.activate.bias", f"{dst}.bias"),
            _Rule(f"noises.noise_{k}", f"{dst}.noise_const", _square_map),
        ]
        if k % 2 == 1:
            rules.append(_Rule(f"{src}.conv.blur.kernel", None, expected=filter_kernel))
    for b in range(len(config.resolutions)):
        src, dst = ("to_rgb1" if b == 0 else f"to_rgbs.{b - 1}"), f"synthesis_net.to_rgbs.{b}"
        rules += [
            _Rule(f"{src}.conv.weight", f"{dst}.weight", _squeeze0),
            _Rule(f"{src}.conv.modulation.weight", f"{dst}.affine.weight"),
            _Rule(f"{src}.conv.modulation.bias", f"{dst}.affine.bias"),
            _Rule(f"{src}.bias", f"{dst}.bias", _flat),
        ]
        if b > 0:
            rules.append(_Rule(f"{src}.upsample.kernel", None, expected=filter_kernel))
    return rules


def _genforce_rules(config: StyleGAN2Config) -> list[_Rule]:
    rules = [
        _Rule("synthesis.early_layer.const", "synthesis_net.const", _squeeze0),
        _Rule("truncation.w_avg", "w_avg"),
        _Rule("synthesis.upsample.kernel", None, expected=_blur_kernel(gain=4.0)[None, None]),
    ]
    for i in range(config.mapping_layers):
        for name in ("weight", "bias"):
            rules.append(_Rule(f"mapping.dense{i}.{name}", f"mapping_net.layers.{i}.{name}"))
    for k in range(2 * len(config.resolutions) - 1):
        src, dst = f"synthesis.layer{k}", f"synthesis_net.convs.{k}"
        upsampling = k % 2 == 1
        rules += [
            # GenForce keeps the TF orientation and flips at run time before its transposed conv.
            _Rule(f"{src}.weight", f"{dst}.weight", _flip_kernel if upsampling else (lambda t: t)),
            _Rule(f"{src}.style.weight", f"{dst}.affine.weight"),
            _Rule(f"{src}.style.bias", f"{dst}.affine.bias", _add_one),
            _Rule(f"{src}.noise_strength", f"{dst}.noise_strength", _scalar),
            _Rule(f"{src}.noise", f"{dst}.noise_const", _square_map),
            _Rule(f"{src}.bias", f"{dst}.bias"),
        ]
        if upsampling:
            rules.append(_Rule(f"{src}.filter.kernel", None, expected=_blur_kernel(gain=4.0)[None, None]))
    for b in range(len(config.resolutions)):
        src, dst = f"synthesis.output{b}", f"synthesis_net.to_rgbs.{b}"
        rules += [
            _Rule(f"{src}.weight", f"{dst}.weight"),
            _Rule(f"{src}.style.weight", f"{dst}.affine.weight"),
            _Rule(f"{src}.style.bias", f"{dst}.affine.bias", _add_one),
            _Rule(f"{src}.bias", f"{dst}.bias"),
        ]
    return rules


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` among the keys (0 if none match)."""
    indices = [int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key))]
    return max(indices) + 1 if indices else 0


def _dim(state: Mapping[str, Tensor], candidates: list[tuple[str, int]], what: str, source: str) -> int:
    """Size of axis ``axis`` of the first candidate key present, so one renamed tensor does not hide the rest."""
    for key, axis in candidates:
        if key in state and state[key].ndim > axis:
            return int(state[key].shape[axis])
    keys = ", ".join(key for key, _ in candidates)
    raise CheckpointError(f"{source}: cannot infer the {what}: missing keys: {keys}")


def _rosinality_config(state: Mapping[str, Tensor], source: str) -> StyleGAN2Config:
    mapping_layers = _count(state, r"style\.(\d+)\.(?:weight|bias)") - 1
    if mapping_layers < 1:
        raise CheckpointError(f"{source}: no mapping layers (style.1.weight ...) in a rosinality-layout generator")
    last = mapping_layers
    w_dim = _dim(state, [(f"style.{last}.weight", 0), (f"style.{last}.bias", 0)], "w size", source)
    z_dim = _dim(state, [("style.1.weight", 1)], "z size", source)
    blocks = _count(state, r"to_rgbs\.(\d+)\..*") + 1
    first_candidates = [("input.input", 1), ("conv1.activate.bias", 0), ("to_rgb1.conv.weight", 2)]
    channels = {4: _dim(state, first_candidates, "width at 4 px", source)}
    for b in range(1, blocks):
        candidates = [(f"convs.{2 * b - 2}.activate.bias", 0), (f"convs.{2 * b - 2}.conv.weight", 1),
                      (f"convs.{2 * b - 1}.activate.bias", 0), (f"to_rgbs.{b - 1}.conv.weight", 2)]
        channels[4 * 2**b] = _dim(state, candidates, f"width at {4 * 2**b} px", source)
    return StyleGAN2Config(4 * 2 ** (blocks - 1), z_dim, w_dim, mapping_layers, channels)


def _genforce_config(state: Mapping[str, Tensor], source: str) -> StyleGAN2Config:
    mapping_layers = _count(state, r"mapping\.dense(\d+)\.(?:weight|bias)")
    if mapping_layers < 1:
        raise CheckpointError(f"{source}: no mapping layers (mapping.dense0.weight ...) in a GenForce-layout generator")
    last = mapping_layers - 1
    w_candidates = [(f"mapping.dense{last}.weight", 0), (f"mapping.dense{last}.bias", 0), ("truncation.w_avg", 0)]
    w_dim = _dim(state, w_candidates, "w size", source)
    z_dim = _dim(state, [("mapping.dense0.weight", 1)], "z size", source)
    blocks = _count(state, r"synthesis\.output(\d+)\..*")
    if blocks < 1:
        raise CheckpointError(f"{source}: no toRGB layers (synthesis.output0.weight ...) in a GenForce-layout generator")
    channels = {}
    for b in range(blocks):
        candidates = [(f"synthesis.layer{2 * b}.bias", 0), (f"synthesis.layer{2 * b}.weight", 0),
                      (f"synthesis.output{b}.weight", 1)] + ([("synthesis.early_layer.const", 1)] if b == 0 else [])
        channels[4 * 2**b] = _dim(state, candidates, f"width at {4 * 2**b} px", source)
    return StyleGAN2Config(4 * 2 ** (blocks - 1), z_dim, w_dim, mapping_layers, channels)


def infer_config(state: Mapping[str, Tensor], layout: StateLayout, source: str) -> StyleGAN2Config:
    """The architecture a state dict holds, from its key names (depth) and tensor shapes (widths)."""
    if layout == "rosinality":
        return _rosinality_config(state, source)
    if layout == "genforce":
        return _genforce_config(state, source)
    raise ValueError(f"layout must be 'rosinality' or 'genforce', got {layout!r}")


def _convert(state: Mapping[str, Tensor], rules: list[_Rule], source: str) -> dict[str, Tensor]:
    """Rename and reshape per ``rules``, refusing absent or extra tensors (named as the file names them).

    The fixed resampling filters are optional (they hold no learned values) but must be the
    [1,3,3,1] filter when present.
    """
    known = {rule.source for rule in rules}
    missing = sorted(rule.source for rule in rules if rule.target is not None and rule.source not in state)
    unexpected = sorted(key for key in state if key not in known)
    if missing or unexpected:
        parts = ([f"missing keys: {', '.join(missing)}"] if missing else []) + (
            [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(f"{source}: not a StyleGAN2 generator of the inferred architecture; " + "; ".join(parts))
    converted = {}
    for rule in rules:
        if rule.source not in state:
            continue
        value = state[rule.source]
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: {rule.source} is a {type(value).__name__}, not a tensor")
        if rule.target is None:
            if value.shape != rule.expected.shape or not torch.allclose(value.float(), rule.expected, atol=1e-6):
                raise CheckpointError(f"{source}: {rule.source} is not the [1,3,3,1] resampling filter this generator uses")
            continue
        try:
            converted[rule.target] = rule.convert(value.detach().float())
        except (RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{source}: {rule.source} has an unusable shape {tuple(value.shape)} ({exc})") from exc
    return converted


def stylegan2_from_state_dict(
    state: Mapping[str, Tensor],
    layout: StateLayout,
    source: str,
    *,
    w_avg: Tensor | None = None,
) -> StyleGAN2Generator:
    """Build the generator a state dict describes (sizes read from key names and shapes) and load it.

    ``w_avg`` [w_dim] overrides the average w; without it, GenForce's ``truncation.w_avg`` is used,
    and a rosinality state (which has none) gets the seeded estimate. Returned on CPU, in eval mode,
    with frozen weights (gradients still flow to the W+ code).
    """
    config = infer_config(state, layout, source)
    rules = _rosinality_rules(config) if layout == "rosinality" else _genforce_rules(config)
    converted = _convert(state, rules, source)
    generator = StyleGAN2Generator(config)
    converted.setdefault("w_avg", torch.zeros(config.w_dim))  # rosinality keeps it outside the state: set below
    load_state_dict_strict(generator, converted, source)
    if w_avg is not None:
        w_avg = w_avg.detach().float().reshape(-1)
        if w_avg.shape != (config.w_dim,):
            raise CheckpointError(f"{source}: average w has {w_avg.numel()} values; the generator's w has {config.w_dim}")
        generator.w_avg.copy_(w_avg)
    elif layout == "rosinality":
        generator.w_avg.copy_(generator.estimate_w_avg())
    return generator.eval().requires_grad_(False)


def _detect_layout(checkpoint: Mapping, source: str) -> Literal["rosinality", "e4e", "genforce"]:
    if "g_ema" in checkpoint:
        return "rosinality"
    if isinstance(checkpoint.get("state_dict"), Mapping) and any(str(k).startswith("decoder.") for k in checkpoint["state_dict"]):
        return "e4e"
    if "generator_smooth" in checkpoint or "generator" in checkpoint:
        return "genforce"
    raise CheckpointError(
        f"{source}: not a known StyleGAN2 checkpoint (expected 'g_ema', e4e's 'state_dict' with decoder.*, "
        f"or GenForce's 'generator_smooth'); top-level keys: {', '.join(map(str, checkpoint))}"
    )


def _entry(checkpoint: Mapping, key: str, source: str) -> Mapping[str, Tensor]:
    value = checkpoint.get(key)
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{source}: expected a state dict under {key!r}; top-level keys: {', '.join(map(str, checkpoint))}")
    return value


def _average_row(latent_avg: object, source: str) -> Tensor | None:
    """The average w from a ``latent_avg`` of shape [w_dim], [1, w_dim] or e4e's [num_ws, w_dim] (row 0)."""
    if latent_avg is None:
        return None
    if not isinstance(latent_avg, Tensor) or latent_avg.ndim not in (1, 2):
        raise CheckpointError(f"{source}: latent_avg must be a [w_dim] or [num_ws, w_dim] tensor")
    return latent_avg[0] if latent_avg.ndim == 2 else latent_avg


def load_stylegan2(path: Path, layout: FileLayout = "auto") -> StyleGAN2Generator:
    """Load the generator from rosinality's, e4e's or GenForce's published file (layout read from its top-level keys).

    rosinality: ``g_ema`` (``g``, the non-averaged generator, is ignored) with ``latent_avg`` as w_avg.
    e4e: ``state_dict['decoder.*']`` with row 0 of ``latent_avg``. GenForce: ``generator_smooth``
    (falling back to ``generator``) with its ``truncation.w_avg``. Nothing in the file is executed.
    """
    source = str(path)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    if layout == "auto":
        layout = _detect_layout(checkpoint, source)
    if layout == "rosinality":
        w_avg = _average_row(checkpoint.get("latent_avg"), source)
        return stylegan2_from_state_dict(_entry(checkpoint, "g_ema", source), "rosinality", f"{source} (g_ema)", w_avg=w_avg)
    if layout == "e4e":
        decoder = sub_state_dict(_entry(checkpoint, "state_dict", source), "decoder.")
        w_avg = _average_row(checkpoint.get("latent_avg"), source)
        return stylegan2_from_state_dict(decoder, "rosinality", f"{source} (decoder.*)", w_avg=w_avg)
    if layout == "genforce":
        key = "generator_smooth" if "generator_smooth" in checkpoint else "generator"
        return stylegan2_from_state_dict(_entry(checkpoint, key, source), "genforce", f"{source} ({key})")
    raise ValueError(f"layout must be 'auto', 'rosinality', 'e4e' or 'genforce', got {layout!r}")
