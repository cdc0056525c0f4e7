"""Warp a face so its landmarks land on another shape: piecewise-affine over a Delaunay triangulation.

The landmarks and a ring of fixed points on the image border are triangulated (scikit-image's
:class:`~skimage.transform.PiecewiseAffineTransform`), so every pixel of the image lies in a triangle:
inside the face, texture moves with the features (an eye stays an eye); at the border nothing moves.
The backward map is evaluated once on the pixel grid and applied with OpenCV's ``remap``. Of dlib's 68
points the inner lip contour is left out (it folds onto the outer one when the mouth closes).
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
from skimage.transform import PiecewiseAffineTransform

BORDER_POINTS_PER_SIDE = 4  # fixed points on each side of the image (corners included)


def border_ring(width: int, height: int, per_side: int = BORDER_POINTS_PER_SIDE) -> np.ndarray:
    """Points along the image border (x, y), corners included, that the warp never moves."""
    xs = np.linspace(0, width - 1, per_side + 1)
    ys = np.linspace(0, height - 1, per_side + 1)
    top = np.column_stack([xs, np.zeros_like(xs)])
    bottom = np.column_stack([xs, np.full_like(xs, height - 1)])
    left = np.column_stack([np.zeros_like(ys[1:-1]), ys[1:-1]])
    right = np.column_stack([np.full_like(ys[1:-1], width - 1), ys[1:-1]])
    return np.concatenate([top, bottom, left, right])


def backward_map(source: np.ndarray, destination: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel, where to read it in the input: ``destination`` points read from ``source`` points.

    ``source`` and ``destination`` are K x 2 (x, y) in pixels, inside the image. Returns float32
    ``(map_x, map_y)`` of shape height x width for :func:`cv2.remap`.
    """
    ring = border_ring(width, height)
    source, destination = _without_inner_lips(source), _without_inner_lips(destination)
    inside = _inside(np.asarray(destination, np.float64), width, height)
    source_points = np.concatenate([np.asarray(source, np.float64)[inside], ring])
    destination_points = np.concatenate([np.asarray(destination, np.float64)[inside], ring])
    transform = piecewise_affine(destination_points, source_points)
    if transform is None:
        raise ValueError(f"no piecewise-affine warp through these {len(source_points)} points")
    ys, xs = np.mgrid[0:height, 0:width]
    with one_blas_thread():
        read = transform(np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64))
    map_x = read[:, 0].reshape(height, width).astype(np.float32)
    map_y = read[:, 1].reshape(height, width).astype(np.float32)
    return map_x, map_y


def warp_to_shape(image: np.ndarray, source: np.ndarray, destination: np.ndarray) -> np.ndarray:
    """``image`` warped so that what lies at ``source`` lands at ``destination`` (same size, border fixed)."""
    height, width = image.shape[:2]
    map_x, map_y = backward_map(source, destination, width, height)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def source_density(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Source pixels per output pixel of a backward map (its Jacobian's determinant): below 1 where the warp
    stretches a small area of the input over a larger one (the far cheek of a turned face), so detail there
    is thin."""
    dx_dx, dx_dy = np.gradient(map_x, axis=1), np.gradient(map_x, axis=0)
    dy_dx, dy_dy = np.gradient(map_y, axis=1), np.gradient(map_y, axis=0)
    return np.abs(dx_dx * dy_dy - dx_dy * dy_dx).astype(np.float32)


def _without_inner_lips(points: np.ndarray) -> np.ndarray:
    """68 iBUG landmarks less the inner lip contour (60-67): on a closed mouth it lies on the outer one and
    on itself, and points that meet in one shape but not the other have no piecewise-affine map (the
    mouth's inside then follows the outer lips)."""
    points = np.asarray(points, np.float64)
    return points[:60] if len(points) == 68 else points


def _inside(points: np.ndarray, width: int, height: int, margin: float = 1.0) -> np.ndarray:
    """Landmarks strictly inside the border ring (one outside would fold the triangulation)."""
    return ((points[:, 0] > margin) & (points[:, 0] < width - 1 - margin)
            & (points[:, 1] > margin) & (points[:, 1] < height - 1 - margin))


def piecewise_affine(source: np.ndarray, destination: np.ndarray) -> PiecewiseAffineTransform | None:
    """scikit-image's piecewise-affine transform taking ``source`` points to ``destination`` points (over the
    Delaunay triangulation of ``source``), None when it cannot be estimated; scikit-image 0.22 to 0.26+."""
    if hasattr(PiecewiseAffineTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = PiecewiseAffineTransform.from_estimate(source, destination)
        return transform if transform else None
    transform = PiecewiseAffineTransform()
    return transform if transform.estimate(source, destination) else None


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Evaluating the mesh applies one small affine map per triangle: with OpenBLAS's threads on a busy
    machine that is about 20x slower than with one thread (scikit-learn brings threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")
