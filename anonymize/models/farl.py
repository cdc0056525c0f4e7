"""FaRL image encoder: the CLIP ViT-B/16 visual tower with FaRL's face-pretrained weights.

FALCO uses FaRL twice: the projected CLS embedding pairs each real face with its nearest fake
face, and the per-token features of the last transformer block (before the final layer norm) feed
the attribute-preservation L1 loss. Both come out of one forward pass here.

Checkpoint layout (``FaRL-Base-Patch16-LAIONFace20M-ep64.pth``): a dict whose ``state_dict``
holds the whole CLIP model. The image tower lives under ``visual.``; everything else (text
transformer, token embedding, ``text_projection``, ``logit_scale``) is ignored, as are the
masked-image-modelling head weights FaRL pre-training may leave behind under ``visual.``
(``mask_token``, ``lm_transformer.*``, ``ln_lm.*``, ``lm_head.*``). Below ``visual.`` the names
are CLIP's, and this module mirrors them one to one so the strict loader can check every key:

- ``conv1.weight`` [width, 3, patch, patch], no bias: the patch embedding;
- ``class_embedding`` [width] and ``positional_embedding`` [1 + grid², width];
- ``ln_pre`` / ``ln_post``: layer norms before the transformer and on the CLS token after it;
- ``transformer.resblocks.<i>.{ln_1, attn, ln_2, mlp}``: pre-norm residual blocks, where
  ``attn.in_proj_weight`` [3·width, width] / ``attn.in_proj_bias`` stack the query, key and value
  projections (in that order), ``attn.out_proj`` is a linear layer, and ``mlp.c_fc`` /
  ``mlp.c_proj`` are the 4× expansion MLP with CLIP's sigmoid GELU approximation between them;
- ``proj`` [width, embed_dim]: the projection of the normalised CLS token into the joint space.

Width, patch size, grid, depth and embedding size are read off those shapes (heads = width // 64,
as CLIP builds it), so a narrow two-layer test checkpoint loads through the same code.

Preprocessing is part of the encoder so a real crop and a generator output can never be fed
differently: [-1, 1] → antialiased bilinear resize to the checkpoint's input size (224, the reference's
``Resize(224, antialias=True)``) → [0, 1] → CLIP mean/std.
(The FALCO reference normalises with CLIP's statistics when it pairs faces but skips the
normalisation inside its attribute loss; one preprocessing for both is deliberate here.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, sub_state_dict
from anonymize.models.images import CanonicalImages

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISUAL_PREFIX = "visual."
# FaRL's masked-image-modelling head: trained alongside the encoder, never used for features.
UNUSED_VISUAL_PREFIXES = ("mask_token", "lm_transformer.", "ln_lm.", "lm_head.")
_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


@dataclass
class FaRLFeatures:
    """What FALCO needs from one FaRL pass."""

    cls: torch.Tensor  # [N, embed_dim]: projected CLS embedding, L2-normalised (nearest-neighbour pairing)
    tokens: torch.Tensor  # [N, 1 + P, width]: last block's tokens before ln_post (attribute loss)


@dataclass(frozen=True)
class VisionConfig:
    """Shape of a CLIP-style vision transformer, as read off its weights."""

    width: int
    layers: int
    patch_size: int
    grid: int
    embed_dim: int

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)

    @property
    def input_size(self) -> int:
        return self.patch_size * self.grid


class _SelfAttention(nn.Module):
    """Multi-head self-attention with CLIP's packed q/k/v parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.reshape(n, length, self.heads, width // self.heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.out_proj(attended.transpose(1, 2).reshape(n, length, width))


class _QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that CLIP (and so FaRL) was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = _QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class FaRLEncoder(nn.Module):
    """FaRL's image tower; takes canonical images, returns pairing and attribute features."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(config.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, config.embed_dim))
        nn.init.normal_(self.proj, std=width**-0.5)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: CanonicalImages) -> torch.Tensor:
        """The one input transform for real and generated faces alike (differentiable)."""
        resized = images.resized(self.config.input_size).tensor.to(self.conv1.weight.dtype)
        unit = (resized + 1.0) * 0.5
        return (unit - self.pixel_mean) / self.pixel_std

    def forward(self, images: CanonicalImages) -> FaRLFeatures:
        x = self.conv1(self.preprocess(images))  # [N, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [N, grid², width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        tokens = self.transformer(self.ln_pre(x))
        embedding = self.ln_post(tokens[:, 0]) @ self.proj
        return FaRLFeatures(cls=F.normalize(embedding, dim=-1), tokens=tokens)


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
    encoder = FaRLEncoder(infer_vision_config(state, source))
    load_state_dict_strict(encoder, state, source)
    encoder.requires_grad_(False)
    return encoder.eval()
