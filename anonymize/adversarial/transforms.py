"""The attacker's transformations, sampled at every step (expectation over transformation, Athalye et al.
2018; as Fawkes and LowKey use it): a perturbation that survives them survives pipelines it never saw.

One sample draws, for the whole photo region (with probability one half): a rescale (down by a factor in [0.5, 1], back up,
bilinear), a Gaussian blur (sigma in [0, 1] pixel), and, with probability one half, the JPEG encoding
at the run's output quality (straight-through: the forward pass sees the decoded JPEG, the gradient
passes as if the encoding were the identity); and for each face (with probability one half): a shift of up to 15 % of the crop,
a scale change of up to 15 %, a rotation of up to 10 degrees, and (for recognisers with several) one
of the alignments an attacker could use (draw k takes alignment k, so each is attacked at every step). Sample
0 of every step is the identity, so the attack never forgets the pipeline's own alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MAX_SHIFT = 0.15  # of the crop size
MAX_SCALE = 0.15
MAX_ROTATION_DEGREES = 10.0
RESCALE_RANGE = (0.5, 1.0)
MAX_BLUR_SIGMA = 1.0
JPEG_PROBABILITY = 0.5


@dataclass(frozen=True)
class Sample:
    """One draw of the attacker's pipeline."""

    rescale: float = 1.0
    blur_sigma: float = 0.0
    jpeg: bool = False
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the crop size
    scale: float = 1.0
    rotation: float = 0.0  # radians
    alignment: int = 0  # index into the member's alignments (taken modulo their number)

    @property
    def identity(self) -> bool:
        return self == Sample()


def draw(rng: np.random.Generator, jpeg_allowed: bool) -> Sample:
    """One pipeline: the photo-level changes and the crop jitter each happen with probability one half."""
    photo = rng.random() < 0.5
    moved = rng.random() < 0.5
    return Sample(
        rescale=float(rng.uniform(*RESCALE_RANGE)) if photo else 1.0,
        blur_sigma=float(rng.uniform(0.0, MAX_BLUR_SIGMA)) if photo else 0.0,
        jpeg=bool(jpeg_allowed and rng.random() < JPEG_PROBABILITY),
        shift=(float(rng.uniform(-MAX_SHIFT, MAX_SHIFT)), float(rng.uniform(-MAX_SHIFT, MAX_SHIFT))) if moved else (0.0, 0.0),
        scale=float(1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE)) if moved else 1.0,
        rotation=math.radians(float(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))) if moved else 0.0,
    )


def samples(rng: np.random.Generator, count: int, jpeg_allowed: bool) -> list[Sample]:
    """``count`` draws, the first the identity; draw k reads a recogniser's alignment k (modulo their number),
    so every alignment is attacked at every step once ``count`` reaches their number."""
    return [Sample()] + [replace(draw(rng, jpeg_allowed), alignment=index) for index in range(1, max(count, 1))]


def jitter(crop_to_photo: np.ndarray, sample: Sample, size: int) -> np.ndarray:
    """The crop -> photo matrix of a crop moved, scaled and turned about its centre by ``sample``."""
    if sample.scale == 1.0 and sample.rotation == 0.0 and sample.shift == (0.0, 0.0):
        return crop_to_photo
    centre = (size - 1) / 2
    cos, sin = math.cos(sample.rotation) * sample.scale, math.sin(sample.rotation) * sample.scale
    # crop' -> crop: c = centre + S R (c' - centre) + shift
    inner = np.array([[cos, -sin, centre - cos * centre + sin * centre + sample.shift[0] * size],
                      [sin, cos, centre - sin * centre - cos * centre + sample.shift[1] * size],
                      [0.0, 0.0, 1.0]])
    return np.asarray(crop_to_photo, np.float64) @ inner


def _gaussian(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """[C, H, W] blurred by a separable Gaussian (edges repeated): the same at every offset of the grid."""
    kernel = _gaussian(sigma, image.device)
    pad = len(kernel) // 2
    x = F.pad(image[:, None], (pad, pad, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad, pad), mode="replicate")
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0]


def apply(region: torch.Tensor, sample: Sample, jpeg_quality: int) -> torch.Tensor:
    """The photo region [3, H, W] (0..255) as the sampled pipeline would hand it to a recogniser."""
    out = region
    height, width = region.shape[-2:]
    if sample.rescale < 1.0:
        small = (max(8, int(round(height * sample.rescale))), max(8, int(round(width * sample.rescale))))
        out = F.interpolate(out[None], size=small, mode="bilinear", antialias=True, align_corners=False)
        out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)[0]
    if sample.blur_sigma > 0.05:
        out = gaussian_blur(out, sample.blur_sigma)
    if sample.jpeg:
        out = out + (jpeg_round_trip(out, jpeg_quality) - out).detach()
    return out


def jpeg_round_trip(region: torch.Tensor, quality: int) -> torch.Tensor:
    """The region encoded as a JPEG at ``quality`` and decoded again (no gradient of its own)."""
    pixels = region.detach().round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        return region.detach()
    decoded = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(decoded).permute(2, 0, 1).float().to(region.device)
