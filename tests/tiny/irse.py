"""Tiny ArcFace IR-SE and e4e checkpoints in the published file layouts, written at test time.

Key names are spelled out here from the reference layouts (InsightFace ``Backbone``, e4e's
``Encoder4Editing`` inside pSp) rather than taken from our own modules' ``state_dict()``, so a naming
or nesting mistake in the loaders makes the tests fail. Passing ``seed=None`` to the state builders
gives shape-only tensors on the meta device, cheap enough to lay out the full-size networks.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from tests.tiny.stylegan2 import tiny_generator_state, tiny_w_avg

TINY_WIDTHS = (16, 32, 48, 64)
TINY_UNITS = (1, 2, 1, 1)
TINY_EMBEDDING = 16
ARCFACE_FINAL_SIDE = 7  # 112 px input over 4 stride-2 stages, as the real network
TINY_COARSE_CONVS = 2  # c3 is 4 x 4, so the tiny encoder reads 4 * 2^4 = 64 px images


class _Tensors:
    """Random tensors from one seed, or empty meta tensors when only shapes matter."""

    def __init__(self, seed: int | None) -> None:
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def normal(self, *shape: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        if self.generator is None:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=self.generator) * std + mean

    def uniform(self, *shape: int, low: float, high: float) -> torch.Tensor:
        if self.generator is None:
            return torch.empty(shape, device="meta")
        return torch.rand(shape, generator=self.generator) * (high - low) + low

    def conv(self, out_channels: int, in_channels: int, kernel: int) -> torch.Tensor:
        return self.normal(out_channels, in_channels, kernel, kernel, std=1.0 / math.sqrt(in_channels * kernel * kernel))

    def counter(self) -> torch.Tensor:
        return torch.tensor(0, dtype=torch.long, device="meta" if self.generator is None else "cpu")


def _batchnorm(prefix: str, channels: int, t: _Tensors, affine: bool = True) -> dict[str, torch.Tensor]:
    state = {}
    if affine:
        state[prefix + "weight"] = t.normal(channels, mean=1.0, std=0.1)
        state[prefix + "bias"] = t.normal(channels, std=0.1)
    state[prefix + "running_mean"] = t.normal(channels, std=0.1)
    state[prefix + "running_var"] = t.uniform(channels, low=0.5, high=1.5)
    state[prefix + "num_batches_tracked"] = t.counter()
    return state


def irse_trunk_state(widths: Sequence[int], units: Sequence[int], t: _Tensors, prefix: str = "") -> dict[str, torch.Tensor]:
    """``input_layer.*`` and ``body.N.*`` of an IR-SE trunk whose stage s has ``units[s]`` units of ``widths[s]`` channels."""
    state: dict[str, torch.Tensor] = {}
    stem = widths[0]
    state[prefix + "input_layer.0.weight"] = t.conv(stem, 3, 3)
    state.update(_batchnorm(prefix + "input_layer.1.", stem, t))
    state[prefix + "input_layer.2.weight"] = t.normal(stem, mean=0.25, std=0.02)
    index = 0
    in_channels = stem
    for depth, count in zip(widths, units):
        for _ in range(count):
            unit = f"{prefix}body.{index}."
            if in_channels != depth:
                state[unit + "shortcut_layer.0.weight"] = t.conv(depth, in_channels, 1)
                state.update(_batchnorm(unit + "shortcut_layer.1.", depth, t))
            state.update(_batchnorm(unit + "res_layer.0.", in_channels, t))
            state[unit + "res_layer.1.weight"] = t.conv(depth, in_channels, 3)
            state[unit + "res_layer.2.weight"] = t.normal(depth, mean=0.25, std=0.02)
            state[unit + "res_layer.3.weight"] = t.conv(depth, depth, 3)
            state.update(_batchnorm(unit + "res_layer.4.", depth, t))
            state[unit + "res_layer.5.fc1.weight"] = t.conv(depth // 16, depth, 1)
            state[unit + "res_layer.5.fc2.weight"] = t.conv(depth, depth // 16, 1)
            in_channels = depth
            index += 1
    return state


def arcface_state(
    widths: Sequence[int] = TINY_WIDTHS,
    units: Sequence[int] = TINY_UNITS,
    embedding_dim: int = TINY_EMBEDDING,
    seed: int | None = 0,
) -> OrderedDict[str, torch.Tensor]:
    """The bare state dict of InsightFace ``Backbone(mode='ir_se')`` at the given size."""
    t = _Tensors(seed)
    state = irse_trunk_state(widths, units, t)
    top = widths[-1]
    state.update(_batchnorm("output_layer.0.", top, t))
    state["output_layer.3.weight"] = t.normal(embedding_dim, top * ARCFACE_FINAL_SIDE**2, std=1.0 / math.sqrt(top * ARCFACE_FINAL_SIDE**2))
    state["output_layer.3.bias"] = t.normal(embedding_dim, std=0.01)
    state.update(_batchnorm("output_layer.4.", embedding_dim, t))
    return OrderedDict(state)


def e4e_encoder_state(
    widths: Sequence[int] = TINY_WIDTHS,
    units: Sequence[int] = TINY_UNITS,
    w_dim: int = 32,
    num_ws: int = 8,
    coarse_convs: int = TINY_COARSE_CONVS,
    seed: int | None = 0,
    prefix: str = "encoder.",
) -> dict[str, torch.Tensor]:
    """``encoder.*`` of pSp wrapping ``Encoder4Editing`` (IR-SE trunk, styles, latlayer1/2)."""
    t = _Tensors(seed)
    state = irse_trunk_state(widths, units, t, prefix)
    top = widths[-1]
    for index in range(num_ws):
        level = 0 if index < 3 else 1 if index < 7 else 2
        block = f"{prefix}styles.{index}."
        for conv in range(coarse_convs + level):
            in_channels = top if conv == 0 else w_dim
            state[f"{block}convs.{2 * conv}.weight"] = t.conv(w_dim, in_channels, 3)
            state[f"{block}convs.{2 * conv}.bias"] = t.normal(w_dim, std=0.01)
        state[block + "linear.weight"] = t.normal(w_dim, w_dim, std=0.1)
        state[block + "linear.bias"] = t.normal(w_dim, std=0.01)
    state[prefix + "latlayer1.weight"] = t.conv(top, widths[-2], 1)
    state[prefix + "latlayer1.bias"] = t.normal(top, std=0.01)
    state[prefix + "latlayer2.weight"] = t.conv(top, widths[-3], 1)
    state[prefix + "latlayer2.bias"] = t.normal(top, std=0.01)
    return state


def write_tiny_arcface(path: Path, seed: int = 0) -> Path:
    """A tiny ``model_ir_se50.pth``: a bare state dict, 112 px input, 16-d embedding."""
    torch.save(arcface_state(seed=seed), path)
    return path


def e4e_options(resolution: int) -> dict[str, object]:
    """A representative subset of what e4e's coach saves as ``vars(opts)``."""
    return {
        "exp_dir": "experiment/ffhq_encode",
        "dataset_type": "ffhq_encode",
        "encoder_type": "Encoder4Editing",
        "batch_size": 8,
        "start_from_latent_avg": True,
        "stylegan_size": resolution,
        "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt",
        "checkpoint_path": None,
        "progressive_steps": [0, 20000, 22000, 24000],
        "lpips_lambda": 0.8,
        "id_lambda": 0.5,
        "w_discriminator_lambda": 0.1,
        "learning_rate": 0.0001,
    }


def write_tiny_e4e(path: Path, seed: int = 0, resolution: int = 32, opts_as_namespace: bool = False) -> Path:
    """A tiny ``e4e_ffhq_encode.pt``: ``state_dict`` (encoder.* + decoder.*), ``latent_avg``, ``opts``.

    e4e writes ``opts`` as a plain dict; ``opts_as_namespace`` writes the argparse.Namespace some
    re-saved copies carry.
    """
    decoder = tiny_generator_state("rosinality", resolution=resolution, seed=seed)
    w_dim = int(decoder["style.1.weight"].shape[0])  # rosinality mapping: style.0 is PixelNorm
    num_ws = 2 * int(math.log2(resolution)) - 2
    state: OrderedDict[str, torch.Tensor] = OrderedDict(e4e_encoder_state(w_dim=w_dim, num_ws=num_ws, seed=seed))
    state.update((f"decoder.{key}", value) for key, value in decoder.items())
    average = tiny_w_avg(resolution, seed)
    options = e4e_options(resolution)
    torch.save(
        {
            "state_dict": state,
            "opts": argparse.Namespace(**options) if opts_as_namespace else options,
            "latent_avg": average.repeat(num_ws, 1),  # e4e repeats the generator's mean W per layer
        },
        path,
    )
    return path
