"""e4e's training checkpoint ``e4e_ffhq_encode.pt`` as an :class:`E4EEncoder` and its StyleGAN2 decoder.

The file (written by e4e's training coach) is a dict:

``state_dict``
    the whole pSp-style network: ``encoder.*`` (:class:`E4EEncoder`) and ``decoder.*`` (a StyleGAN2 generator
    in rosinality's layout, converted by :func:`anonymize.models.legacy.stylegan2.stylegan2_from_state_dict`).
``latent_avg``
    the average W the codes are offsets from; [num_ws, w_dim] when the network was trained from a
    StyleGAN checkpoint (e4e repeats the generator's [w_dim] average per layer), [w_dim] accepted too.
``opts``
    the training options: e4e saves ``vars(opts)`` (a plain dict), some re-saves an
    ``argparse.Namespace``; both load under ``weights_only``. Used only for consistency checks
    (``encoder_type`` must be Encoder4Editing, ``stylegan_size`` must match the generator).

Keys under ``encoder.``:

* ``input_layer.*`` / ``body.N.*``: the IR-SE50 trunk (layout read by :mod:`anonymize.models.legacy.irse`).
* ``styles.i.convs.{0,2,4,..}.weight|bias``: map-to-style block i's convolutions (the odd indices are
  the LeakyReLUs), then ``styles.i.linear.weight|bias``.
* ``latlayer1.*`` / ``latlayer2.*``: the lateral 1x1 convolutions.

Sizes are read from the tensors: num_ws from the number of style blocks, w_dim from their linear
layers, and the encoder's input side from style 0's convolution count (see :mod:`anonymize.models.e4e`).
The middle and fine blocks must then have one and two more convolutions; anything else is refused.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, sub_state_dict
from anonymize.models.e4e import E4EEncoder, pyramid_level
from anonymize.models.legacy.irse import infer_block_specs, with_batchnorm_counters
from anonymize.models.legacy.stylegan2 import stylegan2_from_state_dict
from anonymize.models.stylegan2 import StyleGAN2Generator

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
        if count != coarse_convs + pyramid_level(index):
            raise CheckpointError(
                f"{source}: styles.{index} has {count} convolutions; the pyramid needs {coarse_convs + pyramid_level(index)}"
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
