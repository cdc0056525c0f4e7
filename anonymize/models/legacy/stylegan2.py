"""StyleGAN2 generators from the three published conversions, as :class:`StyleGAN2Generator` state dicts.

The official NVlabs FFHQ weights reach us converted three ways: rosinality's
``stylegan2-ffhq-config-f.pt``, the ``decoder.*`` inside e4e's ``e4e_ffhq_encode.pt`` (rosinality's
layout again), and GenForce's ``stylegan2_ffhq1024.pth`` (used by the FALCO reference). They store the
same numbers under different names and in different forms, so each layout's rules below map keys AND
values onto the internal conventions documented in :mod:`anonymize.models.stylegan2`; widths, depth
and resolution are read from the checkpoint.

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

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, sub_state_dict
from anonymize.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator, blur_kernel

StateLayout = Literal["rosinality", "genforce"]
FileLayout = Literal["auto", "rosinality", "e4e", "genforce"]


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
    filter_kernel = blur_kernel(gain=4.0)
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
        _Rule("synthesis.upsample.kernel", None, expected=blur_kernel(gain=4.0)[None, None]),
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
            rules.append(_Rule(f"{src}.filter.kernel", None, expected=blur_kernel(gain=4.0)[None, None]))
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


def load_genforce_generator(path: Path) -> StyleGAN2Generator:
    """GenForce's ``stylegan2_ffhq1024.pth`` (FALCO's generator), read without sniffing the layout, as the registry loads it."""
    return load_stylegan2(path, layout="genforce")
