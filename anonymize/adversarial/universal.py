"""One universal perturbation for all the faces of a run (Moosavi-Dezfooli et al., CVPR 2017, as AnonymousNet's
stage IV cites it), fitted with the same ensemble and attacker transformations as the per-image attack.

The perturbation lives in dlib's chip frame (150 x 150, the face's own coordinates), so it follows every
face; it reaches a photo through the chip warp inverted (:func:`anonymize.adversarial.attack.universal_delta`).
Fitting: passes over the run's faces (at most :data:`MAX_UAP_FACES`); every :data:`BATCH` faces make one
step along the sign of the momentum of their summed, L1-normalised gradients of the ensemble's loss under
freshly drawn transformations, projected back into the eps ball each time.
The fooling rate is the share of faces every ensemble member no longer matches (its cosine under its
own threshold) at the pipeline's own alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anonymize.adversarial import transforms
from anonymize.adversarial.attack import EnsembleAttack, FaceTarget, attack_region, to_tensor, universal_delta
from anonymize.adversarial.members import FaceGeometry, sample_crops
from anonymize.faces.chips import CHIP_SIZE, ChipLocation, face_chip_location

MAX_UAP_FACES = 300  # the faces the perturbation is fitted on (a universal one needs a sample, not all)
PASSES = 3
STEP_FRACTION = 0.125  # sign step, as a share of eps
BATCH = 5  # faces whose gradients make one step (a direction shared by faces, not one face's)
MOMENTUM = 1.0


@dataclass(frozen=True)
class Universal:
    perturbation: np.ndarray  # [3, S, S] float32, grey levels, |v| <= eps
    fooling_rate: float  # share of the surveyed faces that no ensemble member matches any more
    passes: int


@dataclass
class SurveyedFace:
    """One original face, cut to the photo region its crops read, with its chip and target."""

    region: np.ndarray  # uint8 H x W x 3
    location: ChipLocation  # dlib's chip, region coordinates
    target: FaceTarget  # geometry in region coordinates, original features


def _shift_geometry(geometry: FaceGeometry, dx: int, dy: int) -> FaceGeometry:
    shift = np.array([dx, dy], np.float64)
    x0, y0, x1, y1 = geometry.box
    whole_five = None if geometry.landmarks5_whole is None else geometry.landmarks5_whole - shift
    return FaceGeometry((x0 - dx, y0 - dy, x1 - dx, y1 - dy), geometry.landmarks68 - shift, geometry.landmarks5 - shift,
                        geometry.whole_image, whole_five)


def survey_faces(attack: EnsembleAttack, rgb: np.ndarray, boxes: Sequence[Sequence[float]], aligned: bool) -> list[SurveyedFace]:
    """The faces of one original photo, as the fit needs them."""
    faces = []
    for target in attack.targets(rgb, rgb, boxes, aligned):
        x0, y0, x1, y1 = attack_region(attack.maps([target]), rgb.shape[:2])
        location = face_chip_location(target.geometry.landmarks5)
        left, top, right, bottom = location.rect
        shifted = ChipLocation((left - x0, top - y0, right - x0, bottom - y0), location.angle, location.size)
        faces.append(SurveyedFace(np.ascontiguousarray(rgb[y0:y1, x0:x1]), shifted,
                                  FaceTarget(_shift_geometry(target.geometry, x0, y0), target.originals)))
    return faces


def _loss(attack: EnsembleAttack, face: SurveyedFace, perturbation: torch.Tensor, bound: float,
          draws: Sequence[transforms.Sample]) -> torch.Tensor:
    region = to_tensor(face.region, perturbation.device)
    delta = universal_delta(perturbation, [face.location], tuple(region.shape[-2:])).clamp(-bound, bound)
    return attack.loss((region + delta).clamp(0, 255), (0, 0), [face.target], draws)


def fooled(attack: EnsembleAttack, face: SurveyedFace, perturbation: torch.Tensor, bound: float) -> bool:
    """No ensemble member matches the perturbed face at the pipeline's own alignment."""
    region = to_tensor(face.region, perturbation.device)
    perturbed = (region + universal_delta(perturbation, [face.location], tuple(region.shape[-2:])).clamp(-bound, bound)).clamp(0, 255)
    with torch.no_grad():
        for member in attack.members:
            crop = member.alignments(face.target.geometry)[0]
            features = member.features(sample_crops(perturbed, [crop], member.size))
            if float((features[0] * face.target.originals[member.name]).sum()) >= member.cosine_threshold:
                return False
    return True


def universal_perturbation(attack: EnsembleAttack, faces: Sequence[SurveyedFace], eps_levels: float, seed: int = 0,
                           passes: int = PASSES) -> Universal:
    """Sign-gradient passes over ``faces`` (see the module doc); the result stays within ``eps_levels``."""
    device = attack.device
    perturbation = torch.zeros(3, CHIP_SIZE, CHIP_SIZE, device=device)
    velocity = torch.zeros_like(perturbation)
    rng = np.random.default_rng(seed)
    step = STEP_FRACTION * eps_levels
    for _ in range(passes):
        order = rng.permutation(len(faces))
        for start in range(0, len(order), BATCH):
            gradient = torch.zeros_like(perturbation)
            for index in order[start:start + BATCH]:  # each face's L1-normalised gradient counts alike
                draws = transforms.samples(rng, attack.settings.samples, attack.jpeg_quality is not None)
                candidate = perturbation.detach().requires_grad_(True)
                (face_gradient,) = torch.autograd.grad(_loss(attack, faces[int(index)], candidate, eps_levels, draws), candidate)
                gradient += face_gradient / face_gradient.abs().mean().clamp_min(1e-12)
            with torch.no_grad():  # momentum over batches, as the per-image attack
                velocity = MOMENTUM * velocity + gradient / gradient.abs().mean().clamp_min(1e-12)
                perturbation = (perturbation - step * velocity.sign()).clamp(-eps_levels, eps_levels)
    perturbation = perturbation.detach()
    rate = float(np.mean([fooled(attack, face, perturbation, eps_levels) for face in faces])) if faces else 0.0
    return Universal(perturbation.cpu().numpy().astype(np.float32), rate, passes)
