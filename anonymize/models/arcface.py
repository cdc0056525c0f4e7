"""ArcFace IR-SE50 (InsightFace, TreB1eN's PyTorch port): the identity embedding of FALCO's ID loss.

The network: the trunk of :mod:`anonymize.models.irse` (``input_layer``, ``body``) and the head
``output_layer``, a Sequential of BatchNorm2d over the last stage's channels, Dropout, Flatten, Linear
from the flattened [width, s, s] map to the embedding, and BatchNorm1d; the embedding is divided by
its L2 norm. Shapes for IR-SE50: images -> [N, 3, 112, 112] -> last map [N, 512, 7, 7] -> [N, 512].
The input side is s * 2^stages (:mod:`anonymize.models.legacy.arcface` reads s and the widths off the
checkpoint, so tiny test networks run through the same code).

Preprocessing (:func:`arcface_input`) follows the ``arcface`` contract of :mod:`anonymize.models.registry`,
the pSp / e4e / FALCO ID loss for 256 x 256 FFHQ-aligned faces in [-1, 1]: bring the face to 256 x 256
(antialiased bilinear, the reference's ``Resize(256, antialias=True)``), take rows 35..222 and columns
32..219 (the inner face), then adaptive-average-pool that 188 x 188 crop to the network's input side (the
reference's ``face_pool``). It is the only way into the network and it only accepts
:class:`CanonicalImages`, so real and generated faces cannot be fed in different ranges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.images import CanonicalImages
from anonymize.models.irse import IRTrunk, UnitSpec
from anonymize.models.registry import contract_of


def _inner_face() -> tuple[int, slice, slice]:
    """The registry's framing: the aligned face's side, then the rows and columns of the inner face."""
    contract = contract_of("arcface")
    if contract.reference_size is None or contract.inner_crop is None:
        raise ValueError("the arcface contract must give the reference size and the inner crop")
    (top, bottom), (left, right) = contract.inner_crop
    return contract.reference_size, slice(top, bottom), slice(left, right)


FACE_REFERENCE_SIZE, FACE_CROP_ROWS, FACE_CROP_COLS = _inner_face()
DROPOUT = 0.6  # as the pSp ID loss builds it; inactive because the network always runs in eval mode


def arcface_input(images: CanonicalImages, input_size: int) -> torch.Tensor:
    """The inner-face crop of an aligned face, pooled to the network's input side."""
    reference = images.resized(FACE_REFERENCE_SIZE).tensor
    crop = reference[:, :, FACE_CROP_ROWS, FACE_CROP_COLS]
    return CanonicalImages(crop).pooled(input_size).tensor


class ArcFace(IRTrunk):
    """IR-SE trunk plus embedding head; maps aligned faces to L2-normalised identity vectors.

    A frozen loss network: it stays in eval mode (``train()`` is a no-op) so BatchNorm statistics and
    dropout never change, while gradients still flow to the input images.
    """

    def __init__(self, specs: list[UnitSpec], final_side: int, embedding_dim: int, affine_output_norm: bool = True) -> None:
        super().__init__(specs)
        width = specs[-1].depth
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Dropout(DROPOUT),
            nn.Flatten(),
            nn.Linear(width * final_side * final_side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=affine_output_norm),
        )
        self.input_size = final_side * 2**self.num_stages
        self.embedding_dim = embedding_dim
        super().train(False)

    def train(self, mode: bool = True) -> ArcFace:
        return self

    def forward(self, images: CanonicalImages) -> torch.Tensor:
        if not isinstance(images, CanonicalImages):
            raise TypeError(f"ArcFace takes CanonicalImages (one preprocessing for real and generated faces), got {type(images).__name__}")
        x = arcface_input(images, self.input_size)
        x = self.input_layer(x)
        x = self.body(x)
        return F.normalize(self.output_layer(x), dim=1)

    def embed_with_map(self, images: CanonicalImages) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding and the trunk's last feature map ([N, 512, 7, 7] for IR-SE50), from one pass."""
        if not isinstance(images, CanonicalImages):
            raise TypeError(f"ArcFace takes CanonicalImages, got {type(images).__name__}")
        features = self.body(self.input_layer(arcface_input(images, self.input_size)))
        return F.normalize(self.output_layer(features), dim=1), features
