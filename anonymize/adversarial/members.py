"""The recognisers an adversarial perturbation is computed against, each behind its own alignment.

Every member cuts its face crop from the (perturbed) photo with a differentiable bilinear warp: a
2 x 3 matrix maps crop pixels to photo pixels, so the gradient reaches the photo's pixels through the
crop's sampling, and the attacker's transformations (:mod:`anonymize.adversarial.transforms`) are a
change of that matrix. Members:

* ``dlib``: dlib's ResNet (PyTorch port), 150 px chip; its alignments are the ones an attacker with
  dlib would use: the chip from the 5-point predictor (what dlib's own pipeline cuts), the chip from
  the 68-point predictor's eye corners and nose, for aligned input the chip from the 5-point predictor
  fitted in the whole image as the face box, and a plain square crop of the detected box;
* ``mobileface``: ArcFace's five-point alignment to 112 px (from the 68 landmarks);
* ``faceres``: the square 1.6 x landmark box at 224 px, BGR minus the Caffe means.

Features are unit vectors; the attack lowers their cosine to the original face's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anonymize.adversarial.settings import ENSEMBLE_MEMBERS as MEMBERS
from anonymize.adversarial.transforms import gaussian_blur
from anonymize.faces.chips import CHIP_SIZE, ChipLocation, face_chip_location
from anonymize.faces.crops import five_points, similarity_matrix, square_matrix
from anonymize.faces.landmarks import BoxLandmarks
from anonymize.metrics.graph_recognisers import GraphRecogniser
from anonymize.metrics.identity import SAME_PERSON_DISTANCE, DlibRecogniser
from anonymize.models.registry import ARCFACE_TEMPLATE
from anonymize.weights import WeightsStore

DLIB_FROM_68 = (45, 42, 36, 39, 33)  # dlib's 5-point layout (eye corners, nose bottom) from the iBUG 68


@dataclass
class FaceGeometry:
    """Where one face is, as each alignment needs it (photo pixels)."""

    box: tuple[float, float, float, float]
    landmarks68: np.ndarray
    landmarks5: np.ndarray  # dlib's 5-point predictor
    whole_image: tuple[int, int] | None = None  # (height, width) when the input is one aligned face
    landmarks5_whole: np.ndarray | None = None  # aligned input: the 5-point predictor fitted in the whole image as the box


@dataclass
class Member:
    """One recogniser of the ensemble: crop size, alignments (crop -> photo matrices) and features."""

    name: str
    size: int
    recogniser: object = field(repr=False)

    def alignments(self, face: FaceGeometry) -> list[np.ndarray]:
        """Crop -> photo 2 x 3 matrices; the first is the member's standard one."""
        if self.name == "dlib":
            maps = [chip_matrix(face_chip_location(face.landmarks5)),
                    chip_matrix(face_chip_location(face.landmarks68[list(DLIB_FROM_68)]))]
            if face.landmarks5_whole is not None:
                maps.append(chip_matrix(face_chip_location(face.landmarks5_whole)))
            return maps + [square_map(face.box, self.size)]
        if self.name == "mobileface":
            forward = similarity_matrix(five_points(face.landmarks68), ARCFACE_TEMPLATE * (self.size / 112.0))
        else:
            forward = square_matrix(face.landmarks68, 1.6, self.size)
        return [invert(forward)]

    @property
    def cosine_threshold(self) -> float:
        """Cosine of unit features above which this recogniser says "same person" (dlib: its 0.6 distance)."""
        if self.name == "dlib":
            return 1.0 - SAME_PERSON_DISTANCE**2 / 2  # unit descriptors: |a - b|^2 = 2 - 2 cos
        assert isinstance(self.recogniser, GraphRecogniser)
        return self.recogniser.cosine_threshold

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] RGB crops in 0..255 -> [N, D] unit features (differentiable)."""
        if self.name == "dlib":
            assert isinstance(self.recogniser, DlibRecogniser)
            raw = self.recogniser.network(crops)
            return F.normalize(raw, dim=1)
        assert isinstance(self.recogniser, GraphRecogniser)
        return self.recogniser.features(crops.permute(0, 2, 3, 1))


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def chip_matrix(location: ChipLocation) -> np.ndarray:
    """Crop -> photo matrix of dlib's chip (its rotated rectangle, sampled corner to corner)."""
    top_left, top_right, bottom_left, _ = location.corners()
    steps = location.size - 1
    return np.stack([(top_right - top_left) / steps, (bottom_left - top_left) / steps, top_left], axis=1)


def square_map(box: Sequence[float], size: int) -> np.ndarray:
    """Crop -> photo matrix of the box's own square (its longer side), centred on it."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, 1.0)
    step = side / (size - 1)
    return np.array([[step, 0.0, (x0 + x1) / 2 - side / 2], [0.0, step, (y0 + y1) / 2 - side / 2]])


def sample_crops(image: torch.Tensor, maps: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """[N, 3, size, size] bilinear crops of ``image`` [3, H, W] (0..255) under crop -> photo ``maps``.

    A crop that shrinks the photo more than 1.5 times first reads a Gaussian-blurred copy (sigma 0.45 of the
    footprint), so each crop pixel averages its footprint as a real resize would, the same wherever the
    photo region starts; samples outside the photo are black."""
    crops = []
    grid_u, grid_v = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="xy")
    blurred: dict[float, torch.Tensor] = {}
    for matrix in maps:
        source = image
        footprint = math.sqrt(abs(np.linalg.det(matrix[:, :2])))  # photo pixels per crop pixel
        if footprint > 1.5:
            sigma = round(0.45 * footprint, 1)
            if sigma not in blurred:
                blurred[sigma] = gaussian_blur(image, sigma)
            source = blurred[sigma]
        sh, sw = source.shape[-2:]
        m = torch.from_numpy(np.asarray(matrix, np.float64))
        xs = m[0, 0] * grid_u + m[0, 1] * grid_v + m[0, 2]
        ys = m[1, 0] * grid_u + m[1, 1] * grid_v + m[1, 2]
        grid = torch.stack([xs / max(sw - 1, 1) * 2 - 1, ys / max(sh - 1, 1) * 2 - 1], dim=-1).float()[None].to(image.device)
        crops.append(F.grid_sample(source[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0])
    return torch.stack(crops) if crops else image.new_zeros((0, 3, size, size))


def open_members(names: Sequence[str], weights: WeightsStore, device: str | torch.device) -> list[Member]:
    """The ensemble's members, loaded (their weights verified) on ``device``."""
    unknown = [name for name in names if name not in MEMBERS]
    if unknown or not names:
        raise ValueError(f"adv_ensemble: unknown recogniser(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(MEMBERS)}")
    members = []
    for name in names:
        if name == "dlib":
            members.append(Member(name, CHIP_SIZE, DlibRecogniser(weights, device=device)))
        else:
            recogniser = GraphRecogniser(weights, name, device)
            members.append(Member(name, recogniser.config.input_size, recogniser))
    return members


class Geometry:
    """Fits the landmarks every member's alignments need, in given boxes of a photo."""

    def __init__(self, weights: WeightsStore) -> None:
        self.five = BoxLandmarks(weights.require("dlib_shape_predictor_5"))
        self.sixty_eight = BoxLandmarks(weights.require("dlib_shape_predictor_68"))

    def faces(self, rgb: np.ndarray, boxes: Sequence[Sequence[float]], aligned: bool = False) -> list[FaceGeometry]:
        whole = rgb.shape[:2] if aligned else None
        frame = [(0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0]))]
        whole_five = self.five.fit(rgb, frame)[0] if aligned else None
        return [FaceGeometry(tuple(float(v) for v in box), points68, points5, whole, whole_five)  # type: ignore[arg-type]
                for box, points68, points5 in zip(boxes, self.sixty_eight.fit(rgb, boxes), self.five.fit(rgb, boxes))]
