"""CFA's content term: what stands here for CFA-Net's untouched content code.

CFA-Net decodes the anonymized face from the original's spatial content code and a new identity
code, so everything but identity is kept by construction (their face-region SSIM 0.865, PSNR 21.26,
LPIPS 0.177). Here the face is a fresh synthesis from a W+ code, so content is kept only by what the
loss asks for. This term asks for it outside the face's identity region (eyebrows, eyes, nose, lips
from dlib's 68 landmarks, the parts Li et al. edit: :mod:`anonymize.methods.parts.masks`), where a
new identity has no reason to change anything:

    content = sum(k |G - x|) / (3 sum(k))  +  LPIPS(k G + (1 - k) x, x)

with ``k = 1 - region`` (feathered), ``x`` the original crop and ``G`` the generated face resized to
it, both in [-1, 1]. The perceptual distance sees the composite, so a change inside the region
costs nothing and identical images cost exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anonymize.methods.parts.masks import PARTS, part_masks, union_mask
from anonymize.models.images import CanonicalImages

IDENTITY_PARTS = PARTS  # eyebrows, eyes, nose, lips
Perceptual = Callable[[Tensor, Tensor], Tensor]  # ([B,3,S,S], [B,3,S,S]) in [-1, 1] -> distances ([B] or [B,1,1,1])


def identity_region(landmarks: np.ndarray, size: int) -> np.ndarray:
    """size x size float32 in [0, 1]: 1 on the identity parts of a face with these 68 crop-pixel landmarks."""
    return union_mask(list(part_masks(np.asarray(landmarks, dtype=np.float64), size, IDENTITY_PARTS).values()))


@dataclass(frozen=True)
class ContentTarget:
    """The original crops and where their content is kept (``keep = 1 - identity region``), per face."""

    original: Tensor  # [B, 3, S, S] in [-1, 1]
    keep: Tensor  # [B, 1, S, S] in [0, 1]

    @classmethod
    def from_regions(cls, original: CanonicalImages, regions: np.ndarray) -> ContentTarget:
        """From the real crops and their [B, S, S] identity regions."""
        tensor = original.tensor.float()
        keep = 1.0 - torch.as_tensor(np.asarray(regions, dtype=np.float32), device=tensor.device)[:, None]
        return cls(tensor, keep)


def content_loss(generated: CanonicalImages, target: ContentTarget, perceptual: Perceptual) -> Tensor:
    """Per face [B]: the masked pixel L1 plus the perceptual distance of the composite (module docstring)."""
    size = int(target.original.shape[-1])
    image = generated.resized(size).tensor.float()
    keep, original = target.keep, target.original
    pixel = (keep * (image - original).abs()).sum(dim=(1, 2, 3)) / (3 * keep.sum(dim=(1, 2, 3))).clamp_min(1e-6)
    composite = keep * image + (1.0 - keep) * original
    return pixel + perceptual(composite, original).reshape(len(image))
