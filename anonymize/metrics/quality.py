"""Image quality outside the faces: a paste-back anonymizer must leave the background as it was.

PSNR (over RGB) and SSIM (on luma, Gaussian window of sigma 1.5 as in Wang et al. 2004, constants
K1 = 0.01, K2 = 0.03) are averaged over the pixels outside every face. A face's region is its box
grown by ``FACE_MARGIN`` of its size on each side: the pasted region (an ellipse in the aligned
crop, plus its feathered edge) reaches beyond a detector's tight box, above all towards the
forehead and chin. Identical pixels give an infinite PSNR; it is reported as ``PSNR_IDENTICAL_DB``
so the numbers stay plain JSON. The same two measures inside each face's own box (no margin) say
how much of the face itself survived (CFA-Net Table 3 reports them so).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[float, float, float, float]

FACE_MARGIN = 0.5
PSNR_IDENTICAL_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def outside_faces_mask(shape: tuple[int, ...], boxes: Sequence[Box], margin: float = FACE_MARGIN) -> np.ndarray:
    """H x W bool: True where no (grown) face box covers the pixel."""
    height, width = shape[:2]
    mask = np.ones((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        grow_x, grow_y = (x1 - x0) * margin, (y1 - y0) * margin
        left, top = max(int(np.floor(x0 - grow_x)), 0), max(int(np.floor(y0 - grow_y)), 0)
        right, bottom = min(int(np.ceil(x1 + grow_x)), width), min(int(np.ceil(y1 + grow_y)), height)
        if right > left and bottom > top:
            mask[top:bottom, left:right] = False
    return mask


def psnr(original: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR in dB over the masked pixels (None when the mask is empty)."""
    if not mask.any():
        return None
    difference = original[mask].astype(np.float64) - output[mask].astype(np.float64)
    mse = float(np.mean(difference**2))
    if mse == 0.0:
        return PSNR_IDENTICAL_DB
    return min(PSNR_IDENTICAL_DB, 10.0 * np.log10(255.0**2 / mse))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Float32 keeps large photos affordable; its precision is ample next to SSIM's constants."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def ssim_map(original: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of the two images' luma (H x W, float32)."""
    a, b = _luma(original), _luma(output)

    def smooth(values: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(values, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mean_a, mean_b = smooth(a), smooth(b)
    var_a = smooth(a * a) - mean_a**2
    var_b = smooth(b * b) - mean_b**2
    covariance = smooth(a * b) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + _C1) * (2 * covariance + _C2)
    denominator = (mean_a**2 + mean_b**2 + _C1) * (var_a + var_b + _C2)
    return numerator / denominator


def ssim(original: np.ndarray, output: np.ndarray, mask: np.ndarray, precomputed: np.ndarray | None = None) -> float | None:
    """Mean SSIM over the masked pixels (None when the mask is empty); ``precomputed``: the images' ssim_map."""
    if not mask.any():
        return None
    return float((ssim_map(original, output) if precomputed is None else precomputed)[mask].mean())


# Wang, Simoncelli & Bovik 2003, the exponents fitted to their viewers, finest scale first (they sum to 1).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _luminance_and_contrast_structure(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean luminance term l and mean contrast-structure term c*s of two luma images (same window as :func:`ssim_map`)."""

    def smooth(values: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(values, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mean_a, mean_b = smooth(a), smooth(b)
    var_a, var_b = smooth(a * a) - mean_a**2, smooth(b * b) - mean_b**2
    covariance = smooth(a * b) - mean_a * mean_b
    luminance = (2 * mean_a * mean_b + _C1) / (mean_a**2 + mean_b**2 + _C1)
    contrast_structure = (2 * covariance + _C2) / (var_a + var_b + _C2)
    return float(luminance.mean()), float(contrast_structure.mean())


def ms_ssim(original: np.ndarray, output: np.ndarray, box: Box | None = None) -> float | None:
    """MS-SSIM (Wang, Simoncelli & Bovik 2003) of the two images' luma, or of their ``box`` crops.

    Five scales: at each, the mean contrast-structure term c*s; the luminance term l at the coarsest only;
    between scales a 2 x 2 average and a halving (the paper's low-pass and downsampling). The result is
    l_5^w5 * prod_j (c*s)_j^wj with :data:`MS_SSIM_WEIGHTS`; a negative term counts as 0 (as common
    implementations do: a real power of a negative mean is undefined). Same Gaussian window and
    constants as :func:`ssim_map`. None when the region is smaller than 2^4 x the window's radius
    (the coarsest scale would hold fewer pixels than the window's centre).
    """
    if box is not None:
        height, width = original.shape[:2]
        x0, y0, x1, y1 = box
        left, top = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        right, bottom = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        original, output = original[top:bottom, left:right], output[top:bottom, left:right]
    a, b = _luma(original).astype(np.float64), _luma(output).astype(np.float64)  # float64: a flat region's variance is 0
    scales = len(MS_SSIM_WEIGHTS)
    if min(a.shape[:2]) < 2 ** (scales - 1) * (SSIM_WINDOW // 2 + 1):
        return None
    score = 1.0
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        luminance, contrast_structure = _luminance_and_contrast_structure(a, b)
        score *= max(contrast_structure, 0.0) ** weight
        if scale == scales - 1:
            score *= max(luminance, 0.0) ** weight
        else:
            even_h, even_w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:even_h, :even_w].reshape(even_h // 2, 2, even_w // 2, 2).mean(axis=(1, 3))
            b = b[:even_h, :even_w].reshape(even_h // 2, 2, even_w // 2, 2).mean(axis=(1, 3))
    return float(score)


def face_box_mask(shape: tuple[int, ...], box: Box) -> np.ndarray:
    """H x W bool: True inside the face box itself (no margin), where CFA-Net measures SSIM and PSNR."""
    return ~outside_faces_mask(shape, [box], margin=0.0)
