"""StyleGAN2 config-f generator in plain PyTorch: the network only (tensor shapes below).

FALCO inverts faces into W+ with e4e, searches fake faces made by a StyleGAN2 generator, and
optimises W+ codes through it. The official NVlabs FFHQ weights reach us converted three ways
(rosinality's, e4e's ``decoder.*`` and GenForce's files); :mod:`anonymize.models.legacy.stylegan2`
maps each onto this one module, so one set of weights renders the same image whichever file it came
from. The images it gives follow the ``genforce`` entry of :mod:`anonymize.models.registry`.

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

Internal weight conventions (what the legacy converters produce): every weight is stored raw and
scaled at run time (equalized learning rate), the affine biases include the +1, and the weight of
an upsampling conv is stored spatially flipped relative to the TensorFlow original, ready for
``conv_transpose2d`` after swapping its in/out axes (the orientation rosinality and NVlabs'
PyTorch port use). ``noise_const`` holds the fixed noise map of each conv layer for reproducible
images (``noise_mode="const"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anonymize.models.images import CanonicalImages

NoiseMode = Literal["const", "random", "none"]

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


def blur_kernel(gain: float) -> Tensor:
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
        self.register_buffer("blur", blur_kernel(gain=4.0), persistent=False)

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
