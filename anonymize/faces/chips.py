"""dlib's 150 x 150 face chips from 5-point landmarks, in PyTorch (differentiable w.r.t. the image).

dlib's face recogniser expects the chip that ``get_face_chip_details(shape, 150, 0.25)`` and
``extract_image_chips`` cut (``dlib/image_transforms/interpolation.h``); this module reproduces both:

* the chip location: the least-squares similarity from dlib's 5-point mean face (placed in a chip
  with 25% padding) to the landmarks, expressed as dlib does, as a rotated rectangle;
* the extraction: when the face is much larger than the chip, dlib first shrinks the image with
  ``pyramid_down<2>`` (a 5 x 5 binomial filter, every second pixel) over the bounding box of all the
  faces of the image, then samples the chip bilinearly; a sample whose four neighbours are not all
  inside the image is black.

The landmarks are dlib's 5-point layout (``shape_predictor_5_face_landmarks``: two corners of the
eye on the image right, two of the eye on the image left, the bottom of the nose), not RetinaFace's.
With ``round_like_dlib`` the pyramid levels and the chip are truncated to 8 bits as dlib stores them
(for comparisons with dlib; no gradient flows through the rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anonymize.models.registry import contract_of

CHIP_SIZE = contract_of("dlib_resnet").size
CHIP_PADDING = contract_of("dlib_resnet").padding

# dlib's 5-point mean face, as fractions of an unpadded chip (get_face_chip_details).
MEAN_FACE_5 = np.array([
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
])

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


@dataclass(frozen=True)
class ChipLocation:
    """dlib's chip_details: a rectangle (left, top, right, bottom; inclusive, fractional) turned by ``angle``."""

    rect: tuple[float, float, float, float]
    angle: float
    size: int

    @property
    def center(self) -> np.ndarray:
        left, top, right, bottom = self.rect
        return np.array([(left + right) / 2, (top + bottom) / 2])

    def corners(self, rect: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """Top-left, top-right, bottom-left, bottom-right corners of ``rect`` (default: own), turned about its centre."""
        left, top, right, bottom = rect or self.rect
        center = np.array([(left + right) / 2, (top + bottom) / 2])
        points = np.array([(left, top), (right, top), (left, bottom), (right, bottom)], dtype=np.float64)
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        turn = np.array([[cos, -sin], [sin, cos]])
        return (points - center) @ turn.T + center


def face_chip_location(landmarks: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> ChipLocation:
    """``get_face_chip_details(shape, size, padding)`` for one face's 5 x 2 dlib landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"expected dlib's 5 landmarks as a 5 x 2 array, got shape {points.shape}")
    chip_points = (padding + MEAN_FACE_5) / (2 * padding + 1) * size
    # Least-squares similarity chip -> image: x' = a x - b y + tx, y' = b x + a y + ty.
    rows = []
    for x, y in chip_points:
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), points.reshape(-1), rcond=None)
    scale = math.hypot(a, b)
    center = np.array([a * size / 2 - b * size / 2 + tx, b * size / 2 + a * size / 2 + ty])
    half = (size * scale - 1) / 2
    rect = (center[0] - half, center[1] - half, center[0] + half, center[1] + half)
    return ChipLocation(rect, math.atan2(b, a), size)


def _area(rect: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = rect
    if left > right or top > bottom:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """pyramid_down<2>'s mapping of a rectangle to the next level (its own offsets, 1.25 and 0.75)."""
    left, top, right, bottom = rect
    return (left / 2 - 1.25, top / 2 - 0.75, right / 2 - 1.25, bottom / 2 - 0.75)


def pyramid_down(image: torch.Tensor, round_like_dlib: bool = False) -> torch.Tensor:
    """dlib's pyramid_down<2> of [C, H, W]: 5 x 5 binomial filter / 256, keeping every second pixel, no border."""
    if image.shape[-1] <= 8 or image.shape[-2] <= 8:
        return image[..., :0, :0]
    taps = _BINOMIAL.to(image)
    kernel = (taps[:, None] * taps[None, :] / 256.0).expand(image.shape[0], 1, 5, 5)
    down = F.conv2d(image[None], kernel, stride=2, groups=image.shape[0])[0]
    return torch.floor(down) if round_like_dlib else down


def _bilinear(source: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """Bilinear samples of [C, H, W] at N x 2 (x, y) points; zero where not all four neighbours are inside."""
    height, width = source.shape[-2:]
    if height == 0 or width == 0:  # a pyramid level of an image too small to shrink: dlib's chip is black
        return source.new_zeros((source.shape[0], len(points)))
    left = np.floor(points[:, 0])
    top = np.floor(points[:, 1])
    inside = (left >= 0) & (top >= 0) & (left + 1 < width) & (top + 1 < height)
    left = np.where(inside, left, 0).astype(np.int64)
    top = np.where(inside, top, 0).astype(np.int64)
    right = np.minimum(left + 1, width - 1)
    bottom = np.minimum(top + 1, height - 1)
    fx = torch.from_numpy(points[:, 0] - left).to(source)
    fy = torch.from_numpy(points[:, 1] - top).to(source)
    flat = source.reshape(source.shape[0], -1)

    def at(rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
        return flat[:, torch.from_numpy(rows * width + cols).to(source.device)]

    upper = (1 - fx) * at(top, left) + fx * at(top, right)
    lower = (1 - fx) * at(bottom, left) + fx * at(bottom, right)
    return ((1 - fy) * upper + fy * lower) * torch.from_numpy(inside).to(source)


def extract_face_chips(image: torch.Tensor | np.ndarray, locations: Sequence[ChipLocation],
                       round_like_dlib: bool = False) -> torch.Tensor:
    """``extract_image_chips`` for all the faces of one image: [N, 3, size, size] in the image's value range.

    ``image`` is [3, H, W] (float, differentiable) or an H x W x 3 uint8 array. All the faces share
    one image pyramid over the bounding box of all of them, as in dlib, so a chip can differ in the
    last bit depending on the other faces of the image.
    """
    if isinstance(image, np.ndarray):
        image = torch.tensor(np.asarray(image)).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape [3, H, W], got {tuple(image.shape)}")
    if round_like_dlib:
        image = image.double()  # dlib interpolates in double precision before truncating
    elif not image.is_floating_point():
        image = image.float()
    if not locations:
        return image.new_zeros((0, 3, CHIP_SIZE, CHIP_SIZE))
    height, width = image.shape[-2:]
    depth, box = 0, None
    for location in locations:
        levels, grow = 0, 2.0
        rect = _rect_down(location.rect)
        while _area(rect) > location.size ** 2:
            rect, levels, grow = _rect_down(rect), levels + 1, grow * 2 + 2
        corners = location.corners()
        grown = (max(corners[:, 0].min() - grow, 0), max(corners[:, 1].min() - grow, 0),
                 min(corners[:, 0].max() + grow, width - 1), min(corners[:, 1].max() + grow, height - 1))
        if grown[0] <= grown[2] and grown[1] <= grown[3]:
            rounded = tuple(_lround(v) for v in grown)
            box = rounded if box is None else (min(box[0], rounded[0]), min(box[1], rounded[1]),
                                               max(box[2], rounded[2]), max(box[3], rounded[3]))
        depth = max(depth, levels)
    if box is None:  # every face lies outside the image: dlib's chips are black
        return image.new_zeros((len(locations), 3, locations[0].size, locations[0].size)).float()
    crop = image[:, box[1]:box[3] + 1, box[0]:box[2] + 1]
    pyramid = [crop]
    for _ in range(depth):
        pyramid.append(pyramid_down(pyramid[-1], round_like_dlib))
    size = locations[0].size
    grid_x, grid_y = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    chips = []
    for location in locations:
        level = 0
        rect = (location.rect[0] - box[0], location.rect[1] - box[1], location.rect[2] - box[0], location.rect[3] - box[1])
        while _area(_rect_down(rect)) > location.size ** 2:
            level, rect = level + 1, _rect_down(rect)
        top_left, top_right, bottom_left, _ = location.corners(rect)
        step_x = (top_right - top_left) / (size - 1)
        step_y = (bottom_left - top_left) / (size - 1)
        points = top_left + grid_x.reshape(-1, 1) * step_x + grid_y.reshape(-1, 1) * step_y
        chip = _bilinear(pyramid[level], points).reshape(3, size, size)
        chips.append(torch.floor(chip).float() if round_like_dlib else chip)
    return torch.stack(chips)


def _lround(value: float) -> int:
    """C's lround: halves away from zero."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


def face_chips(image: torch.Tensor | np.ndarray, landmarks: Sequence[np.ndarray], round_like_dlib: bool = False) -> torch.Tensor:
    """The recogniser's input for every face of one image: [N, 3, 150, 150] chips from 5-point dlib landmarks."""
    return extract_face_chips(image, [face_chip_location(points) for points in landmarks], round_like_dlib)
