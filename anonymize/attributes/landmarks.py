"""The ``landmarks`` source: rules of thumb on dlib's 68 points of the aligned crop (``heuristic``).

Geometry speaks to a few CelebA attributes only; every other column is NaN. Each rule is a
scale-free ratio of landmark distances (iBUG 68-point indices, 0-based: 17-21 / 22-26 the brows,
31-35 the nostrils, 36-41 / 42-47 the eyes, 48-59 the outer lip, 60-67 the inner lip; ``IOD`` is
the distance between the eye centres, ``W`` the mouth width |48-54|), mapped to a probability by
the logistic ``p = 1 / (1 + exp(-(score - threshold) / scale))`` (reversed for Narrow_Eyes):

========================  =====================================================================  =========  =====
attribute                 score                                                                  threshold  scale
========================  =====================================================================  =========  =====
Mouth_Slightly_Open       inner-lip gap / W: mean of |61-67|, |62-66|, |63-65|, over W           0.07       0.035
Smiling                   W / IOD + corner lift, lift = (mean y of 51, 57 - mean y of 48, 54) / W 0.99       0.04
Narrow_Eyes (reversed)    eye aspect ratio (|p2-p6| + |p3-p5|) / (2 |p1-p4|), both eyes' mean    0.21       0.023
Big_Nose                  nostril width |31-35| / IOD                                            0.48       0.017
Big_Lips                  lip thickness (|50-61| + |52-63| + |56-65| + |58-67|) / 2 / W          0.33       0.024
Arched_Eyebrows           brow arch: (mean y of the brow's ends - highest inner point) / length  0.21       0.011
========================  =====================================================================  =========  =====

Thresholds: the score's percentile, over the 150 aligned crops of ../shared/data/celeba-ids, at
which the share of faces above it equals the attribute's prevalence in CelebA's labels (Smiling and
Mouth_Slightly_Open 48 %, Arched_Eyebrows 27 %, Big_Lips 24 %, Big_Nose 23 %, Narrow_Eyes 11.5 %),
so a CelebA-like dataset gets CelebA-like shares; scales: a quarter of the score's interquartile
range on the same crops. The eye aspect ratio is Soukupová and Čech's (CVWW 2016). Not covered,
because a 68-point outline cannot tell them apart reliably: Oval_Face, Double_Chin, High_Cheekbones,
Chubby, Pointy_Nose and every colour, hair or accessory attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.faces.types import FaceCrop
from anonymize.faces.landmarks import LandmarkFinder, inter_ocular
from anonymize.weights import WeightsStore


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def _mouth_width(points: np.ndarray) -> float:
    return max(_distance(points[48], points[54]), 1e-6)


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap over mouth width."""
    gap = (_distance(points[61], points[67]) + _distance(points[62], points[66]) + _distance(points[63], points[65])) / 3
    return gap / _mouth_width(points)


def smile(points: np.ndarray) -> float:
    """Mouth width over inter-ocular distance, plus how far the corners sit above the lips' centre (over W)."""
    width = _mouth_width(points)
    lift = ((points[51, 1] + points[57, 1]) / 2 - (points[48, 1] + points[54, 1]) / 2) / width
    return width / max(inter_ocular(points), 1e-6) + float(lift)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Soukupová and Čech's eye aspect ratio, the mean of both eyes."""
    def one(eye: np.ndarray) -> float:
        return (_distance(eye[1], eye[5]) + _distance(eye[2], eye[4])) / (2 * max(_distance(eye[0], eye[3]), 1e-6))
    return (one(points[36:42]) + one(points[42:48])) / 2


def nose_width(points: np.ndarray) -> float:
    """Nostril width over inter-ocular distance."""
    return _distance(points[31], points[35]) / max(inter_ocular(points), 1e-6)


def lip_thickness(points: np.ndarray) -> float:
    """Upper plus lower lip thickness (outer to inner contour) over mouth width."""
    total = (_distance(points[50], points[61]) + _distance(points[52], points[63])
             + _distance(points[56], points[65]) + _distance(points[58], points[67]))
    return total / 2 / _mouth_width(points)


def brow_arch(points: np.ndarray) -> float:
    """How far each brow's highest inner point rises above its ends, over its length; both brows' mean."""
    def one(brow: np.ndarray) -> float:
        ends = (brow[0, 1] + brow[-1, 1]) / 2
        return float(ends - brow[1:-1, 1].min()) / max(_distance(brow[0], brow[-1]), 1e-6)
    return (one(points[17:22]) + one(points[22:27])) / 2


@dataclass(frozen=True)
class Rule:
    """One attribute's score, and the logistic that turns it into a probability."""

    attribute: str
    score: Callable[[np.ndarray], float]
    threshold: float
    scale: float
    present_below: bool = False  # Narrow_Eyes: a small eye aspect ratio means the attribute is present

    def probability(self, points: np.ndarray) -> float:
        z = (self.score(points) - self.threshold) / self.scale
        return float(1.0 / (1.0 + np.exp(z if self.present_below else -z)))


RULES: tuple[Rule, ...] = (
    Rule("Mouth_Slightly_Open", mouth_opening, 0.07, 0.035),
    Rule("Smiling", smile, 0.99, 0.04),
    Rule("Narrow_Eyes", eye_aspect_ratio, 0.21, 0.023, present_below=True),
    Rule("Big_Nose", nose_width, 0.48, 0.017),
    Rule("Big_Lips", lip_thickness, 0.33, 0.024),
    Rule("Arched_Eyebrows", brow_arch, 0.21, 0.011),
)


def rule_probabilities(points: np.ndarray) -> dict[str, float]:
    """Attribute -> probability for the attributes the rules cover, from 68 x 2 landmarks."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"landmark rules need dlib's 68 points, got an array of shape {points.shape}")
    return {rule.attribute: rule.probability(points) for rule in RULES}


class LandmarkSource:
    """CelebA attributes from landmark geometry: a rule of thumb, never a ground truth."""

    name = "landmarks"
    heuristic = True

    def __init__(self, weights: WeightsStore, device: str = "cpu", options: Mapping[str, str] | None = None) -> None:
        if options:
            raise ValueError(f"attribute source landmarks takes no option (got {', '.join(sorted(options))})")
        self.finder = LandmarkFinder(weights)

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        values = np.full((len(faces), len(CELEBA_ATTRIBUTES)), np.nan, dtype=np.float32)
        for row, face in enumerate(faces):
            for attribute, probability in rule_probabilities(self.finder(face.image, face.landmarks)).items():
                values[row, CELEBA_ATTRIBUTES.index(attribute)] = probability
        return AttributeTable(tuple(face.key for face in faces), CELEBA_ATTRIBUTES, values, self.name, self.heuristic)
