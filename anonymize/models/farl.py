"""FaRL image encoder: the CLIP ViT-B/16 visual tower with FaRL's face-pretrained weights.

FALCO uses FaRL twice: the projected CLS embedding pairs each real face with its nearest fake
face, and the per-token features of the last transformer block (before the final layer norm) feed
the attribute-preservation L1 loss. Both come out of one forward pass here.

Checkpoint layout (``FaRL-Base-Patch16-LAIONFace20M-ep64.pth``): a dict whose ``state_dict``
holds the whole CLIP model. The image tower lives under ``visual.``; everything else (text
transformer, token embedding, ``text_projection``, ``logit_scale``) is the text tower, loaded by
:func:`load_farl_text` into :class:`FaRLTextEncoder` (CLIP's names, so every key is checked; the parts
method builds zero-shot attribute targets with it). The image loader ignores the masked-image-modelling
head weights FaRL pre-training may leave behind under ``visual.``
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
from collections.abc import Sequence
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

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.causal = causal  # the text tower: each token attends to itself and the tokens before it
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.reshape(n, length, self.heads, width // self.heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=self.causal)
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
    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _SelfAttention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualBlock(width, heads, causal) for _ in range(layers))

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


# -- the text tower ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextConfig:
    """Shape of CLIP's text transformer, as read off its weights."""

    width: int
    layers: int
    context_length: int
    vocab_size: int
    embed_dim: int

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)


class FaRLTextEncoder(nn.Module):
    """FaRL's text tower (CLIP's): token ids [N, L] -> L2-normalised text embeddings [N, embed_dim].

    Token embedding plus positions, causal pre-norm transformer, ``ln_final``, then the features of
    each sequence's end-of-text token (the largest id in CLIP's vocabulary, as CLIP takes it with
    ``argmax``) times ``text_projection``. ``logit_scale`` is CLIP's learnt temperature (log).
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.transformer = _Transformer(config.width, config.layers, config.heads, causal=True)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.text_projection, std=config.width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.config.context_length:
            raise ValueError(f"expected token ids [N, <= {self.config.context_length}], got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        end = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return F.normalize(end @ self.text_projection, dim=-1)


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
    encoder = FaRLTextEncoder(infer_text_config(state, source))
    load_state_dict_strict(encoder, state, source)
    encoder.requires_grad_(False)
    return encoder.eval()


def tokenize(texts: Sequence[str], context_length: int) -> torch.Tensor:
    """CLIP's BPE token ids [N, context_length] (start, text, end, zero padding; truncated to fit)."""
    from open_clip.tokenizer import tokenize as clip_tokenize  # its vocabulary ships in the wheel

    return clip_tokenize(list(texts), context_length=context_length)


@torch.no_grad()
def encode_prompts(text_encoder: FaRLTextEncoder, prompts: Sequence[str]) -> torch.Tensor:
    """Unit text embeddings [N, embed_dim] (float32, on the encoder's device) of prompts: the one way
    every zero-shot user (the parts method, the zero-shot attribute source) turns text into FaRL space."""
    tokens = tokenize(prompts, text_encoder.config.context_length).to(text_encoder.text_projection.device)
    return text_encoder(tokens).float()


@torch.no_grad()
def encode_prompt_pairs(text_encoder: FaRLTextEncoder, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, float]:
    """Zero-shot pairs of prompts (one side, the other) -> their unit embeddings [P, 2, embed_dim] and
    FaRL's temperature (``exp(logit_scale)``): what every two-way zero-shot decision is built from."""
    embeddings = encode_prompts(text_encoder, [prompt for pair in pairs for prompt in pair]).view(len(pairs), 2, -1)
    return embeddings, float(text_encoder.logit_scale.exp())
