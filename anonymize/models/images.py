"""The one canonical image form every network takes: float NCHW in [-1, 1].

The FALCO reference feeds the real image in one range and the generated image in another to the
same loss network. Here a network only accepts :class:`CanonicalImages`, and the only ways to make
one are the constructors below, so both sides of every loss are preprocessed identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CanonicalImages:
    """A batch of RGB images, float NCHW, values in [-1, 1] (gradients may flow through)."""

    tensor: torch.Tensor

    def __post_init__(self) -> None:
        t = self.tensor
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"CanonicalImages needs an N x 3 x H x W tensor, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"CanonicalImages needs a float tensor, got {t.dtype}")

    @classmethod
    def from_uint8(cls, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> CanonicalImages:
        """From uint8 RGB images, NHWC (a batch) or HWC (one image)."""
        t = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if t.dtype != torch.uint8:
            raise TypeError(f"from_uint8 needs uint8 pixels, got {t.dtype}")
        if t.ndim == 3:
            t = t.unsqueeze(0)
        t = t.to(device).permute(0, 3, 1, 2).float()
        return cls(t / 127.5 - 1.0)

    @classmethod
    def from_generator(cls, output: torch.Tensor) -> CanonicalImages:
        """From a StyleGAN2 synthesis output (nominally [-1, 1], may overshoot): clamped, differentiable inside."""
        return cls(output.clamp(-1.0, 1.0))

    @property
    def size(self) -> tuple[int, int]:
        return int(self.tensor.shape[2]), int(self.tensor.shape[3])

    def resized(self, size: int | tuple[int, int]) -> CanonicalImages:
        """Area-averaged when shrinking (as the reference's pooling), bilinear when growing."""
        target = (size, size) if isinstance(size, int) else size
        if target == self.size:
            return self
        if target[0] <= self.size[0] and target[1] <= self.size[1]:
            return CanonicalImages(F.adaptive_avg_pool2d(self.tensor, target))
        return CanonicalImages(F.interpolate(self.tensor, size=target, mode="bilinear", align_corners=False))

    def to_uint8(self) -> np.ndarray:
        """NHWC uint8, for writing."""
        t = ((self.tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return t.permute(0, 2, 3, 1).cpu().numpy()
