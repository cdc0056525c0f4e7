"""Classical baselines: Gaussian blur, pixelation and a solid mask over the face crop.

They work on the aligned crop like every method; the pipeline's soft face mask decides which
pixels change. Defaults are strong enough that dlib's recogniser no longer matches a face to its
original (tests/test_methods_privacy.py measures it on CelebA identities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from anonymize.methods.base import AnonymizedFace, FaceCrop, Method


class BlurMethod(Method):
    name = "blur"
    summary = 'Gaussian blur of the face region.'
    weights_needed = ()
    uses_torch = False

    @dataclass(frozen=True)
    class Params:
        sigma: float = field(default=0.08, metadata={"help": 'Gaussian sigma as a fraction of the crop side'})
        passes: int = 2

        def validate(self) -> None:
            if not 0 < self.sigma <= 1:
                raise ValueError(f"sigma must be in (0, 1], got {self.sigma}")
            if self.passes < 1:
                raise ValueError(f"passes must be at least 1, got {self.passes}")

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        return [AnonymizedFace(gaussian_blur(face.image, self.params.sigma * face.image.shape[0], self.params.passes))
                for face in faces]


# A wide blur is computed on the crop shrunk so that sigma spans this many of its pixels.
SIGMA_PIXELS_WHEN_SHRUNK = 4.0


def gaussian_blur(image: np.ndarray, sigma: float, passes: int = 1) -> np.ndarray:
    """``passes`` Gaussian blurs of ``sigma`` pixels (mirrored borders).

    A wide Gaussian keeps nothing finer than a few sigma, so it is computed on the image shrunk
    (area average) until sigma spans SIGMA_PIXELS_WHEN_SHRUNK pixels and enlarged back bilinearly:
    the same smooth picture (within a few grey levels) at a small part of the cost of a kernel of
    6 sigma taps at full size (the default blur of a 256 px crop: sigma 20 px, 20 ms a face).
    """
    factor = int(sigma // SIGMA_PIXELS_WHEN_SHRUNK)
    if factor <= 1:
        for _ in range(passes):
            image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        return image
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, round(width / factor)), max(1, round(height / factor))), interpolation=cv2.INTER_AREA)
    for _ in range(passes):
        small = cv2.GaussianBlur(small, (0, 0), sigma * small.shape[1] / width, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


class PixelateMethod(Method):
    name = "pixelate"
    summary = 'Pixelates the face region into coarse blocks.'
    weights_needed = ()
    uses_torch = False

    @dataclass(frozen=True)
    class Params:
        blocks: int = field(default=8, metadata={"help": 'blocks across the crop side'})

        def validate(self) -> None:
            if not 1 <= self.blocks <= 256:
                raise ValueError(f"blocks must be between 1 and 256, got {self.blocks}")

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        results = []
        for face in faces:
            size = face.image.shape[0]
            small = cv2.resize(face.image, (self.params.blocks, self.params.blocks), interpolation=cv2.INTER_AREA)
            results.append(AnonymizedFace(cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)))
        return results


class MaskMethod(Method):
    name = "mask"
    summary = 'Covers the face region with a solid colour.'
    weights_needed = ()
    uses_torch = False

    @dataclass(frozen=True)
    class Params:
        color: str = field(default="000000", metadata={"help": 'hex RGB fill, or "mean" for the crop\'s average colour'})

        def validate(self) -> None:
            if self.color != "mean":
                _hex_to_rgb(self.color)

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        results = []
        for face in faces:
            if self.params.color == "mean":
                fill = face.image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
            else:
                fill = np.array(_hex_to_rgb(self.params.color), np.uint8)
            results.append(AnonymizedFace(np.broadcast_to(fill, face.image.shape).copy()))
        return results


def _hex_to_rgb(value: str) -> tuple[int, int, int]:
    text = value.lstrip("#")
    if len(text) != 6:
        raise ValueError(f"color must be 6 hex digits like ff8800 or 'mean', got {value!r}")
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        raise ValueError(f"color must be 6 hex digits like ff8800 or 'mean', got {value!r}") from None
