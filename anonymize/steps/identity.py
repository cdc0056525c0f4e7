"""``--identity-metric``: dlib's distance from each original face to the written one, as a step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from anonymize.methods.base import MetricValue
from anonymize.steps.base import FinishingImage, FinishingStep


class IdentityMetricStep(FinishingStep):
    name = "identity-metric"
    metric_columns = {"identity_distance_dlib": pa.float32()}  # dlib 128-d distance, original face vs anonymized face

    def __init__(self, weights_dir: Path | None) -> None:
        self.weights_dir = weights_dir

    def apply(self, item: FinishingImage, image: np.ndarray, metrics: list[dict[str, MetricValue]]) -> np.ndarray:
        from anonymize.metrics.identity import distance

        recogniser = self._recogniser()
        before = recogniser.descriptors(item.original, item.boxes)
        after = recogniser.descriptors(image, item.boxes)
        for face_metrics, value in zip(metrics, distance(before, after)):
            face_metrics["identity_distance_dlib"] = float(value)
        return image

    def _recogniser(self) -> Any:
        from anonymize.metrics.identity import DlibRecogniser
        from anonymize.weights import WeightsStore

        return self.per_thread("recogniser", lambda: DlibRecogniser(WeightsStore(self.weights_dir)))
