"""Pass 1 of ``-p adversarial=uap``: the run's original faces, one universal perturbation fitted over them
with the run's ensemble and transformations, stored in the output folder (``.anonymize/plan/adversarial-uap/``)
so that every worker, and a resumed run, applies the same one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.adversarial.attack import EnsembleAttack
from anonymize.adversarial.settings import AdversarialSettings
from anonymize.adversarial.universal import MAX_UAP_FACES, SurveyedFace, Universal, survey_faces, universal_perturbation
from anonymize.metrics.identity import Boxes
from anonymize.methods.plan_store import read_plan, write_plan


def surveyed(attack: EnsembleAttack, images: Iterable[tuple[np.ndarray, Boxes]], aligned: bool) -> list[SurveyedFace]:
    """The faces of ``images`` (at most :data:`MAX_UAP_FACES`), cut to what the fit reads."""
    faces: list[SurveyedFace] = []
    for rgb, boxes in images:
        if len(faces) >= MAX_UAP_FACES:
            continue  # keep consuming: the caller's progress counts every image
        if len(boxes):
            faces += survey_faces(attack, rgb, boxes, aligned)
    return faces[:MAX_UAP_FACES]


def plan_universal(attack: EnsembleAttack, images: Iterable[tuple[np.ndarray, Boxes]], settings: AdversarialSettings,
                   plan_dir: Path, root: Path | None, seed: int = 0, aligned: bool = False) -> Universal:
    """Fit the run's universal perturbation over ``images`` and store it."""
    faces = surveyed(attack, images, aligned)
    universal = universal_perturbation(attack, faces, settings.eps_levels, seed=seed)
    write_plan(plan_dir, {"perturbation": universal.perturbation},
               {"settings": _settings(settings), "fooling_rate": universal.fooling_rate, "passes": universal.passes,
                "faces": len(faces)}, root)
    return universal


def _settings(settings: AdversarialSettings) -> dict[str, Any]:
    recorded = asdict(settings)
    recorded["ensemble"] = list(settings.ensemble)  # JSON has no tuples: compare like with like
    return recorded


def read_universal(plan_dir: Any, settings: AdversarialSettings) -> np.ndarray | None:
    """The stored perturbation when it was made with these settings, else None."""
    stored = read_plan(plan_dir)
    if stored is None:
        return None
    arrays, info = stored
    if info.get("settings") != _settings(settings) or "perturbation" not in arrays:
        return None
    return arrays["perturbation"]
