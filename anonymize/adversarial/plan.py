"""Pass 1 of ``-p adversarial=uap``: the run's original faces, one universal perturbation fitted over them
with the run's ensemble and transformations, stored in the output folder (``.anonymize/plan/adversarial-uap/``)
so that every worker, and a resumed run, applies the same one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from anonymize.adversarial.attack import EnsembleAttack
from anonymize.adversarial.settings import AdversarialSettings
from anonymize.adversarial.universal import MAX_UAP_FACES, SurveyedFace, Universal, survey_faces, universal_perturbation
from anonymize.metrics.identity import Boxes
from anonymize.io.storage import Storage


def surveyed(attack: EnsembleAttack, images: Iterable[tuple[np.ndarray, Boxes]], aligned: bool,
             already: int = 0) -> list[SurveyedFace]:
    """The faces of ``images`` cut to what the fit reads, until ``already`` + these reach :data:`MAX_UAP_FACES`."""
    faces: list[SurveyedFace] = []
    room = MAX_UAP_FACES - already
    for rgb, boxes in images:
        if len(faces) >= room:
            break
        if len(boxes):
            faces += survey_faces(attack, rgb, boxes, aligned)
    return faces[:max(0, room)]


def store_universal(attack: EnsembleAttack, faces: list[SurveyedFace], settings: AdversarialSettings,
                    storage: Storage, seed: int = 0) -> Universal:
    """Fit the run's universal perturbation over the surveyed ``faces`` and store it."""
    universal = universal_perturbation(attack, faces, settings.eps_levels, seed=seed)
    storage.write_plan({"perturbation": universal.perturbation},
                       {"settings": _settings(settings), "fooling_rate": universal.fooling_rate, "passes": universal.passes,
                        "faces": len(faces)})
    return universal


def _settings(settings: AdversarialSettings) -> dict[str, Any]:
    recorded = asdict(settings)
    recorded["ensemble"] = list(settings.ensemble)  # JSON has no tuples: compare like with like
    return recorded


def read_universal(storage: Storage | None, settings: AdversarialSettings) -> np.ndarray | None:
    """The stored perturbation when it was made with these settings, else None."""
    stored = storage.read_plan() if storage is not None else None
    if stored is None:
        return None
    arrays, info = stored
    if info.get("settings") != _settings(settings) or "perturbation" not in arrays:
        return None
    return arrays["perturbation"]
