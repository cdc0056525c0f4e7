"""The CPU fallback that needs no generator: landmark-driven warps of the chosen parts, then a
bounded pixel-space PGD that pulls the recogniser's identity back to the original's.

Each part is scaled about its own centre (both eyes and both brows separately) by the factors of
:data:`PART_SCALES` (a bigger nose and lips, narrower eyes, thicker brows: the attribute flips of
Li et al.), the scaling fading out with the part's feathered mask, so the backward map is

    source(p) = p - w(p) * (p - c) * (1 - 1 / s)

per axis (w = 1 inside the part: a pure magnification by s; w = 0 outside: the identity, so those
pixels are copied bit for bit). The PGD then adds a perturbation ``delta`` confined to the same
masks, ``|delta| <= eps`` per pixel, minimising the identity hinge of
:mod:`anonymize.methods.parts.identity` by signed gradient steps; the hinge is zero once the
threshold is met, so a face that already passes is not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from anonymize.methods.parts.identity import IdentityModel, Reference
from anonymize.methods.parts.masks import PART_LANDMARKS, group_masks

# (x, y) scale of each part about its centre.
PART_SCALES: dict[str, tuple[float, float]] = {
    "nose": (1.2, 1.2),
    "lips": (1.2, 1.2),
    "eyes": (1.0, 0.7),
    "eyebrows": (1.0, 1.4),
}


@dataclass(frozen=True)
class PgdSettings:
    steps: int = 20
    eps: float = 8.0  # per-pixel bound, 0..255 units
    step_size: float = 1.5


def warp_parts(crop: np.ndarray, landmarks: np.ndarray, parts: Sequence[str]) -> np.ndarray:
    """The crop with each chosen part scaled about its centre; pixels outside every part mask unchanged."""
    size = crop.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    map_x, map_y = xs.copy(), ys.copy()
    for part in parts:
        scale_x, scale_y = PART_SCALES[part]
        for group, weight in zip(PART_LANDMARKS[part], group_masks(landmarks, part, size)):
            centre = landmarks[list(group)].mean(axis=0)
            map_x -= weight * (xs - centre[0]) * (1 - 1 / scale_x)
            map_y -= weight * (ys - centre[1]) * (1 - 1 / scale_y)
    warped = cv2.remap(crop, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    moved = (map_x != xs) | (map_y != ys)
    return np.where(moved[..., None], warped, crop)


@dataclass
class PgdResult:
    images: torch.Tensor  # [B, 3, S, S] float 0..255, rounded to integers
    score: torch.Tensor  # [B] the recogniser's score of the final images (cosine or distance)
    steps_taken: int


def identity_pgd(images: torch.Tensor, masks: torch.Tensor, model: IdentityModel, reference: Reference,
                 settings: PgdSettings) -> PgdResult:
    """Signed-gradient descent on the identity hinge, inside ``masks`` [B, 1, S, S], within ``eps``.

    ``images`` [B, 3, S, S] float 0..255 are candidates of one face (``reference`` is its original).
    Stops early once every candidate's hinge is zero.
    """
    start = images.detach().float()
    delta = torch.zeros_like(start)
    steps = 0
    for steps in range(settings.steps):
        delta.requires_grad_(True)
        current = (start + delta * masks).clamp(0, 255)
        hinge = model.hinge(model.embed(current, reference), reference)
        if not bool((hinge > 0).any()):
            break
        (gradient,) = torch.autograd.grad(hinge.sum(), delta)
        with torch.no_grad():
            delta = (delta - settings.step_size * gradient.sign()).clamp(-settings.eps, settings.eps)
    else:
        steps = settings.steps
    with torch.no_grad():
        final = (start + delta.detach() * masks).clamp(0, 255).round()
        score = model.score(model.embed(final, reference), reference)
    return PgdResult(final, score, steps)
