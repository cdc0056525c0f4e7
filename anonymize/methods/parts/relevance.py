"""How much identity each face part carries: an exact linear decomposition of a recogniser's head.

Li et al. rank parts with a class activation map of the recogniser averaged inside each part. Here
the map is exact and training-free. Both recognisers end in maps that are linear in their last
feature map F [C, h, w]:

* ArcFace IR-SE50: BatchNorm2d, Flatten, Linear, BatchNorm1d (all affine in eval mode), so the
  unnormalised embedding is ``e = sum_yx c_yx + k`` with ``c_yx = s * (W[:, :, y, x] @ BN(F)[:, y, x])``
  (s the BatchNorm1d scale) and a constant ``k = s * b + t``;
* dlib's ResNet: global average pooling then a bias-free fc, so ``d = sum_yx W @ F[:, y, x] / (h w)``.

Projecting every cell's contribution on the unit embedding ``u = e / |e|`` gives the map
``R_yx = u . c_yx``, and ``sum_yx R_yx + u . k = |e|`` exactly: the map splits the embedding's norm
among the cells (tests/test_parts.py checks the identity). A part's relevance is the mask-weighted
mean of R over the part, the map brought to the crop through the recogniser's own input geometry
(ArcFace's inner-face crop, dlib's chip); parts are ranked lowest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anonymize.faces.chips import CHIP_SIZE, ChipLocation
from anonymize.models.arcface import FACE_CROP_COLS, FACE_CROP_ROWS, FACE_REFERENCE_SIZE, ArcFace, arcface_input
from anonymize.models.dlib_resnet import DlibFaceResNet
from anonymize.models.images import CanonicalImages


@dataclass
class Decomposition:
    """Per face: the relevance map [B, h, w], the constant's share [B] and the embedding norm [B]."""

    relevance: torch.Tensor
    constant: torch.Tensor
    norm: torch.Tensor
    embedding: torch.Tensor  # [B, E], unnormalised


@torch.no_grad()
def decompose_arcface(arcface: ArcFace, images: CanonicalImages) -> Decomposition:
    features = arcface.body(arcface.input_layer(arcface_input(images, arcface.input_size)))
    bn2d, linear, bn1d = arcface.output_layer[0], arcface.output_layer[3], arcface.output_layer[4]
    normalised = bn2d(features)  # [B, C, h, w]
    batch, channels, height, width = normalised.shape
    weight = linear.weight.view(-1, channels, height, width)  # [E, C, h, w]
    scale = torch.rsqrt(bn1d.running_var + bn1d.eps)
    shift = -bn1d.running_mean * scale
    if bn1d.affine:
        scale, shift = scale * bn1d.weight, shift * bn1d.weight + bn1d.bias
    cells = torch.einsum("echw,bchw->behw", weight, normalised) * scale.view(1, -1, 1, 1)
    constant = scale * linear.bias + shift
    embedding = cells.sum(dim=(2, 3)) + constant
    return _project(cells, constant.expand_as(embedding), embedding)


@torch.no_grad()
def decompose_dlib(network: DlibFaceResNet, chips: torch.Tensor) -> Decomposition:
    """``chips`` [B, 3, 150, 150] in 0..255, as the network takes them."""
    *trunk, pool, fc = network.steps
    if pool.kind != "avg_pool" or pool.size != 0 or fc.kind != "fc":
        raise ValueError("dlib network does not end in global average pooling and fc")
    x = (chips.to(network.channel_means.dtype) - network.channel_means) / 256.0
    tags: dict[int, torch.Tensor] = {}
    for step in trunk:
        x = step(x, tags)
    height, width = x.shape[2:]
    cells = torch.einsum("ec,bchw->behw", fc.weight, x) / (height * width)
    embedding = cells.sum(dim=(2, 3))
    return _project(cells, torch.zeros_like(embedding), embedding)


def _project(cells: torch.Tensor, constant: torch.Tensor, embedding: torch.Tensor) -> Decomposition:
    norm = embedding.norm(dim=1)
    unit = embedding / norm.clamp_min(1e-12).unsqueeze(1)
    relevance = torch.einsum("be,behw->bhw", unit, cells)
    return Decomposition(relevance, (unit * constant).sum(dim=1), norm, embedding)


def arcface_map_on_crop(relevance: np.ndarray, crop_size: int) -> np.ndarray:
    """An ArcFace map [h, w] placed on a crop (NaN outside the inner face ArcFace sees)."""
    reference = np.full((FACE_REFERENCE_SIZE, FACE_REFERENCE_SIZE), np.nan, np.float32)
    rows, cols = FACE_CROP_ROWS, FACE_CROP_COLS
    reference[rows, cols] = _upsample(relevance, (rows.stop - rows.start, cols.stop - cols.start))
    return cv2.resize(reference, (crop_size, crop_size), interpolation=cv2.INTER_NEAREST)


def dlib_map_on_crop(relevance: np.ndarray, location: ChipLocation, crop_size: int) -> np.ndarray:
    """A dlib map [h, w] placed on a crop through the chip's geometry (NaN outside the chip)."""
    chip_map = _upsample(relevance, (CHIP_SIZE, CHIP_SIZE))
    top_left, top_right, bottom_left, _ = location.corners()
    step_x = (top_right - top_left) / (CHIP_SIZE - 1)
    step_y = (bottom_left - top_left) / (CHIP_SIZE - 1)
    chip_to_crop = np.stack([step_x, step_y, top_left], axis=1)  # 2 x 3: chip (u, v, 1) -> crop (x, y)
    inside = cv2.warpAffine(np.ones_like(chip_map), chip_to_crop, (crop_size, crop_size), flags=cv2.INTER_NEAREST)
    placed = cv2.warpAffine(chip_map, chip_to_crop, (crop_size, crop_size), flags=cv2.INTER_LINEAR)
    placed[inside < 0.5] = np.nan
    return placed


def _upsample(relevance: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    tensor = torch.as_tensor(np.asarray(relevance, np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def part_relevance(crop_map: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mask-weighted mean of the map inside each part (cells the recogniser does not see are left out)."""
    seen = ~np.isnan(crop_map)
    values = np.where(seen, crop_map, 0.0)
    scores = {}
    for part, mask in masks.items():
        weight = mask * seen
        total = float(weight.sum())
        scores[part] = float((weight * values).sum() / total) if total > 0 else float("nan")
    return scores


def rank_parts(scores: Mapping[str, float]) -> list[str]:
    """Parts from least to most identity-relevant (parts the recogniser does not see come last)."""
    return sorted(scores, key=lambda part: (np.isnan(scores[part]), scores[part]))
