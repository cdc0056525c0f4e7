"""Tiny StyleGAN2 generators in the published checkpoint layouts, written at test time.

Every layout starts from one set of random variables named and shaped as in NVlabs' TensorFlow
StyleGAN2 (``G_mapping/Dense0/weight`` ...), the common source of all published conversions, and
is then written out the way that layout's converter does it: rosinality transposes, flips the
upsampling kernels and folds the +1 into the style biases; GenForce only transposes. Key names and
value changes are spelled out here, never taken from our module's ``state_dict()``, so a mapping
mistake in the loader makes the cross-layout tests fail. ``seed=None`` gives shape-only tensors
on the meta device, cheap enough to lay out the full-size 1024 px network.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch

TINY_RESOLUTION = 32
TINY_W_DIM = 32
TINY_MAPPING_LAYERS = 2
TINY_CHANNEL_BASE = 512  # widths 32, 32, 32, 16 at 4, 8, 16, 32 px
TINY_CHANNEL_MAX = 32
MAPPING_LR_MULTIPLIER = 0.01


def tiny_channels(
    resolution: int = TINY_RESOLUTION, channel_base: int = TINY_CHANNEL_BASE, channel_max: int = TINY_CHANNEL_MAX
) -> dict[int, int]:
    """Feature maps per resolution, by the config-f rule ``min(channel_base // res, channel_max)``."""
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(resolution)) + 1)}


def _normal(generator: torch.Generator | None, *shape: int, std: float = 1.0) -> torch.Tensor:
    if generator is None:
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=generator) * std


def tiny_tf_variables(
    resolution: int = TINY_RESOLUTION,
    seed: int | None = 0,
    *,
    w_dim: int = TINY_W_DIM,
    mapping_layers: int = TINY_MAPPING_LAYERS,
    channel_base: int = TINY_CHANNEL_BASE,
    channel_max: int = TINY_CHANNEL_MAX,
) -> dict[str, torch.Tensor]:
    """Random generator variables under their TensorFlow names and shapes (the NVlabs original).

    Dense weights are [in, out], conv weights [kh, kw, in, out], style (mod) weights [w_dim, in];
    the mod biases are stored without the +1 TF adds at run time. Values are drawn so every part
    of the network visibly matters (non-zero noise strengths and style biases).
    """
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    channels = tiny_channels(resolution, channel_base, channel_max)
    tf: dict[str, torch.Tensor] = {}
    for i in range(mapping_layers):
        # Raw values are 1/lr_mul larger, as trained mapping weights are: the run-time scale brings them back.
        tf[f"G_mapping/Dense{i}/weight"] = _normal(g, w_dim, w_dim, std=1.0 / MAPPING_LR_MULTIPLIER)
        tf[f"G_mapping/Dense{i}/bias"] = _normal(g, w_dim, std=0.1 / MAPPING_LR_MULTIPLIER)
    tf["G_synthesis/4x4/Const/const"] = _normal(g, 1, channels[4], 4, 4)

    def modconv(name: str, kernel: int, in_channels: int, out_channels: int, noise: bool) -> None:
        tf[f"{name}/weight"] = _normal(g, kernel, kernel, in_channels, out_channels)
        tf[f"{name}/mod_weight"] = _normal(g, w_dim, in_channels)
        tf[f"{name}/mod_bias"] = _normal(g, in_channels, std=0.1)
        if noise:
            tf[f"{name}/noise_strength"] = _normal(g, std=0.2)
        tf[f"{name}/bias"] = _normal(g, out_channels, std=0.1)

    for res, width in channels.items():
        if res == 4:
            modconv("G_synthesis/4x4/Conv", 3, width, width, noise=True)
        else:
            modconv(f"G_synthesis/{res}x{res}/Conv0_up", 3, channels[res // 2], width, noise=True)
            modconv(f"G_synthesis/{res}x{res}/Conv1", 3, width, width, noise=True)
        modconv(f"G_synthesis/{res}x{res}/ToRGB", 1, width, 3, noise=False)
    for k in range(2 * len(channels) - 1):
        side = 2 ** ((k + 5) // 2)
        tf[f"G_synthesis/noise{k}"] = _normal(g, 1, 1, side, side)
    tf["dlatent_avg"] = _normal(g, w_dim, std=0.5)
    return tf


def _resample_filter() -> torch.Tensor:
    """The stored [1,3,3,1] filter both converters keep as a buffer: outer product, sum 1, times 4."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(taps, taps) / 64.0 * 4.0


def _conv_to_torch(weight: torch.Tensor) -> torch.Tensor:
    """TF [kh, kw, in, out] -> PyTorch [out, in, kh, kw]."""
    return weight.permute(3, 2, 0, 1)


def _rosinality_state(tf: dict[str, torch.Tensor], resolution: int, mapping_layers: int) -> dict[str, torch.Tensor]:
    """As rosinality's ``convert_weight.py`` fills ``Generator.state_dict()``."""
    state: dict[str, torch.Tensor] = {}
    for i in range(mapping_layers):
        state[f"style.{i + 1}.weight"] = tf[f"G_mapping/Dense{i}/weight"].t()
        state[f"style.{i + 1}.bias"] = tf[f"G_mapping/Dense{i}/bias"]
    state["input.input"] = tf["G_synthesis/4x4/Const/const"]

    def modconv(name: str, prefix: str, flip: bool) -> None:
        weight = _conv_to_torch(tf[f"{name}/weight"]).unsqueeze(0)
        state[f"{prefix}.conv.weight"] = weight.flip([3, 4]) if flip else weight
        state[f"{prefix}.conv.modulation.weight"] = tf[f"{name}/mod_weight"].t()
        state[f"{prefix}.conv.modulation.bias"] = tf[f"{name}/mod_bias"] + 1
        if flip:
            state[f"{prefix}.conv.blur.kernel"] = _resample_filter()
        state[f"{prefix}.noise.weight"] = tf[f"{name}/noise_strength"].reshape(1)
        state[f"{prefix}.activate.bias"] = tf[f"{name}/bias"]

    def to_rgb(name: str, prefix: str, upsample: bool) -> None:
        if upsample:
            state[f"{prefix}.upsample.kernel"] = _resample_filter()
        state[f"{prefix}.conv.weight"] = _conv_to_torch(tf[f"{name}/weight"]).unsqueeze(0)
        state[f"{prefix}.conv.modulation.weight"] = tf[f"{name}/mod_weight"].t()
        state[f"{prefix}.conv.modulation.bias"] = tf[f"{name}/mod_bias"] + 1
        state[f"{prefix}.bias"] = tf[f"{name}/bias"].reshape(1, 3, 1, 1)

    modconv("G_synthesis/4x4/Conv", "conv1", flip=False)
    to_rgb("G_synthesis/4x4/ToRGB", "to_rgb1", upsample=False)
    for i in range(int(math.log2(resolution)) - 2):
        res = 8 * 2**i
        modconv(f"G_synthesis/{res}x{res}/Conv0_up", f"convs.{2 * i}", flip=True)
        modconv(f"G_synthesis/{res}x{res}/Conv1", f"convs.{2 * i + 1}", flip=False)
    for i in range(int(math.log2(resolution)) - 2):
        res = 8 * 2**i
        to_rgb(f"G_synthesis/{res}x{res}/ToRGB", f"to_rgbs.{i}", upsample=True)
    for k in range(2 * int(math.log2(resolution)) - 3):
        state[f"noises.noise_{k}"] = tf[f"G_synthesis/noise{k}"]
    return state


def _genforce_state(tf: dict[str, torch.Tensor], resolution: int, mapping_layers: int) -> dict[str, torch.Tensor]:
    """As GenForce's ``stylegan2_converter.py`` fills its ``StyleGAN2Generator.state_dict()`` (skip architecture)."""
    state: dict[str, torch.Tensor] = {}
    for i in range(mapping_layers):
        state[f"mapping.dense{i}.weight"] = tf[f"G_mapping/Dense{i}/weight"].t()
        state[f"mapping.dense{i}.bias"] = tf[f"G_mapping/Dense{i}/bias"]
    state["truncation.w_avg"] = tf["dlatent_avg"]
    state["synthesis.early_layer.const"] = tf["G_synthesis/4x4/Const/const"]

    def layer(name: str, prefix: str, noise_index: int | None, upsample: bool) -> None:
        state[f"{prefix}.weight"] = _conv_to_torch(tf[f"{name}/weight"])  # TF orientation, no flip
        state[f"{prefix}.bias"] = tf[f"{name}/bias"]
        if noise_index is not None:
            state[f"{prefix}.noise_strength"] = tf[f"{name}/noise_strength"]  # a 0-d tensor
            state[f"{prefix}.noise"] = tf[f"G_synthesis/noise{noise_index}"]
        state[f"{prefix}.style.weight"] = tf[f"{name}/mod_weight"].t()
        state[f"{prefix}.style.bias"] = tf[f"{name}/mod_bias"]  # GenForce adds the 1 at run time
        if upsample:
            state[f"{prefix}.filter.kernel"] = _resample_filter()[None, None]

    for block in range(int(math.log2(resolution)) - 1):
        res = 4 * 2**block
        if block == 0:
            layer("G_synthesis/4x4/Conv", "synthesis.layer0", 0, upsample=False)
        else:
            layer(f"G_synthesis/{res}x{res}/Conv0_up", f"synthesis.layer{2 * block - 1}", 2 * block - 1, upsample=True)
            layer(f"G_synthesis/{res}x{res}/Conv1", f"synthesis.layer{2 * block}", 2 * block, upsample=False)
        layer(f"G_synthesis/{res}x{res}/ToRGB", f"synthesis.output{block}", None, upsample=False)
    state["synthesis.upsample.kernel"] = _resample_filter()[None, None]
    return state


def tiny_generator_state(
    layout: Literal["rosinality", "genforce"],
    resolution: int = TINY_RESOLUTION,
    seed: int | None = 0,
    *,
    w_dim: int = TINY_W_DIM,
    mapping_layers: int = TINY_MAPPING_LAYERS,
    channel_base: int = TINY_CHANNEL_BASE,
    channel_max: int = TINY_CHANNEL_MAX,
) -> dict[str, torch.Tensor]:
    """A generator state dict in ``layout``; the same seed gives the same network in every layout."""
    sizes = dict(w_dim=w_dim, mapping_layers=mapping_layers, channel_base=channel_base, channel_max=channel_max)
    tf = tiny_tf_variables(resolution, seed, **sizes)
    if layout == "rosinality":
        return _rosinality_state(tf, resolution, mapping_layers)
    if layout == "genforce":
        return _genforce_state(tf, resolution, mapping_layers)
    raise ValueError(f"unknown layout {layout!r}")


def tiny_w_avg(resolution: int = TINY_RESOLUTION, seed: int = 0) -> torch.Tensor:
    """The average w (TF ``dlatent_avg``) stored with the seed's generator: [w_dim]."""
    return tiny_tf_variables(resolution, seed)["dlatent_avg"]


def write_tiny_rosinality(path: Path, resolution: int = TINY_RESOLUTION, seed: int = 0, with_latent_avg: bool = True) -> Path:
    """A tiny ``stylegan2-ffhq-config-f.pt``: ``g_ema``, ``g`` (other weights, never to be loaded), ``latent_avg``."""
    checkpoint: dict[str, object] = {
        "g_ema": tiny_generator_state("rosinality", resolution, seed),
        "g": tiny_generator_state("rosinality", resolution, seed + 1),
    }
    if with_latent_avg:
        checkpoint["latent_avg"] = tiny_w_avg(resolution, seed)
    torch.save(checkpoint, path)
    return path


def write_tiny_genforce(path: Path, resolution: int = TINY_RESOLUTION, seed: int = 0) -> Path:
    """A tiny ``stylegan2_ffhq1024.pth``: ``generator`` (other weights) and ``generator_smooth`` (the one to load).

    The real file also holds a ``discriminator`` entry, which no loader here reads.
    """
    torch.save(
        {
            "generator": tiny_generator_state("genforce", resolution, seed + 1),
            "generator_smooth": tiny_generator_state("genforce", resolution, seed),
        },
        path,
    )
    return path
