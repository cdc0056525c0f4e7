"""Folders of reference faces (camouflage's ``reference=DIR``, CFA's ``gallery=DIR``), read one way.

Each image of the folder (in :func:`anonymize.io.walk.image_files` order, which is its index) is
taken as an aligned face crop: decoded, resized to the method's crop size with area interpolation
and handed to the method's ``embed`` alone (batch 1, so a reference's embedding does not depend on
the folder's other images). An unreadable image stops the run with one line naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch

from anonymize.io.decode import ImageDecodeError, decode_image
from anonymize.io.walk import image_files
from anonymize.methods.base import MethodError
from anonymize.models.images import CanonicalImages

Embedding = TypeVar("Embedding")


def reference_crop(path: Path, size: int, method: str, what: str) -> np.ndarray:
    """The image at ``path`` as a ``size`` x ``size`` uint8 RGB crop; a MethodError if it cannot be read."""
    try:
        rgb = decode_image(path).rgb
    except ImageDecodeError as exc:
        raise MethodError(f"method {method!r}: {what} image {path}: cannot be read ({exc.cause})") from None
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def embed_folder(folder: Path, size: int, device: torch.device, embed: Callable[[CanonicalImages], Embedding],
                 method: str, what: str) -> list[tuple[Path, Embedding]]:
    """(path, ``embed`` of its [1, 3, size, size] crop) for every image of ``folder``, in index order.

    ``what`` names the folder in errors ("reference", "gallery")."""
    embedded = []
    for path in image_files(folder):
        crop = reference_crop(path, size, method, what)
        embedded.append((path, embed(CanonicalImages.from_uint8(crop[None], device))))
    return embedded
