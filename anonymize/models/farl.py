"""FaRL image encoder: the CLIP ViT-B/16 visual tower with FaRL's face-pretrained weights (the networks only).

FALCO uses FaRL twice: the projected CLS embedding pairs each real face with its nearest fake
face, and the per-token features of the last transformer block (before the final layer norm) feed
the attribute-preservation L1 loss. Both come out of one forward pass here. :class:`FaRLTextEncoder`
is CLIP's text tower from the same file (the parts method and the zero-shot attribute source build
their targets with it). :mod:`anonymize.models.legacy.farl` reads the checkpoint.

The modules carry CLIP's names one to one, so the strict loader can check every key:

- ``conv1`` [width, 3, patch, patch], no bias: the patch embedding;
- ``class_embedding`` [width] and ``positional_embedding`` [1 + grid², width];
- ``ln_pre`` / ``ln_post``: layer norms before the transformer and on the CLS token after it;
- ``transformer.resblocks.<i>.{ln_1, attn, ln_2, mlp}``: pre-norm residual blocks, where
  ``attn.in_proj_weight`` [3·width, width] / ``attn.in_proj_bias`` stack the query, key and value
  projections (in that order), ``attn.out_proj`` is a linear layer, and ``mlp.c_fc`` /
  ``mlp.c_proj`` are the 4× expansion MLP with CLIP's sigmoid GELU approximation between them;
- ``proj`` [width, embed_dim]: the projection of the normalised CLS token into the joint space.

Shapes: images -> [N, 3, 224, 224] -> tokens [N, 1 + 14², 768] -> CLS embedding [N, 512] for ViT-B/16
(heads = width // 64, as CLIP builds it).

Preprocessing is part of the encoder so a real crop and a generator output can never be fed
differently; it follows the ``farl`` contract of :mod:`anonymize.models.registry`: [-1, 1] →
antialiased bilinear resize to the checkpoint's input size (224, the reference's
``Resize(224, antialias=True)``) → [0, 1] → CLIP mean/std.
(The FALCO reference normalises with CLIP's statistics when it pairs faces but skips the
normalisation inside its attribute loss; one preprocessing for both is the default here, and
:meth:`FaRLEncoder.encode` takes a ready input for FALCO's ``preprocessing=reference``, which
reproduces the reference's.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.images import CanonicalImages
from anonymize.models.registry import contract_of

@dataclass
class FaRLFeatures:
    """What FALCO needs from one FaRL pass."""

    cls: torch.Tensor  # [N, embed_dim]: projected CLS embedding, L2-normalised (nearest-neighbour pairing)
    tokens: torch.Tensor  # [N, 1 + P, width]: last block's tokens before ln_post (attribute loss)
    cls_norm: torch.Tensor  # [N]: the projected CLS embedding's L2 norm (cls * cls_norm is the raw embedding: Euclidean pairing)


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
        contract = contract_of("farl")
        self.register_buffer("pixel_mean", torch.tensor(contract.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(contract.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: CanonicalImages) -> torch.Tensor:
        """The one input transform for real and generated faces alike (differentiable)."""
        resized = images.resized(self.config.input_size).tensor.to(self.conv1.weight.dtype)
        unit = (resized + 1.0) * 0.5
        return (unit - self.pixel_mean) / self.pixel_std

    def forward(self, images: CanonicalImages) -> FaRLFeatures:
        return self.encode(self.preprocess(images))

    def encode(self, pixels: torch.Tensor) -> FaRLFeatures:
        """The network on an input already at its side and in its range: :meth:`forward` after
        :meth:`preprocess`, or FALCO's ``preprocessing=reference``, which reproduces the authors' inputs."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # [N, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [N, grid², width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        tokens = self.transformer(self.ln_pre(x))
        embedding = self.ln_post(tokens[:, 0]) @ self.proj
        return FaRLFeatures(cls=F.normalize(embedding, dim=-1), tokens=tokens, cls_norm=embedding.norm(dim=-1))


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
