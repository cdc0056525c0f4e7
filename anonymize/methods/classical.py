"""Classical baselines: Gaussian blur, pixelation and a solid mask over the face crop.

They work on the aligned crop like every method; the pipeline's soft face mask decides which
pixels change. Defaults are strong enough that dlib's recognizer no longer matches a face to its
original (tests/test_methods_privacy.py measures it on CelebA identities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anonymize.methods.base import AnonymizedFace, FaceCrop, Method


class BlurMethod(Method):
    name = "blur"

    @dataclass(frozen=True)
    class Params:
        sigma: float = 0.08  # Gaussian sigma as a fraction of the crop side
        passes: int = 2

        def validate(self) -> None:
            if not 0 < self.sigma <= 1:
                raise ValueError(f"sigma must be in (0, 1], got {self.sigma}")
            if self.passes < 1:
                raise ValueError(f"passes must be at least 1, got {self.passes}")

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        results = []
        for face in faces:
            crop = face.image
            sigma = self.params.sigma * crop.shape[0]
            for _ in range(self.params.passes):
                crop = cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            results.append(AnonymizedFace(crop))
        return results


class PixelateMethod(Method):
    name = "pixelate"

    @dataclass(frozen=True)
    class Params:
        blocks: int = 8  # blocks across the crop side

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

    @dataclass(frozen=True)
    class Params:
        color: str = "000000"  # hex RGB fill, or "mean" for the crop's average colour

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
