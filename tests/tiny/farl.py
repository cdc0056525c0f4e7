"""A tiny FaRL checkpoint in the published file layout, written at test time.

``FaRL-Base-Patch16-LAIONFace20M-ep64.pth`` is ``{"state_dict": {...}}`` holding a whole CLIP
model: the image tower under ``visual.`` (CLIP's VisionTransformer names), the text tower at the
top level, and FaRL's masked-image-modelling head under ``visual.``. Key names are spelled out
here from that layout rather than taken from our module, so a naming mistake in the loader fails
the tests. ``seed=None`` gives shape-only meta tensors, cheap enough for the full ViT-B/16 layout.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

TINY_WIDTH = 128  # two attention heads of 64, as CLIP derives heads from width
TINY_LAYERS = 2
TINY_PATCH = 16
TINY_GRID = 4  # 64 px input, 1 + 16 tokens
TINY_EMBED = 32
TEXT_WIDTH = 32
# CLIP's BPE vocabulary size: the real tokenizer's ids must all exist in the tiny embedding table.
TEXT_VOCAB = 49408
TEXT_CONTEXT = 16  # enough for the parts method's prompts; the tokenizer truncates to the model's context


def _tensor(generator: torch.Generator | None, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    if generator is None:
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=generator) * std + mean


def _layer_norm(prefix: str, width: int, g: torch.Generator | None) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _tensor(g, width, std=0.1, mean=1.0), f"{prefix}.bias": _tensor(g, width, std=0.1)}


def _resblocks(prefix: str, width: int, layers: int, g: torch.Generator | None) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for i in range(layers):
        block = f"{prefix}.resblocks.{i}"
        state[f"{block}.attn.in_proj_weight"] = _tensor(g, 3 * width, width, std=width**-0.5)
        state[f"{block}.attn.in_proj_bias"] = _tensor(g, 3 * width, std=0.02)
        state[f"{block}.attn.out_proj.weight"] = _tensor(g, width, width, std=width**-0.5)
        state[f"{block}.attn.out_proj.bias"] = _tensor(g, width, std=0.02)
        state.update(_layer_norm(f"{block}.ln_1", width, g))
        state[f"{block}.mlp.c_fc.weight"] = _tensor(g, 4 * width, width, std=width**-0.5)
        state[f"{block}.mlp.c_fc.bias"] = _tensor(g, 4 * width, std=0.02)
        state[f"{block}.mlp.c_proj.weight"] = _tensor(g, width, 4 * width, std=(4 * width) ** -0.5)
        state[f"{block}.mlp.c_proj.bias"] = _tensor(g, width, std=0.02)
        state.update(_layer_norm(f"{block}.ln_2", width, g))
    return state


def farl_state_dict(
    seed: int | None = 0,
    width: int = TINY_WIDTH,
    layers: int = TINY_LAYERS,
    patch: int = TINY_PATCH,
    grid: int = TINY_GRID,
    embed_dim: int = TINY_EMBED,
) -> dict[str, torch.Tensor]:
    """A full CLIP/FaRL state dict: visual tower, MIM head leftovers and a one-block text tower."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    scale = width**-0.5
    visual = {
        "conv1.weight": _tensor(g, width, 3, patch, patch, std=1.0 / math.sqrt(3 * patch * patch)),
        "class_embedding": _tensor(g, width, std=scale),
        "positional_embedding": _tensor(g, grid * grid + 1, width, std=scale),
        "proj": _tensor(g, width, embed_dim, std=scale),
        **_layer_norm("ln_pre", width, g),
        **_resblocks("transformer", width, layers, g),
        **_layer_norm("ln_post", width, g),
        # FaRL's masked-image-modelling head, present in pre-training checkpoints, unused for features
        "mask_token": _tensor(g, width, std=scale),
        **_layer_norm("ln_lm", width, g),
        "lm_head.weight": _tensor(g, 8, width, std=scale),
        "lm_head.bias": _tensor(g, 8, std=0.02),
    }
    text = {
        "positional_embedding": _tensor(g, TEXT_CONTEXT, TEXT_WIDTH, std=0.01),
        "token_embedding.weight": _tensor(g, TEXT_VOCAB, TEXT_WIDTH, std=0.02),
        **_resblocks("transformer", TEXT_WIDTH, 1, g),
        **_layer_norm("ln_final", TEXT_WIDTH, g),
        "text_projection": _tensor(g, TEXT_WIDTH, embed_dim, std=TEXT_WIDTH**-0.5),
        "logit_scale": _tensor(g, std=0.0, mean=math.log(1 / 0.07)),
    }
    return {**{f"visual.{key}": value for key, value in visual.items()}, **text}


def write_tiny_farl(path: Path, seed: int = 0) -> Path:
    """Save a 2-layer, 128-wide FaRL checkpoint (64 px input) the way FaRL ships its files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": farl_state_dict(seed)}, path)
    return path
