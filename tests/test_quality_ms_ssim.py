"""MS-SSIM (Wang, Simoncelli & Bovik 2003), AnonymousNet's third image-quality measure, on hand-checkable images."""

from __future__ import annotations

import numpy as np
import pytest

from anonymize.metrics.quality import MS_SSIM_WEIGHTS, ms_ssim


def gray(value: float, size: int = 176) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def test_identical_images_score_one_and_the_weights_are_wang_s():
    texture = np.random.default_rng(0).integers(0, 256, (180, 190, 3), dtype=np.uint8)
    assert ms_ssim(texture, texture) == pytest.approx(1.0)
    assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and sum(MS_SSIM_WEIGHTS) == pytest.approx(1.0, abs=2e-4)  # as published


def test_a_flat_brightness_change_is_only_the_coarsest_luminance_term():
    """Flat images: no variance at any scale, so every c*s is C2 / C2 = 1 and only l at scale 5 remains:
    l = (2 * 100 * 110 + C1) / (100^2 + 110^2 + C1), C1 = (0.01 * 255)^2 = 6.5025, raised to 0.1333."""
    expected = ((2 * 100 * 110 + 6.5025) / (100**2 + 110**2 + 6.5025)) ** 0.1333
    assert ms_ssim(gray(100), gray(110)) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.9993958, abs=1e-7)


def test_an_inverted_texture_scores_zero_and_a_small_box_is_not_measured():
    """255 - x inverts every fine-scale structure: c*s < 0, counted as 0, so the product is 0."""
    texture = np.random.default_rng(1).integers(0, 256, (176, 176, 3), dtype=np.uint8)
    assert ms_ssim(texture, 255 - texture) == 0.0
    # A box is measured on its crop; under 16 x 6 = 96 pixels the coarsest scale has no room for the window.
    big = np.zeros((300, 300, 3), np.uint8)
    big[50:250, 60:260] = texture[:1, :1]  # a flat patch inside
    other = big.copy()
    other[50:250, 60:260] = 120
    assert ms_ssim(big, other, (60, 50, 260, 250)) == pytest.approx(ms_ssim(big[50:250, 60:260], other[50:250, 60:260]))
    assert ms_ssim(big, other, (60, 50, 150, 140)) is None
