"""The adversarial perturbation as a finishing step (``-p adversarial=fgsm|pgd|uap``, ``--method adversarial``).

It perturbs the final image against the run's ensemble of recognisers (:mod:`anonymize.adversarial`);
``uap`` first surveys the run's original faces and stores one universal perturbation in the output
folder, which every worker and a resumed run read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from anonymize.adversarial.settings import AdversarialSettings
from anonymize.io.storage import Storage
from anonymize.methods.base import MetricValue
from anonymize.steps.base import Boxes, FinishingImage, FinishingStep


class AdversarialStep(FinishingStep):
    name = "adversarial"
    metric_columns = {
        "adv_kind": pa.string(),  # fgsm, pgd or uap (stage IV, on the final image)
        "adv_eps": pa.float32(),  # its L-inf bound, image units (4/255: 4 grey levels)
        "adv_distance_before": pa.float32(),  # dlib (PyTorch) distance to the original face before the perturbation
        "adv_distance_after": pa.float32(),  # the same after it (before the JPEG encoding of the write)
        "adv_ensemble": pa.string(),  # the recognisers the perturbation was computed against (the others judge it)
        "adv_ssim": pa.float32(),  # SSIM of the perturbed vs unperturbed final image inside the face box
        "adv_psnr_db": pa.float32(),  # PSNR of the perturbed vs unperturbed final image inside the face box
    }

    def __init__(self, settings: AdversarialSettings, weights_dir: Path | None, device: str, jpeg_quality: int,
                 aligned: bool, seed: int, plan: Storage | None) -> None:
        self.settings = settings
        self.weights_dir, self.device, self.jpeg_quality = weights_dir, device, jpeg_quality
        self.aligned, self.seed = aligned, seed
        self.storage = plan  # None: a dry run (no universal perturbation is stored)
        self.surveys = settings.kind == "uap" and plan is not None  # type: ignore[misc]
        self._surveyed: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_surveyed": []}  # the first pass's faces stay with the driver

    # -- the first pass (uap) ---------------------------------------------------------------------------
    def needs_survey(self) -> bool:
        from anonymize.adversarial.plan import read_universal

        return self.surveys and read_universal(self.storage, self.settings) is None

    def survey(self, images: Sequence[tuple[np.ndarray, Boxes]]) -> None:
        from anonymize.adversarial.plan import surveyed

        self._surveyed += surveyed(self._attack(), images, self.aligned, already=len(self._surveyed))

    def plan(self) -> dict[str, Any]:
        from anonymize.adversarial.plan import store_universal

        assert self.storage is not None
        universal = store_universal(self._attack(), self._surveyed, self.settings, self.storage, self.seed)
        self._surveyed = []
        return {"faces fooled for every recogniser of the ensemble": f"{universal.fooling_rate:.0%}",
                "passes": universal.passes}

    # -- every image ------------------------------------------------------------------------------------
    def apply(self, item: FinishingImage, image: np.ndarray, metrics: list[dict[str, MetricValue]]) -> np.ndarray:
        perturbed, added = self._perturber().perturb(item.original, image, item.boxes)
        for face_metrics, figures in zip(metrics, added):
            face_metrics.update(figures)
        return perturbed

    def _attack(self) -> Any:
        return self.per_thread("attack", self._build_attack)

    def _perturber(self) -> Any:
        return self.per_thread("perturber", self._build_perturber)

    def _build_attack(self) -> Any:
        from anonymize.adversarial.attack import EnsembleAttack
        from anonymize.adversarial.members import Geometry, open_members
        from anonymize.weights import WeightsStore

        weights = WeightsStore(self.weights_dir)
        return EnsembleAttack(open_members(self.settings.ensemble, weights, self.device), Geometry(weights), self.settings,
                              self.jpeg_quality)

    def _build_perturber(self) -> Any:
        from anonymize.adversarial.attack import Perturber
        from anonymize.adversarial.plan import read_universal
        from anonymize.metrics.identity import DlibRecogniser
        from anonymize.weights import WeightsStore

        universal = read_universal(self.storage, self.settings) if self.settings.kind == "uap" else None
        if self.settings.kind == "uap" and universal is None:
            raise RuntimeError("no universal perturbation stored for this run (pass 1 did not finish)")
        recogniser = DlibRecogniser(WeightsStore(self.weights_dir), device=self.device)
        return Perturber(recogniser, self._attack(), self.settings, universal, aligned=self.aligned)
