"""The CPU fallback that needs no generator: landmark-driven warps of the chosen parts, then a
bounded pixel-space PGD that pulls the recogniser's identity back to the original's.

The warp moves dlib's 68 landmarks of each chosen part to new positions (:func:`control_points`: toward
the attributes Li et al. name (bushy eyebrows, narrow eyes, big nose, big lips), kept modest: a wider, slightly longer nose, fuller and wider lips, eyes
opened a little less, brows raised into an arch with their upper edge lifted more than their lower,
so they also read thicker) together with a few helper points that carry the feature's surroundings
along (the brow's lower edge, the nose wings, a rim around the lips). Every other landmark stays, and
so does a ring of points on the outline of the chosen parts' feathered masks (where a mask falls to
0). scikit-image's :class:`~skimage.transform.PiecewiseAffineTransform` over the Delaunay
triangulation of all those points gives, for every output pixel, the point of the crop it comes from,
and OpenCV's ``remap`` samples it there. Each triangle is mapped affinely onto its moved copy, so a
feature's texture moves and stretches with its landmarks and is never sampled from across its
outline; the ring is fixed, so the warp is the identity on and outside it and pixels outside the
masks stay bit-identical. If a requested move would fold a triangle over (nearby parts moving toward
each other), all moves shrink until none does.

The PGD then adds a perturbation ``delta`` confined to the same masks, ``|delta| <= eps`` per pixel,
minimising the identity hinge of :mod:`anonymize.methods.parts.identity` by signed gradient steps; the
hinge is zero once the threshold is met, so a face that already passes is not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.spatial import Delaunay

from anonymize.faces.landmarks import inter_ocular
from anonymize.faces.shape_warp import one_blas_thread, piecewise_affine
from anonymize.methods.parts.identity import IdentityModel, Reference
from anonymize.methods.parts.masks import PART_LANDMARKS, part_mask

# The edits, in units of the inter-ocular distance (iod) or as factors, in the face's own frame (x along
# the line through the eye centres, y across it, pointing down).
BROW_LIFT = 0.09  # the brow's upper edge rises by up to this (iod), most at the arch ...
BROW_LOWER_LIFT = 0.04  # ... its lower edge by up to this: the brow rises and gets thicker
BROW_DEPTH = 0.14  # where the brow's lower edge lies below dlib's brow points (which trace its upper edge)
BROW_ARCH = (0.55, 0.9, 1.0, 0.75, 0.4)  # share of the lift along each brow, outer end to inner end
EYE_OPENING = 0.8  # the lids move toward the line through the eye corners: opening x 0.8
EYE_WIDTH = 0.95  # the eye's points move toward its centre along the corner-to-corner line
NOSE_WIDTH = 1.2  # about the nose's midline
NOSE_LENGTH = 1.04  # about the root of the nose (landmark 27)
NOSE_WING = 0.12  # helper points beside the nostrils, that far (iod) out: the wings move with the nose
LIPS_SCALE = (1.1, 1.25)  # (width, height) about the mouth's centre ...
LIPS_RISE = 0.5  # ... raised this share of the way to the top of the upper lip, so the lips grow less toward the nose
LIPS_RIM = 0.06  # a rim of helper points that far (iod) outside the lips moves with them
RING_TOLERANCE = 0.5  # the fixed points on the masks' outline: a polygon within this (pixels) of the outline
CLEARANCE = 0.5  # a point moves at most this share of its distance to the nearest fixed point
FOLD_SHRINK = 0.7  # when a move would fold a triangle, every move is multiplied by this and tried again


@dataclass(frozen=True)
class PgdSettings:
    steps: int = 20
    eps: float = 8.0  # per-pixel bound, 0..255 units
    step_size: float = 1.5


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit vectors along the eye line (image left to right) and across it (down), and the iod."""
    along = landmarks[42:48].mean(axis=0) - landmarks[36:42].mean(axis=0)
    along = along / max(float(np.linalg.norm(along)), 1e-6)
    return along, np.array([-along[1], along[0]]), max(inter_ocular(landmarks), 1.0)


# The landmarks each part's edit moves (the lips' inner outline moves with the outer one).
MOVED_LANDMARKS: dict[str, tuple[int, ...]] = {
    "eyebrows": tuple(range(17, 27)), "eyes": tuple(range(36, 48)), "nose": tuple(range(27, 36)), "lips": tuple(range(48, 68)),
}


def control_points(landmarks: np.ndarray, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x 2 points where they are, N x 2 where the edit moves them): first the part's landmarks of
    :data:`MOVED_LANDMARKS`, in that order, then its helper points."""
    along, down, iod = face_frame(landmarks)
    points = landmarks[list(MOVED_LANDMARKS[part])].astype(np.float64)
    if part == "eyebrows":
        helpers, helper_targets, targets = [], [], points.copy()
        for group in PART_LANDMARKS[part]:
            rows = [MOVED_LANDMARKS[part].index(index) for index in group]
            upper = points[rows]
            arch = np.array(BROW_ARCH if group[0] == 17 else BROW_ARCH[::-1])[:, None]  # 17 and 26 are the outer ends
            lift, lower_lift = -down * BROW_LIFT * iod * arch, -down * BROW_LOWER_LIFT * iod * arch
            lower = upper + down * BROW_DEPTH * iod
            ends = [0, len(group) - 1]
            tips = upper[ends] + (upper[ends] - upper[[1, len(group) - 2]]) * 0.5  # the brow's tails, beyond its ends
            tips_lower = tips + down * BROW_DEPTH * iod * 0.6
            targets[rows] = upper + lift
            helpers += [lower, tips, tips_lower]
            helper_targets += [lower + lower_lift, tips + lift[ends], tips_lower + lower_lift[ends]]
        return np.concatenate([points, *helpers]), np.concatenate([targets, *helper_targets])
    if part == "eyes":
        targets = points.copy()
        for rows in (slice(0, 6), slice(6, 12)):  # landmarks 36-41, 42-47: corners first and fourth
            eye = points[rows]
            axis = (eye[3] - eye[0]) / max(float(np.linalg.norm(eye[3] - eye[0])), 1e-6)
            across = np.array([-axis[1], axis[0]])
            offset = (eye - eye[0]) @ across  # signed distance from the corner-to-corner line
            along_eye = (eye - eye[0]) @ axis
            shift = (along_eye - along_eye.mean()) * (1 - EYE_WIDTH)  # along the line, toward the eye's middle
            targets[rows] = eye - np.outer(offset * (1 - EYE_OPENING), across) - np.outer(shift, axis)
        return points, targets
    if part == "nose":
        root = landmarks[27]
        wings = np.stack([landmarks[31] - along * NOSE_WING * iod, landmarks[35] + along * NOSE_WING * iod,
                          landmarks[31] - (along + down) * NOSE_WING * iod, landmarks[35] + (along - down) * NOSE_WING * iod])
        points = np.concatenate([points, wings])
        midline = float(((landmarks[27:31] - root) @ along).mean())
        x, y = (points - root) @ along, (points - root) @ down
        return points, root + np.outer(midline + (x - midline) * NOSE_WIDTH, along) + np.outer(y * NOSE_LENGTH, down)
    if part == "lips":
        outer = landmarks[48:60]
        centre = outer.mean(axis=0)
        radial = outer - centre
        rim = outer + radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-6) * LIPS_RIM * iod
        points = np.concatenate([points, rim])
        anchor = centre + down * LIPS_RISE * float((landmarks[51] - centre) @ down)
        x, y = (points - anchor) @ along, (points - anchor) @ down
        return points, anchor + np.outer(x * LIPS_SCALE[0], along) + np.outer(y * LIPS_SCALE[1], down)
    raise ValueError(f"unknown part {part!r}")


def target_landmarks(landmarks: np.ndarray, parts: Sequence[str]) -> np.ndarray:
    """The 68 landmarks with those of the chosen parts where the edit moves them (before any shrinking
    of :func:`warp_maps`, which nearby fixed points or folds can cause)."""
    moved = np.array(landmarks, np.float64)
    for part in parts:
        _, targets = control_points(landmarks, part)
        moved[list(MOVED_LANDMARKS[part])] = targets[:len(MOVED_LANDMARKS[part])]
    return moved


def _ring(region: np.ndarray) -> np.ndarray:
    """The vertices of polygons that follow every outline (outer and holes) of a boolean region."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    points = [cv2.approxPolyDP(contour, RING_TOLERANCE, True)[:, 0, :] for contour in contours]
    return np.concatenate(points).astype(np.float64) if points else np.zeros((0, 2))


def _folds(sources: np.ndarray, targets: np.ndarray) -> bool:
    """True when some triangle of the targets' Delaunay triangulation (the one the piecewise-affine
    transform is built on) is flipped or squashed to a sliver where the points come from."""
    triangles = Delaunay(targets).simplices

    def area(points: np.ndarray) -> np.ndarray:
        a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    before, after = area(sources), area(targets)
    moving = np.any(np.abs(targets - sources)[triangles].sum(axis=2) > 0, axis=1)
    return bool(np.any(moving & ((before * after <= 0) | (np.abs(before) < 0.05 * np.abs(after)))))


def warp_maps(landmarks: np.ndarray, parts: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(map_x, map_y, moved)``: the backward map (output pixel -> crop point, float32 size x size
    each, for ``cv2.remap``) and where it differs from the identity (inside the parts' masks)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    map_x, map_y = xs.copy(), ys.copy()
    parts = list(dict.fromkeys(parts))
    if not parts:
        return map_x, map_y, np.zeros((size, size), bool)
    region = np.maximum.reduce([part_mask(landmarks, part, size) for part in parts]) > 0
    moving = [control_points(landmarks, part) for part in parts]
    sources = np.concatenate([source for source, _ in moving])
    targets = np.concatenate([target for _, target in moving])

    def on_region(points: np.ndarray) -> np.ndarray:
        column, row = (np.clip(np.round(points[:, axis]).astype(int), 0, size - 1) for axis in (0, 1))
        return region[row, column]

    moving_indices = {index for part in parts for index in MOVED_LANDMARKS[part]}
    still = landmarks[[index for index in range(len(landmarks)) if index not in moving_indices]]
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    # The ring, the still landmarks inside it, and the crop's corners (so the mesh covers every pixel).
    fixed = np.concatenate([_ring(region), still[on_region(still)], corners])
    # A moving point outside the region, on top of a fixed point or of an earlier moving point would pin
    # or tear the warp: drop it. One close to a fixed point moves less (at most CLEARANCE of the gap).
    clearance = np.min(np.linalg.norm(sources[:, None] - fixed[None], axis=2), axis=1)
    gaps = np.linalg.norm(sources[:, None] - sources[None], axis=2) + np.triu(np.full((len(sources),) * 2, np.inf))
    keep = on_region(sources) & (clearance >= 2.0) & (gaps.min(axis=1) >= 0.5)
    move = targets - sources
    length = np.maximum(np.linalg.norm(move, axis=1), 1e-9)
    targets = sources + move * np.minimum(1.0, CLEARANCE * clearance / length)[:, None]
    sources, targets = sources[keep], targets[keep]
    points = np.concatenate([sources, fixed])
    pixels = np.stack([xs[region], ys[region]], axis=1).astype(np.float64)
    with one_blas_thread():
        for _ in range(8):
            destination = np.concatenate([targets, fixed])
            # From the output's points to the crop's: on the output's pixels it says where each comes from.
            transform = piecewise_affine(destination, points)
            if transform is not None and not _folds(points, destination):
                break
            targets = sources + (targets - sources) * FOLD_SHRINK
        else:
            return map_x, map_y, np.zeros((size, size), bool)
        origin = transform(pixels)
    map_x[region], map_y[region] = origin[:, 0], origin[:, 1]
    moved = (np.abs(map_x - xs) > 1e-3) | (np.abs(map_y - ys) > 1e-3)
    map_x[~moved], map_y[~moved] = xs[~moved], ys[~moved]
    return map_x, map_y, moved


def warp_parts(crop: np.ndarray, landmarks: np.ndarray, parts: Sequence[str]) -> np.ndarray:
    """The crop with the chosen parts' landmarks moved (:func:`control_points`); pixels outside every
    part mask unchanged."""
    map_x, map_y, moved = warp_maps(landmarks, parts, crop.shape[0])
    warped = cv2.remap(crop, map_x, map_y, interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return np.where(moved[..., None], warped, crop)


@dataclass
class PgdResult:
    images: torch.Tensor  # [B, 3, S, S] float 0..255, rounded to integers
    score: torch.Tensor  # [B] the recogniser's score of the final images (cosine or distance)
    steps_taken: int


def identity_pgd(images: torch.Tensor, masks: torch.Tensor, model: IdentityModel, reference: Reference,
                 settings: PgdSettings) -> PgdResult:
    """Signed-gradient descent on the identity hinge, inside ``masks`` [B, 1, S, S], within ``eps``.

    ``images`` [B, 3, S, S] float 0..255 are candidates of one face (``reference`` is its original).
    Stops early once every candidate's hinge is zero.
    """
    start = images.detach().float()
    delta = torch.zeros_like(start)
    steps = 0
    for steps in range(settings.steps):
        delta.requires_grad_(True)
        current = (start + delta * masks).clamp(0, 255)
        hinge = model.hinge(model.embed(current, reference), reference)
        if not bool((hinge > 0).any()):
            break
        (gradient,) = torch.autograd.grad(hinge.sum(), delta)
        with torch.no_grad():
            delta = (delta - settings.step_size * gradient.sign()).clamp(-settings.eps, settings.eps)
    else:
        steps = settings.steps
    with torch.no_grad():
        final = (start + delta.detach() * masks).clamp(0, 255).round()
        score = model.score(model.embed(final, reference), reference)
    return PgdResult(final, score, steps)
