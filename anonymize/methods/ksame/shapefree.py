"""k-Same in a shape-free space (the idea of k-Same-M, Gross et al. 2005: shape and texture apart).

A group's members are each warped (piecewise-affine, :mod:`anonymize.faces.shape_warp`) from their own
68 landmarks to the group's mean shape, so eyes land on eyes and mouths on mouths, and their textures
are averaged there: one face with one set of features instead of a ghost with doubled ones. The
average loses fine detail (what differs between members cancels), so it is sharpened with an unsharp
mask until its Laplacian variance in the face matches the members' mean; the gain depends on the group
only, so every member still gets the same face.

Pass 2 (:func:`member_output`) puts that face into each member's own crop: warped to the group's mean
shape (``shape=group``, the default: every member's face is the same image, geometry included, which
keeps k-Same's 1/k bound) or to the member's own landmarks (``shape=target``: a better fit to the head,
but the output then carries the member's face geometry, which recognisers use: README), matched to the
member's photo (``match=photo``: its skin's per-channel mean and spread, and its level of fine detail, a
gain that depends on the photo's sharpness, not on who is in it) and blended along the face outline
(:mod:`anonymize.faces.blend`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anonymize.faces.blend import blend, face_region_mask, laplacian_variance, match_colour
from anonymize.faces.shape_warp import backward_map, source_density, warp_to_shape

SHAPES = ("group", "target")
MATCHES = ("photo", "none")
SHARPEN_SIGMA = 1.0  # pixels (256 px crop): the detail the unsharp mask restores
SHARPEN_GAINS = np.linspace(0.0, 4.0, 17)  # the gains tried; the one closest to the members' detail wins
OUTLIER_SCALE = 60.0  # RGB distance from the members' median at which a member's weight halves
WEIGHT_SMOOTHING = 3.0  # pixels: Gaussian sigma of the weight maps


def group_shapes(shapes: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """G x 68 x 2: each group's mean landmarks (its members' shapes averaged point by point)."""
    if not groups:
        return np.zeros((0, *shapes.shape[1:]), np.float32)
    return np.stack([shapes[sorted(members)].astype(np.float64).mean(axis=0) for members in groups]).astype(np.float32)


def shapefree_faces(crops: np.ndarray, shapes: np.ndarray, groups: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:
    """Each group's face (uint8, in its mean shape): members warped to that shape, averaged, re-sharpened."""
    for members, mean_shape in zip(groups, group_shapes(shapes, groups)):
        members = sorted(members)
        size = crops.shape[1]
        region = face_region_mask(mean_shape, size) > 0.5
        warped, densities = [], []
        for i in members:
            map_x, map_y = backward_map(shapes[i], mean_shape, size, size)
            warped.append(cv2.remap(np.asarray(crops[i]), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
            densities.append(source_density(map_x, map_y))
        stack = np.stack(warped).astype(np.float64)
        average = weighted_average(stack, np.stack(densities))
        detail = float(np.mean([laplacian_variance(face, region) for face in warped]))
        yield _to_uint8(resharpen(average, region, detail))


def weighted_average(stack: np.ndarray, densities: np.ndarray) -> np.ndarray:
    """The members' per-pixel average (N x H x W x 3), each weighted where it has detail of its own and
    agrees with the others: a member stretched there (a turned face's far cheek, density below 1) counts
    less, and so does one far from the members' median (sunglasses, heavy make-up: an outlier of one),
    so the average shows neither smears nor a faint pair of glasses. The weights are smoothed so they
    leave no seams; they depend on the members only, so the group still gets one face."""
    stretch = np.clip(densities, 0.0, 1.0) ** 2
    median = np.median(stack, axis=0, keepdims=True)
    distance = np.linalg.norm(stack - median, axis=-1)
    agreement = 1.0 / (1.0 + (distance / OUTLIER_SCALE) ** 2)
    weights = np.stack([cv2.GaussianBlur((s * a).astype(np.float32), (0, 0), WEIGHT_SMOOTHING)
                        for s, a in zip(stretch, agreement)]).astype(np.float64) + 1e-3
    return (stack * weights[..., None]).sum(axis=0) / weights.sum(axis=0)[..., None]


def resharpen(image: np.ndarray, region: np.ndarray, detail: float) -> np.ndarray:
    """``image`` plus the unsharp-mask gain (of :data:`SHARPEN_GAINS`) whose Laplacian variance in ``region``
    is closest to ``detail``; never sharper than needed, never softer than the image."""
    high = image - cv2.GaussianBlur(image, (0, 0), SHARPEN_SIGMA)
    candidates = [np.clip(image + gain * high, 0, 255) for gain in SHARPEN_GAINS]
    errors = [abs(laplacian_variance(candidate, region) - detail) for candidate in candidates]
    return candidates[int(np.argmin(errors))]


@dataclass(frozen=True)
class MemberOutput:
    crop: np.ndarray  # the member's crop with the group face blended in (uint8)
    mask: np.ndarray  # float32 in [0, 1]: where the crop changed (the face region), for the paste-back


def member_output(group_face: np.ndarray, group_shape: np.ndarray, target: np.ndarray, target_shape: np.ndarray,
                  shape: str = "group", match: str = "photo", scale: float = 1.15) -> MemberOutput:
    """The group's face in one member's crop (``target``, with its own 68 landmarks ``target_shape``)."""
    size = target.shape[0]
    face, destination = np.asarray(group_face), np.asarray(group_shape, np.float64)
    if shape == "target":
        face, destination = warp_to_shape(face, destination, target_shape), np.asarray(target_shape, np.float64)
    mask = face_region_mask(destination, size, scale)
    if match == "photo":
        # the photo's colour and as much fine detail as it has (a soft photo stays soft, a sharp one gets a sharp face)
        face_region = face_region_mask(destination, size) > 0.5  # the faces proper (no hair), for their statistics
        target_region = face_region_mask(target_shape, size) > 0.5
        face = match_colour(face, face_region, target, target_region)
        pasted, replaced = mask > 0.5, face_region_mask(target_shape, size, scale) > 0.5
        face = resharpen(np.asarray(face, np.float64), pasted, laplacian_variance(target, replaced))
    return MemberOutput(blend(target, face, mask), mask)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
