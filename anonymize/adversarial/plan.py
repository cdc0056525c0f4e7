"""Pass 1 of ``-p adversarial=uap``: the run's faces as dlib sees them, one universal perturbation
computed over them, stored in the output folder (``.anonymize/plan/adversarial-uap/``) so that every
worker, and a resumed run, applies the same one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anonymize.adversarial.settings import AdversarialSettings
from anonymize.adversarial.universal import Universal, universal_perturbation
from anonymize.faces.chips import extract_face_chips, face_chip_location
from anonymize.metrics.identity import Boxes, DlibRecognizer
from anonymize.methods.plan_store import read_plan, write_plan

MAX_UAP_FACES = 2000  # the faces the perturbation is fitted on (a universal one needs a sample, not all)


def original_chips(recognizer: DlibRecognizer, images: Iterable[tuple[np.ndarray, Boxes]]) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, 3, 150, 150] float chips, [N, 128] descriptors) of the faces of ``images``, as dlib cuts them."""
    chips, descriptors = [], []
    for rgb, boxes in images:
        if len(chips) >= MAX_UAP_FACES or len(boxes) == 0:
            continue
        locations = [face_chip_location(points) for points in recognizer.landmarks(rgb, boxes)]
        chips.append(extract_face_chips(rgb, locations))
        descriptors.append(torch.from_numpy(recognizer.descriptors(rgb, boxes)))
    if not chips:
        return torch.zeros(0, 3, 150, 150), torch.zeros(0, 128)
    return torch.cat(chips)[:MAX_UAP_FACES], torch.cat(descriptors)[:MAX_UAP_FACES]


def plan_universal(recognizer: DlibRecognizer, images: Iterable[tuple[np.ndarray, Boxes]], settings: AdversarialSettings,
                   plan_dir: Path, root: Path | None, seed: int = 0) -> Universal:
    """Compute the run's universal perturbation over ``images`` and store it."""
    chips, descriptors = original_chips(recognizer, images)
    universal = universal_perturbation(recognizer.network, chips, descriptors, settings.eps_levels, seed=seed)
    write_plan(plan_dir, {"perturbation": universal.perturbation},
               {"settings": asdict(settings), "fooling_rate": universal.fooling_rate, "passes": universal.passes,
                "faces": len(chips)}, root)
    return universal


def read_universal(plan_dir: Any, settings: AdversarialSettings) -> np.ndarray | None:
    """The stored perturbation when it was made with these settings, else None."""
    stored = read_plan(plan_dir)
    if stored is None:
        return None
    arrays, info = stored
    if info.get("settings") != asdict(settings) or "perturbation" not in arrays:
        return None
    return arrays["perturbation"]
