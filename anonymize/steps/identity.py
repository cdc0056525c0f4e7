"""``--identity-metric``: dlib's distance from each original face to the written one, as a step.

Its two models (dlib's 5-point shape predictor and face recogniser) are loaded when the step is built,
before the run's first image: a missing, corrupt or refused file stops the run with one line naming it
(a :class:`~anonymize.weights.WeightsError`, exit 2) instead of turning every image into an error row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from anonymize.methods.base import MetricValue
from anonymize.steps.base import FinishingImage, FinishingStep

SHAPE_PREDICTOR = "dlib_shape_predictor_5"
RECOGNISER = "dlib_face_recognition_resnet"


class IdentityMetricStep(FinishingStep):
    name = "identity-metric"
    metric_columns = {"identity_distance_dlib": pa.float32()}  # dlib 128-d distance, original face vs anonymized face

    def __init__(self, weights_dir: Path | None) -> None:
        self.weights_dir = weights_dir
        self.set_up()

    def set_up(self) -> None:
        """Load the models once, now (set-up, before any image): raises WeightsError naming a bad file."""
        self._recogniser()

    def apply(self, item: FinishingImage, image: np.ndarray, metrics: list[dict[str, MetricValue]]) -> np.ndarray:
        from anonymize.metrics.identity import distance

        recogniser = self._recogniser()
        before = recogniser.descriptors(item.original, item.boxes)
        after = recogniser.descriptors(image, item.boxes)
        for face_metrics, value in zip(metrics, distance(before, after)):
            face_metrics["identity_distance_dlib"] = float(value)
        return image

    def _recogniser(self) -> Any:
        return self.per_thread("recogniser", self._build_recogniser)

    def _build_recogniser(self) -> Any:
        from anonymize.faces.landmarks import shape_predictor
        from anonymize.metrics.identity import DlibRecogniser
        from anonymize.weights import WeightsStore

        store = WeightsStore(self.weights_dir)
        # The predictor first, on its own (read once per process, then cached): a failure is named as its file;
        # the recogniser then reads the cached predictor, so what fails there is the network's file.
        store.load(SHAPE_PREDICTOR, shape_predictor)
        return store.load(RECOGNISER, lambda _path: DlibRecogniser(store))
