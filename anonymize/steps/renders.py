"""A method's further renderings of the same faces (CFA's angle sweep and variants), written beside the output."""

from __future__ import annotations

import numpy as np

from anonymize.methods.base import MetricValue
from anonymize.steps.base import FinishingImage, FinishingStep


class RendersStep(FinishingStep):
    """Each label some face rendered is pasted (faces without that label keep their main crop) and
    written as ``<name>.<label>.<ext>``; the main image goes on unchanged."""

    name = "renders"

    def apply(self, item: FinishingImage, image: np.ndarray, metrics: list[dict[str, MetricValue]]) -> np.ndarray:
        labels = list(dict.fromkeys(label for face in item.anonymized for label in face.renders))
        for label in labels:
            item.write_beside(label, item.paste([face.renders.get(label, face.crop) for face in item.anonymized]))
        return image
