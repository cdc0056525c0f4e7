"""The perturbation of one written image: PGD/FGSM against an ensemble of recognisers, each through its
own alignment, in expectation over the attacker's transformations; or a universal perturbation warped
back into the photo.

The perturbation lives in the final, full-resolution photo (after paste-back), because that is what is
written and what a recogniser sees. Each ensemble member (:mod:`anonymize.adversarial.members`) cuts its
crop from the photo with a differentiable warp at the landmarks found in the final image; every step
draws ``samples`` attacker pipelines (:mod:`anonymize.adversarial.transforms`: crop jitter, alignment,
rescale, blur, JPEG) and lowers the summed cosine of every member's features to the original face's
(computed on the original image). Only pixels some crop reads can change. The L-inf bound holds
throughout; with ``ssim_floor`` the finished perturbation is scaled down until the face region's SSIM
to the unperturbed image reaches the floor, so a larger bound never shows as texture.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anonymize.adversarial import transforms
from anonymize.adversarial.members import FaceGeometry, Geometry, Member, sample_crops
from anonymize.adversarial.settings import AdversarialSettings
from anonymize.faces.chips import ChipLocation, face_chip_location
from anonymize.metrics.identity import Boxes, DlibRecogniser, distance
from anonymize.metrics.quality import face_box_mask, ssim

MOMENTUM = 1.0
REFIT_EVERY = 1  # steps between landmark refits on the perturbed image (0: never)
GRADIENT_SIGMA = 2.0  # photo pixels
HINGE_MARGIN = 0.1  # push each recogniser's cosine this far under its same-person threshold
PGD_STEP_FACTOR = 2.5  # step = 2.5 eps / steps (Madry et al.): the walk can cross the ball once and come back
JITTER_MARGIN = 0.35  # the attack region also covers crops moved, scaled and turned by the transformations
SSIM_SEARCH_STEPS = 8  # bisections of the scale that meets the SSIM floor


@dataclass
class FaceTarget:
    """One face to push away: where each alignment reads it in the final image, and the original's features."""

    geometry: FaceGeometry
    originals: dict[str, torch.Tensor]  # member name -> unit features of the original face [D]


def crop_corners(crop_to_photo: np.ndarray, size: int) -> np.ndarray:
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], np.float64)
    return corners @ np.asarray(crop_to_photo, np.float64).T


def attack_region(maps: Sequence[tuple[np.ndarray, int]], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The photo box (x0, y0, x1, y1; end exclusive) every crop can read, jitter included."""
    height, width = shape
    boxes = []
    for matrix, size in maps:
        corners = crop_corners(matrix, size)
        (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
        grow = JITTER_MARGIN * max(right - left, bottom - top) + 4
        boxes.append((left - grow, top - grow, right + grow, bottom + grow))
    x0 = max(int(math.floor(min(box[0] for box in boxes))), 0)
    y0 = max(int(math.floor(min(box[1] for box in boxes))), 0)
    x1 = min(int(math.ceil(max(box[2] for box in boxes))) + 1, width)
    y1 = min(int(math.ceil(max(box[3] for box in boxes))) + 1, height)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def moved(crop_to_photo: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The same map into a region whose top-left corner is photo pixel (dx, dy)."""
    out = np.array(crop_to_photo, np.float64)
    out[0, 2] -= dx
    out[1, 2] -= dy
    return out


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().to(device)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return image.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


class EnsembleAttack:
    """Targets and gradient steps of the ensemble on one photo (the members and landmark fitters are loaded once)."""

    def __init__(self, members: Sequence[Member], geometry: Geometry, settings: AdversarialSettings, jpeg_quality: int | None) -> None:
        self.members, self.geometry, self.settings, self.jpeg_quality = list(members), geometry, settings, jpeg_quality
        self.device = next(iter(_member_devices(self.members)), torch.device("cpu"))

    def _features(self, member: Member, region: torch.Tensor, maps: Sequence[np.ndarray]) -> torch.Tensor:
        return member.features(sample_crops(region, maps, member.size))

    def targets(self, original: np.ndarray, final: np.ndarray, boxes: Boxes, aligned: bool = False) -> list[FaceTarget]:
        """Each face's geometry in the final image and each member's features of the original face."""
        finals = self.geometry.faces(final, boxes, aligned)
        before = self.geometry.faces(original, boxes, aligned)
        source = to_tensor(original, self.device)
        originals: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for member in self.members:
                maps = [member.alignments(face)[0] for face in before]
                originals[member.name] = self._features(member, source, maps)
        return [FaceTarget(face, {name: features[index] for name, features in originals.items()}) for index, face in enumerate(finals)]

    def maps(self, targets: Sequence[FaceTarget]) -> list[tuple[np.ndarray, int]]:
        return [(matrix, member.size) for target in targets for member in self.members for matrix in member.alignments(target.geometry)]

    def loss(self, region: torch.Tensor, offset: tuple[int, int], targets: Sequence[FaceTarget],
             draws: Sequence[transforms.Sample]) -> torch.Tensor:
        """Summed cosine of every member's features to the original's, over faces and sampled pipelines."""
        total = region.new_zeros(())
        for draw in draws:
            seen = transforms.apply(region, draw, self.jpeg_quality or 95)
            for member in self.members:
                maps, wanted = [], []
                for target in targets:
                    alignments = member.alignments(target.geometry)
                    chosen = alignments[draw.alignment % len(alignments)]
                    maps.append(moved(transforms.jitter(chosen, draw, member.size), *offset))
                    wanted.append(target.originals[member.name])
                cosines = (self._features(member, seen, maps) * torch.stack(wanted)).sum(dim=1)
                # a hinge under the member's own threshold: a face already unmatched by one recogniser stops
                # pulling, so the steps go where a recogniser still matches
                total = total + F.relu(cosines - (member.cosine_threshold - HINGE_MARGIN)).sum()
        return total / max(len(draws) * len(self.members), 1)

    def perturb(self, final: np.ndarray, targets: Sequence[FaceTarget]) -> np.ndarray:
        """FGSM or PGD within ``eps`` grey levels of ``final`` (uint8 in, uint8 out)."""
        if not targets:
            return final
        settings = self.settings
        x0, y0, x1, y1 = attack_region(self.maps(targets), final.shape[:2])
        image = to_tensor(final[y0:y1, x0:x1], self.device)
        rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(final[y0:y1, x0:x1]).tobytes()))
        bound = settings.eps_levels
        steps, step = (1, bound) if settings.kind == "fgsm" else (settings.steps, PGD_STEP_FACTOR * bound / settings.steps)
        delta, velocity = torch.zeros_like(image), torch.zeros_like(image)
        boxes = [target.geometry.box for target in targets]
        for index in range(steps):
            if index and REFIT_EVERY and index % REFIT_EVERY == 0:  # landmarks move with the perturbation: refit them
                current = final.copy()
                current[y0:y1, x0:x1] = to_uint8(image + delta)
                whole = targets[0].geometry.whole_image is not None
                targets = [FaceTarget(geometry, target.originals)
                           for geometry, target in zip(self.geometry.faces(current, boxes, whole), targets)]
            draws = transforms.samples(rng, settings.samples, self.jpeg_quality is not None)
            delta.requires_grad_(True)
            loss = self.loss(image + delta, (x0, y0), targets, draws)
            (gradient,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():  # momentum on L1-normalised gradients (MI-FGSM, Dong et al. 2018): steadier, transfers better
                if GRADIENT_SIGMA > 0:  # smoothed gradients (TI-FGSM, Dong et al. 2019): a perturbation that survives shifts
                    gradient = transforms.apply(gradient, transforms.Sample(blur_sigma=GRADIENT_SIGMA), 95)
                velocity = MOMENTUM * velocity + gradient / gradient.abs().mean().clamp_min(1e-12)
                delta = (delta - step * velocity.sign()).clamp(-bound, bound)
                delta = (image + delta).clamp(0, 255) - image  # stay a valid image
        perturbed = final.copy()
        perturbed[y0:y1, x0:x1] = to_uint8(image + delta.detach())
        return perturbed


def _member_devices(members: Sequence[Member]) -> list[torch.device]:
    devices = []
    for member in members:
        recogniser = member.recogniser
        network = getattr(recogniser, "network", None)
        if isinstance(recogniser, DlibRecogniser):
            devices.append(recogniser.network.channel_means.device)
        elif network is not None:
            devices.append(next((buffer.device for buffer in network.buffers()), torch.device("cpu")))
    return devices


def meet_ssim_floor(final: np.ndarray, perturbed: np.ndarray, boxes: Boxes, floor: float) -> np.ndarray:
    """``perturbed`` scaled towards ``final`` (largest scale by bisection) until the faces' SSIM is at least ``floor``."""
    if floor <= 0 or len(boxes) == 0:
        return perturbed
    mask = np.zeros(final.shape[:2], bool)
    for box in boxes:
        mask |= face_box_mask(final.shape, tuple(box))
    if (ssim(final, perturbed, mask) or 1.0) >= floor:
        return perturbed
    delta = perturbed.astype(np.float64) - final.astype(np.float64)
    low, high, best = 0.0, 1.0, final
    for _ in range(SSIM_SEARCH_STEPS):
        middle = (low + high) / 2
        candidate = np.clip(np.round(final + middle * delta), 0, 255).astype(np.uint8)
        if (ssim(final, candidate, mask) or 1.0) >= floor:
            low, best = middle, candidate
        else:
            high = middle
    return best


# ---- the universal perturbation, warped back into a photo -------------------------------------------


def shifted_location(location: ChipLocation, dx: int, dy: int) -> ChipLocation:
    left, top, right, bottom = location.rect
    return ChipLocation((left - dx, top - dy, right - dx, bottom - dy), location.angle, location.size)


def footprint(location: ChipLocation, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The photo box (x0, y0, x1, y1; end exclusive) under a chip: the only pixels its perturbation touches."""
    corners = location.corners()
    height, width = shape
    x0, y0 = max(int(math.floor(corners[:, 0].min())), 0), max(int(math.floor(corners[:, 1].min())), 0)
    x1, y1 = min(int(math.ceil(corners[:, 0].max())) + 1, width), min(int(math.ceil(corners[:, 1].max())) + 1, height)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _chip_coordinates(location: ChipLocation, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chip pixel coordinates (u, v) of photo points: the inverse of the chip's sampling grid."""
    top_left, top_right, bottom_left, _ = location.corners()
    size = location.size
    axes = np.stack([(top_right - top_left) / (size - 1), (bottom_left - top_left) / (size - 1)], axis=1)  # columns: step_x, step_y
    inverse = torch.from_numpy(np.linalg.inv(axes))
    dx, dy = xs - top_left[0], ys - top_left[1]
    return inverse[0, 0] * dx + inverse[0, 1] * dy, inverse[1, 0] * dx + inverse[1, 1] * dy


def universal_delta(universal: torch.Tensor, locations: Sequence[ChipLocation], shape: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] photo-space perturbation of a chip-space one [3, S, S] (grey levels) under every chip:
    each photo pixel under a chip takes the perturbation's bilinear sample at its chip coordinates (the
    chip warp inverted), so a recogniser's chip of the result is its chip plus the resampled perturbation.
    Differentiable with respect to ``universal``."""
    height, width = shape
    delta = universal.new_zeros((3, height, width))
    for location in locations:
        box = footprint(location, (height, width))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float64), torch.arange(x0, x1, dtype=torch.float64), indexing="ij")
        u, v = _chip_coordinates(location, xs, ys)
        size = location.size
        grid = torch.stack([u / (size - 1) * 2 - 1, v / (size - 1) * 2 - 1], dim=-1).float()[None].to(universal.device)
        sampled = F.grid_sample(universal[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        delta = delta + F.pad(sampled, (x0, width - x1, y0, height - y1))
    return delta


def apply_universal(final: np.ndarray, locations: Sequence[ChipLocation], perturbation: np.ndarray,
                    settings: AdversarialSettings) -> np.ndarray:
    """Add a chip-space perturbation ([3, S, S], grey levels) under every face's dlib chip."""
    if not locations:
        return final
    delta = universal_delta(torch.from_numpy(perturbation).float(), locations, final.shape[:2])
    bound = settings.eps_levels
    return to_uint8(to_tensor(final, torch.device("cpu")) + delta.clamp(-bound, bound))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when equal)."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


class Perturber:
    """The finishing step of one run: perturbs a written image and reports per face what it did."""

    def __init__(self, recogniser: DlibRecogniser, attack: EnsembleAttack, settings: AdversarialSettings,
                 universal: np.ndarray | None = None, aligned: bool = False) -> None:
        if settings.kind == "uap" and universal is None:
            raise ValueError("a universal perturbation is needed for adversarial=uap")
        self.recogniser, self.attack, self.settings, self.universal, self.aligned = recogniser, attack, settings, universal, aligned

    def perturb(self, original: np.ndarray, final: np.ndarray, boxes: Boxes) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(the perturbed image, one metrics dict per face: kind, eps, ensemble, dlib distance to the original
        before and after (dlib's own chips, as an audit measures), PSNR and SSIM of the face box)."""
        if len(boxes) == 0:
            return final, []
        if self.settings.kind == "uap":
            assert self.universal is not None
            locations = [face_chip_location(points) for points in self.recogniser.landmarks(final, boxes)]
            perturbed = apply_universal(final, locations, self.universal, self.settings)
        else:
            perturbed = self.attack.perturb(final, self.attack.targets(original, final, boxes, self.aligned))
        perturbed = meet_ssim_floor(final, perturbed, boxes, self.settings.ssim_floor)
        originals = self.recogniser.descriptors(original, boxes)
        before = distance(originals, self.recogniser.descriptors(final, boxes))
        after = distance(originals, self.recogniser.descriptors(perturbed, boxes))
        metrics = []
        for box, was, now in zip(boxes, before, after):
            mask = face_box_mask(final.shape, tuple(box))
            region = np.ix_(mask.any(axis=1), mask.any(axis=0))
            metrics.append({"adv_kind": self.settings.kind, "adv_eps": float(self.settings.eps),
                            "adv_ensemble": ",".join(self.settings.ensemble),
                            "adv_distance_before": float(was), "adv_distance_after": float(now),
                            "adv_psnr_db": psnr(final[region], perturbed[region]),
                            "adv_ssim": ssim(final, perturbed, mask)})
        return perturbed, metrics
