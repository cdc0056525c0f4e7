"""The blur method's wide Gaussian, computed on a shrunk crop, is the exact Gaussian within a few grey levels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anonymize.io.decode import decode_image
from anonymize.methods.classical import SIGMA_PIXELS_WHEN_SHRUNK, gaussian_blur


@pytest.fixture(scope="module")
def face_crop(shared_dir):
    photo = decode_image(next((shared_dir / "data" / "celeba-ids").rglob("*.jpg"))).rgb
    return cv2.resize(photo[20:198], (256, 256), interpolation=cv2.INTER_AREA)


def exact_blur(image: np.ndarray, sigma: float, passes: int) -> np.ndarray:
    for _ in range(passes):
        image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return image


@pytest.mark.parametrize(("sigma", "passes"), [(0.08 * 256, 2), (0.05 * 256, 1), (0.3 * 256, 1)])
def test_a_wide_blur_matches_the_exact_gaussian(face_crop, sigma, passes):
    difference = np.abs(gaussian_blur(face_crop, sigma, passes).astype(int) - exact_blur(face_crop, sigma, passes))
    assert difference.max() <= 3 and difference.mean() < 0.5


def test_a_narrow_blur_is_the_exact_gaussian(face_crop):
    sigma = 1.5 * SIGMA_PIXELS_WHEN_SHRUNK  # too narrow to shrink the crop for
    assert np.array_equal(gaussian_blur(face_crop, sigma, 2), exact_blur(face_crop, sigma, 2))


def test_the_blur_keeps_the_shape_and_type_of_odd_sized_crops():
    noise = np.random.default_rng(0).integers(0, 256, (101, 77, 3), dtype=np.uint8)
    blurred = gaussian_blur(noise, 20.0, 2)
    assert blurred.shape == noise.shape and blurred.dtype == np.uint8
    assert blurred.std() < noise.std() / 10  # the noise is gone
