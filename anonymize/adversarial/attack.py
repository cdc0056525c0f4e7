"""The perturbation of one written image: FGSM/PGD through the recogniser's chip warp, or a
universal chip-space perturbation warped back into the photo.

The perturbation lives in the final, full-resolution photo (after paste-back), because that is
what is written and what a recogniser sees: one applied to the aligned crop would be resampled by
the paste-back and again by the recogniser's own alignment, and weakened twice. The recogniser is
dlib's ResNet run in PyTorch; its chip is cut from the final image exactly as dlib cuts it
(:mod:`anonymize.faces.chips`, differentiable), at the landmarks dlib's 5-point predictor finds in
the final image, so the gradient reaches the photo's pixels through the chip's sampling and only
pixels under a chip ever change. The target is the original face's descriptor, computed on the
original image: the attack raises the distance to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anonymize.adversarial.settings import AdversarialSettings
from anonymize.faces.chips import ChipLocation, extract_face_chips, face_chip_location
from anonymize.metrics.identity import Boxes, DlibRecognizer, distance
from anonymize.models.dlib_resnet import DlibFaceResNet

PGD_STEP_FACTOR = 2.5  # step = 2.5 eps / steps (Madry et al.): the walk can cross the ball once and come back


@dataclass(frozen=True)
class FaceTarget:
    """One face to push away: where the recogniser cuts its chip in the final image, and the original's descriptor."""

    location: ChipLocation
    original: np.ndarray  # 128-d, from the original image


def face_targets(recognizer: DlibRecognizer, original: np.ndarray, final: np.ndarray, boxes: Boxes) -> list[FaceTarget]:
    """Each face's target: the original's descriptor (original image) and the chip location in the final image."""
    descriptors = recognizer.descriptors(original, boxes)
    landmarks = recognizer.landmarks(final, boxes)
    return [FaceTarget(face_chip_location(points), descriptor) for points, descriptor in zip(landmarks, descriptors)]


def gradient_attack(network: DlibFaceResNet, final: np.ndarray, targets: Sequence[FaceTarget],
                    settings: AdversarialSettings) -> np.ndarray:
    """FGSM or PGD on the photo's pixels (0..255), maximising the summed distance of every face's
    descriptor to its original's, within ``eps`` grey levels of ``final``; returns uint8."""
    if not targets:
        return final
    device = network.channel_means.device
    x0, y0, x1, y1 = attack_region([target.location for target in targets], final.shape[:2])
    image = torch.from_numpy(np.array(final[y0:y1, x0:x1])).permute(2, 0, 1).float().to(device)  # only what the chips read
    originals = torch.from_numpy(np.stack([target.original for target in targets])).float().to(device)
    locations = [shifted_location(target.location, x0, y0) for target in targets]
    bound = settings.eps_levels
    steps, step = (1, bound) if settings.kind == "fgsm" else (settings.steps, PGD_STEP_FACTOR * bound / settings.steps)
    delta = torch.zeros_like(image)
    for _ in range(steps):
        delta.requires_grad_(True)
        descriptors = network(extract_face_chips(image + delta, locations))
        loss = (descriptors - originals).norm(dim=1).sum()
        (gradient,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + step * gradient.sign()).clamp(-bound, bound)
            delta = (image + delta).clamp(0, 255) - image  # stay a valid image
    perturbed = final.copy()
    perturbed[y0:y1, x0:x1] = _to_uint8(image + delta.detach())
    return perturbed


def attack_region(locations: Sequence[ChipLocation], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The photo box holding every chip's footprint and the margin dlib's pyramid reads around it
    (about 4 pixels per level of shrinking), so chips cut from the box equal chips cut from the photo."""
    height, width = shape
    boxes = []
    for location in locations:
        corners = location.corners()
        side = location.rect[2] - location.rect[0] + 1
        margin = 8 * side / location.size + 8
        boxes.append((corners[:, 0].min() - margin, corners[:, 1].min() - margin, corners[:, 0].max() + margin, corners[:, 1].max() + margin))
    x0, y0 = max(int(math.floor(min(box[0] for box in boxes))), 0), max(int(math.floor(min(box[1] for box in boxes))), 0)
    x1, y1 = min(int(math.ceil(max(box[2] for box in boxes))) + 1, width), min(int(math.ceil(max(box[3] for box in boxes))) + 1, height)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def shifted_location(location: ChipLocation, dx: int, dy: int) -> ChipLocation:
    left, top, right, bottom = location.rect
    return ChipLocation((left - dx, top - dy, right - dx, bottom - dy), location.angle, location.size)


def apply_universal(final: np.ndarray, locations: Sequence[ChipLocation], perturbation: np.ndarray,
                    settings: AdversarialSettings) -> np.ndarray:
    """Add a chip-space perturbation ([3, S, S], grey levels) under every face: each photo pixel under
    a chip takes the perturbation's bilinear sample at its chip coordinates (the chip warp inverted),
    so the recogniser's chip of the result is the chip plus (a resampled) perturbation."""
    if not locations:
        return final
    height, width = final.shape[:2]
    universal = torch.from_numpy(perturbation).float()[None]
    delta = torch.zeros(3, height, width)
    for location in locations:
        box = footprint(location, (height, width))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float64), torch.arange(x0, x1, dtype=torch.float64), indexing="ij")
        u, v = _chip_coordinates(location, xs, ys)
        size = location.size
        grid = torch.stack([u / (size - 1) * 2 - 1, v / (size - 1) * 2 - 1], dim=-1).float()[None]
        sampled = F.grid_sample(universal, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        delta[:, y0:y1, x0:x1] += sampled
    bound = settings.eps_levels
    image = torch.from_numpy(np.array(final)).permute(2, 0, 1).float()
    return _to_uint8(image + delta.clamp(-bound, bound))


def _chip_coordinates(location: ChipLocation, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chip pixel coordinates (u, v) of photo points: the inverse of the chip's sampling grid."""
    top_left, top_right, bottom_left, _ = location.corners()
    size = location.size
    axes = np.stack([(top_right - top_left) / (size - 1), (bottom_left - top_left) / (size - 1)], axis=1)  # columns: step_x, step_y
    inverse = torch.from_numpy(np.linalg.inv(axes))
    dx, dy = xs - top_left[0], ys - top_left[1]
    return inverse[0, 0] * dx + inverse[0, 1] * dy, inverse[1, 0] * dx + inverse[1, 1] * dy


def footprint(location: ChipLocation, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The photo box (x0, y0, x1, y1; end exclusive) under a chip: the only pixels its perturbation touches."""
    corners = location.corners()
    height, width = shape
    x0, y0 = max(int(math.floor(corners[:, 0].min())), 0), max(int(math.floor(corners[:, 1].min())), 0)
    x1, y1 = min(int(math.ceil(corners[:, 0].max())) + 1, width), min(int(math.ceil(corners[:, 1].max())) + 1, height)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when equal)."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return image.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


class Perturber:
    """The finishing step of one run: perturbs a written image and reports per face what it did."""

    def __init__(self, recognizer: DlibRecognizer, settings: AdversarialSettings, universal: np.ndarray | None = None) -> None:
        if settings.kind == "uap" and universal is None:
            raise ValueError("a universal perturbation is needed for adversarial=uap")
        self.recognizer, self.settings, self.universal = recognizer, settings, universal

    def perturb(self, original: np.ndarray, final: np.ndarray, boxes: Boxes) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(the perturbed image, one metrics dict per face: kind, eps, dlib distance to the original before
        and after, PSNR of the face's chip footprint); distances as an audit measures them (its own alignment)."""
        if len(boxes) == 0:
            return final, []
        targets = face_targets(self.recognizer, original, final, boxes)
        if self.settings.kind == "uap":
            assert self.universal is not None
            perturbed = apply_universal(final, [target.location for target in targets], self.universal, self.settings)
        else:
            perturbed = gradient_attack(self.recognizer.network, final, targets, self.settings)
        originals = np.stack([target.original for target in targets])
        before = distance(originals, self.recognizer.descriptors(final, boxes))
        after = distance(originals, self.recognizer.descriptors(perturbed, boxes))
        metrics = []
        for target, was, now in zip(targets, before, after):
            box = footprint(target.location, final.shape[:2])
            region = (slice(box[1], box[3]), slice(box[0], box[2])) if box else (slice(None), slice(None))
            metrics.append({"adv_kind": self.settings.kind, "adv_eps": float(self.settings.eps),
                            "adv_distance_before": float(was), "adv_distance_after": float(now),
                            "adv_psnr_db": psnr(final[region], perturbed[region])})
        return perturbed, metrics
