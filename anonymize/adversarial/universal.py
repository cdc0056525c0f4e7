"""One universal perturbation for all the faces of a run (Moosavi-Dezfooli et al., CVPR 2017), as
AnonymousNet's stage IV uses it, in the recogniser's chip space.

The run's faces are the data set: their chips as the recogniser cuts them from the original images,
each with its original descriptor. The "classifier" is verification against that descriptor (dlib's
rule: a distance under 0.6 is a match), so a face is fooled once its perturbed chip's descriptor is
at least 0.6 from its original's. As in the paper's Algorithm 1: pass over the faces; for each one
the current perturbation ``v`` does not fool, find the smallest extra ``r`` that does with DeepFool
(its L-inf form for a binary decision: ``r = (tau - d) / ||grad d||_1 * sign(grad d)``, repeated on the
linearisation until the face crosses, times 1 + overshoot), then project ``v + r`` back into the eps
ball; stop when the fooling rate reaches 1 - delta or after ``max_passes`` passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anonymize.metrics.identity import SAME_PERSON_DISTANCE
from anonymize.models.dlib_resnet import DlibFaceResNet

DEEPFOOL_OVERSHOOT = 0.02  # DeepFool's overshoot (the paper's value)
DEEPFOOL_MAX_ITERATIONS = 10
DESIRED_FOOLING = 0.8  # 1 - delta of Algorithm 1 (the paper stops at 80 %)
MAX_PASSES = 5


@dataclass(frozen=True)
class Universal:
    perturbation: np.ndarray  # [3, S, S] float32, grey levels, |v| <= eps
    fooling_rate: float  # share of the surveyed faces whose chip + v is no longer matched
    passes: int


def universal_perturbation(network: DlibFaceResNet, chips: torch.Tensor, originals: torch.Tensor, eps_levels: float,
                           seed: int = 0, max_passes: int = MAX_PASSES, desired_fooling: float = DESIRED_FOOLING,
                           threshold: float = SAME_PERSON_DISTANCE) -> Universal:
    """Algorithm 1 over ``chips`` [N, 3, S, S] (0..255) and their original descriptors [N, 128]."""
    device = network.channel_means.device
    chips, originals = chips.float().to(device), originals.float().to(device)
    v = torch.zeros_like(chips[0])
    order = np.random.default_rng(seed).permutation(len(chips))
    rate, passes = _fooling_rate(network, chips, originals, v, threshold), 0
    while passes < max_passes and rate < desired_fooling:
        passes += 1
        for index in order:
            step = _deepfool(network, chips[index], originals[index], v, threshold)
            if step is not None:
                v = (v + step).clamp(-eps_levels, eps_levels)
        rate = _fooling_rate(network, chips, originals, v, threshold)
    return Universal(v.cpu().numpy().astype(np.float32), rate, passes)


def _distance(network: DlibFaceResNet, chips: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return (network(chips) - original).norm(dim=-1)


def _fooling_rate(network: DlibFaceResNet, chips: torch.Tensor, originals: torch.Tensor, v: torch.Tensor,
                  threshold: float) -> float:
    with torch.no_grad():
        distances = torch.cat([_distance(network, chips[start:start + 32] + v, originals[start:start + 32])
                               for start in range(0, len(chips), 32)])
    return float((distances >= threshold).float().mean()) if len(chips) else 0.0


def _deepfool(network: DlibFaceResNet, chip: torch.Tensor, original: torch.Tensor, v: torch.Tensor,
              threshold: float) -> torch.Tensor | None:
    """DeepFool's L-inf step for one face: the extra perturbation that makes chip + v + r unmatched
    (None: already unmatched)."""
    total = torch.zeros_like(chip)
    for iteration in range(DEEPFOOL_MAX_ITERATIONS):
        candidate = (chip + v + (1 + DEEPFOOL_OVERSHOOT) * total).detach().requires_grad_(True)
        distance = _distance(network, candidate[None], original)[0]
        if distance.item() >= threshold:
            return None if iteration == 0 else (1 + DEEPFOOL_OVERSHOOT) * total
        (gradient,) = torch.autograd.grad(distance, candidate)
        norm = gradient.abs().sum().clamp_min(1e-12)
        total = total + (threshold - distance.detach() + 1e-4) / norm * gradient.sign()
    return (1 + DEEPFOOL_OVERSHOOT) * total
