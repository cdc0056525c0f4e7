"""The one canonical image form every network takes: float NCHW in [-1, 1].

The FALCO reference feeds the real image in one range and the generated image in another to the
same loss network. Here a network only accepts :class:`CanonicalImages`, and the only ways to make
one are the constructors below, so both sides of every loss are preprocessed identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

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
        """Antialiased bilinear resizing (torchvision's ``Resize(antialias=True)``, as the FALCO reference)."""
        target = (size, size) if isinstance(size, int) else size
        if target == self.size:
            return self
        return CanonicalImages(separable_resize(self.tensor, target, "bilinear"))

    def pooled(self, size: int | tuple[int, int]) -> CanonicalImages:
        """Adaptive average pooling (the reference's ``face_pool`` before ArcFace)."""
        target = (size, size) if isinstance(size, int) else size
        if target == self.size:
            return self
        return CanonicalImages(separable_resize(self.tensor, target, "area"))

    def to_uint8(self) -> np.ndarray:
        """NHWC uint8, for writing."""
        t = ((self.tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return t.permute(0, 2, 3, 1).cpu().numpy()


ResizeKind = Literal["bilinear", "area"]


def separable_resize(tensor: torch.Tensor, size: tuple[int, int], kind: ResizeKind) -> torch.Tensor:
    """Resize NCHW ``tensor`` to ``size``: antialiased bilinear or adaptive average pooling.

    Both are separable linear maps. Normally torch's kernels run them; with deterministic algorithms
    on CUDA (``--deterministic``), whose backward passes of both kernels refuse to run, they run as two
    matrix products with the same weights (read off the kernels themselves), which are deterministic.
    """
    if tensor.is_cuda and torch.are_deterministic_algorithms_enabled():
        return resize_by_matrices(tensor, size, kind)
    if kind == "area":
        return F.adaptive_avg_pool2d(tensor, size)
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)


def resize_by_matrices(tensor: torch.Tensor, size: tuple[int, int], kind: ResizeKind) -> torch.Tensor:
    """The same resize as :func:`separable_resize`, as ``rows @ x @ columns.T``."""
    rows = resize_matrix(int(tensor.shape[2]), size[0], kind).to(tensor.device, tensor.dtype)
    columns = resize_matrix(int(tensor.shape[3]), size[1], kind).to(tensor.device, tensor.dtype)
    return torch.matmul(torch.matmul(rows, tensor), columns.T)


@lru_cache(maxsize=32)
def resize_matrix(source: int, target: int, kind: ResizeKind) -> torch.Tensor:
    """[target, source] weights of a 1-D resize: the kernel applied to the unit impulses."""
    # Channel i holds an impulse at row i; two identical columns, since the antialiased kernel
    # mishandles an image one pixel wide.
    impulses = torch.eye(source, dtype=torch.float64).view(1, source, source, 1).expand(1, source, source, 2)
    if kind == "area":
        response = F.adaptive_avg_pool2d(impulses, (target, 2))
    else:
        response = F.interpolate(impulses.contiguous(), size=(target, 2), mode="bilinear", antialias=True, align_corners=False)
    return response[0, :, :, 0].T.contiguous()
