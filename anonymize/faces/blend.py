"""Put a new face into an aligned crop along the face's own outline, in the crop's lighting and colour.

A face replaced as a square shows a seam and brings the other photos' background with it; here the
region follows the face (the 68 landmarks' hull raised to the forehead, feathered inward, as the
paste-back's ``hull`` region), and the new face takes the target skin's per-channel mean and
spread inside that region before it is blended, so its lighting and skin tone are the target's.
"""

from __future__ import annotations

import cv2
import numpy as np

from anonymize.faces.paste import region_mask

FACE_FEATHER = 0.03  # soft edge of the face region, fraction of the crop side
SPREAD_LIMITS = (0.5, 2.0)  # the colour match never scales a channel's spread beyond these factors


def face_region_mask(shape: np.ndarray, size: int, scale: float = 1.0, feather: float = FACE_FEATHER) -> np.ndarray:
    """size x size float32 in [0, 1]: the face outline of 68 landmarks plus forehead, scaled about its
    centre by ``scale``, feathered inside it."""
    return region_mask(size, "hull", scale, feather, landmarks=np.asarray(shape, np.float64))


def match_colour(face: np.ndarray, face_region: np.ndarray, target: np.ndarray, target_region: np.ndarray) -> np.ndarray:
    """``face`` (uint8 RGB) with each channel's mean and spread inside ``face_region`` set to ``target``'s
    inside ``target_region`` (boolean masks); float32 result, clipped to 0..255."""
    source_pixels = face[face_region].astype(np.float64)
    target_pixels = target[target_region].astype(np.float64)
    if len(source_pixels) < 2 or len(target_pixels) < 2:
        return face.astype(np.float32)
    source_mean, target_mean = source_pixels.mean(axis=0), target_pixels.mean(axis=0)
    spread = target_pixels.std(axis=0) / np.maximum(source_pixels.std(axis=0), 1e-6)
    spread = np.clip(spread, *SPREAD_LIMITS)
    matched = (face.astype(np.float64) - source_mean) * spread + target_mean
    return np.clip(matched, 0, 255).astype(np.float32)


def blend(target: np.ndarray, face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * face + (1 - mask) * target`` as uint8; where the mask is 0 the target stays bit for bit."""
    weight = mask.astype(np.float32)[..., None]
    mixed = weight * face.astype(np.float32) + (1.0 - weight) * target.astype(np.float32)
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    untouched = mask <= 0
    out[untouched] = target[untouched]
    return out


def laplacian_variance(image: np.ndarray, region: np.ndarray) -> float:
    """Variance of the grey image's 3 x 3 Laplacian inside ``region`` (boolean): how much fine detail it has.

    The Laplacian is taken on the whole image first, so pixels at the region's edge see their real neighbours.
    """
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    grey = pixels if pixels.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    values = cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F, ksize=1)[np.asarray(region, bool)]
    return float(values.var()) if values.size else 0.0
