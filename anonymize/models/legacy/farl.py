"""FaRL's checkpoint (``FaRL-Base-Patch16-LAIONFace20M-ep64.pth``) as :class:`FaRLEncoder` and :class:`FaRLTextEncoder`.

The file is a dict whose ``state_dict`` holds the whole CLIP model. The image tower lives under
``visual.``; everything else (text transformer, token embedding, ``text_projection``, ``logit_scale``)
is the text tower, loaded by :func:`load_farl_text` (every key checked). The image loader ignores the
masked-image-modelling head weights FaRL pre-training may leave behind under ``visual.``
(``mask_token``, ``lm_transformer.*``, ``ln_lm.*``, ``lm_head.*``). Below ``visual.`` the names are
CLIP's, as :mod:`anonymize.models.farl` names its modules.

Width, patch size, grid, depth and embedding size are read off the shapes, so a narrow two-layer test
checkpoint loads through the same code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TypeVar

import torch

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, sub_state_dict
from anonymize.models.farl import FaRLEncoder, FaRLTextEncoder, TextConfig, VisionConfig

EncoderT = TypeVar("EncoderT", bound=torch.nn.Module)

VISUAL_PREFIX = "visual."
# FaRL's masked-image-modelling head: trained alongside the encoder, never used for features.
UNUSED_VISUAL_PREFIXES = ("mask_token", "lm_transformer.", "ln_lm.", "lm_head.")
_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


def infer_vision_config(state: dict[str, torch.Tensor], source: str) -> VisionConfig:
    """Read the tower's dimensions off the (``visual.``-stripped) weights."""
    for key in ("conv1.weight", "positional_embedding", "proj"):
        if key not in state:
            raise CheckpointError(f"{source}: no '{VISUAL_PREFIX}{key}' in the state dict; not a CLIP/FaRL ViT checkpoint")
    conv = state["conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(f"{source}: '{VISUAL_PREFIX}conv1.weight' has shape {tuple(conv.shape)}, expected [width, 3, p, p]")
    width, patch = int(conv.shape[0]), int(conv.shape[2])
    tokens = int(state["positional_embedding"].shape[0])
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise CheckpointError(f"{source}: positional embedding has {tokens} rows, not 1 + a square number of patches")
    blocks = sorted(int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key)))
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{source}: transformer blocks under '{VISUAL_PREFIX}transformer.resblocks.' are missing or not numbered 0..N-1")
    return VisionConfig(width=width, layers=len(blocks), patch_size=patch, grid=grid, embed_dim=int(state["proj"].shape[1]))


def visual_state_dict(checkpoint: object, source: str) -> dict[str, torch.Tensor]:
    """The image-tower weights of a FaRL/CLIP checkpoint, prefix removed, unused heads dropped."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        full = checkpoint["state_dict"]
    elif isinstance(checkpoint, dict) and f"{VISUAL_PREFIX}conv1.weight" in checkpoint:
        full = checkpoint
    else:
        raise CheckpointError(f"{source}: expected a dict with a 'state_dict' holding '{VISUAL_PREFIX}*' weights (FaRL layout)")
    visual = sub_state_dict(full, VISUAL_PREFIX)
    if not visual:
        raise CheckpointError(f"{source}: the state dict has no '{VISUAL_PREFIX}*' keys; not a FaRL/CLIP checkpoint")
    return {key: value for key, value in visual.items() if not key.startswith(UNUSED_VISUAL_PREFIXES)}


def load_farl(path: Path) -> FaRLEncoder:
    """Build the encoder that matches the file and load it strictly, frozen, in eval mode."""
    source = str(path)
    state = visual_state_dict(load_checkpoint(path), source)
    return _frozen(FaRLEncoder(infer_vision_config(state, source)), state, source)


def _frozen(encoder: EncoderT, state: dict[str, torch.Tensor], source: str) -> EncoderT:
    """``encoder`` with exactly ``state`` loaded (every key, no other), no gradients, in eval mode."""
    load_state_dict_strict(encoder, state, source)
    encoder.requires_grad_(False)
    return encoder.eval()


_TEXT_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


def text_state_dict(checkpoint: object, source: str) -> dict[str, torch.Tensor]:
    """Every key of a FaRL/CLIP checkpoint outside ``visual.``: the text tower, all of it."""
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        raise CheckpointError(f"{source}: expected a dict with a 'state_dict' (FaRL layout)")
    text = {key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(VISUAL_PREFIX)}
    for key in ("token_embedding.weight", "positional_embedding", "text_projection"):
        if key not in text:
            raise CheckpointError(f"{source}: no '{key}' in the state dict; the checkpoint has no CLIP text tower")
    return text


def infer_text_config(state: dict[str, torch.Tensor], source: str) -> TextConfig:
    """Read the text tower's dimensions off its weights (context length from the positions)."""
    vocab, width = (int(n) for n in state["token_embedding.weight"].shape)
    blocks = sorted(int(m.group(1)) for key in state if (m := _TEXT_BLOCK_KEY.match(key)))
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{source}: text transformer blocks under 'transformer.resblocks.' are missing or not numbered 0..N-1")
    return TextConfig(width=width, layers=len(blocks), context_length=int(state["positional_embedding"].shape[0]),
                      vocab_size=vocab, embed_dim=int(state["text_projection"].shape[1]))


def load_farl_text(path: Path) -> FaRLTextEncoder:
    """FaRL's text tower from the same file as the image tower, strictly (every non-visual key), frozen."""
    source = str(path)
    state = text_state_dict(load_checkpoint(path), source)
    return _frozen(FaRLTextEncoder(infer_text_config(state, source)), state, source)
