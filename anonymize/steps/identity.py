"""``--identity-metric``: dlib's distance from each original face to the written one, as a step."""

from __future__ import annotations

import threading
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
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"weights_dir": self.weights_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["weights_dir"])  # type: ignore[misc]

    def apply(self, item: FinishingImage, image: np.ndarray, metrics: list[dict[str, MetricValue]]) -> np.ndarray:
        from anonymize.metrics.identity import distance

        recogniser = self._recogniser()
        before = recogniser.descriptors(item.original, item.boxes)
        after = recogniser.descriptors(image, item.boxes)
        for face_metrics, value in zip(metrics, distance(before, after)):
            face_metrics["identity_distance_dlib"] = float(value)
        return image

    def _recogniser(self) -> Any:
        if not hasattr(self._local, "recogniser"):
            from anonymize.metrics.identity import DlibRecogniser
            from anonymize.weights import WeightsStore

            self._local.recogniser = DlibRecogniser(WeightsStore(self.weights_dir))
        return self._local.recogniser
