"""ArcFace IR-SE50 (InsightFace, TreB1eN's PyTorch port): the identity embedding of FALCO's ID loss.

Checkpoint ``model_ir_se50.pth`` is a bare state dict: the trunk described in
:mod:`anonymize.models.irse` (``input_layer.*``, ``body.0.*`` .. ``body.23.*``) and the head
``output_layer``, a Sequential whose parameterised members are

* ``output_layer.0``: BatchNorm2d over the last stage's 512 channels,
* ``output_layer.3``: Linear from the flattened 512 x 7 x 7 map to the 512-d embedding,
* ``output_layer.4``: BatchNorm1d(512) (with ``weight``/``bias`` when affine, as in this file),

with a Dropout at index 1 and a Flatten at index 2. The embedding is divided by its L2 norm.
Widths, unit count, the final map side (7) and hence the input side (7 * 2^stages = 112) are read from
the tensors, so tiny test networks load through the same code.

Preprocessing (:func:`arcface_input`) follows the pSp / e4e / FALCO ID loss for 256 x 256 FFHQ-aligned
faces in [-1, 1]: bring the face to 256 x 256 (antialiased bilinear, the reference's
``Resize(256, antialias=True)``), take rows 35..222 and columns 32..219 (the inner face), then
adaptive-average-pool that 188 x 188 crop to the network's input side (the reference's ``face_pool``).
It is the only way into the network and it only accepts
:class:`CanonicalImages`, so real and generated faces cannot be fed in different ranges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from anonymize.models.images import CanonicalImages
from anonymize.models.irse import IRTrunk, UnitSpec, infer_block_specs, with_batchnorm_counters

FACE_REFERENCE_SIZE = 256
FACE_CROP_ROWS = slice(35, 223)
FACE_CROP_COLS = slice(32, 220)
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


def arcface_from_state_dict(state: Mapping[str, torch.Tensor], source: str) -> ArcFace:
    """Build an ArcFace shaped like ``state`` and load it strictly."""
    specs = infer_block_specs(state, source)
    linear = state.get("output_layer.3.weight")
    if not isinstance(linear, torch.Tensor) or linear.ndim != 2:
        raise CheckpointError(f"{source}: missing the embedding layer output_layer.3.weight")
    width = specs[-1].depth
    final_side = math.isqrt(int(linear.shape[1]) // width)
    if final_side * final_side * width != linear.shape[1]:
        raise CheckpointError(f"{source}: output_layer.3.weight takes {linear.shape[1]} inputs, not {width} x s x s")
    model = ArcFace(specs, final_side, int(linear.shape[0]), affine_output_norm="output_layer.4.weight" in state)
    load_state_dict_strict(model, with_batchnorm_counters(model, state), source)
    model.requires_grad_(False)
    return model


def load_arcface(path: Path) -> ArcFace:
    """Load ``model_ir_se50.pth`` (a bare state dict) as a frozen, eval-mode ArcFace."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a bare state dict of tensors (InsightFace IR-SE50)")
    return arcface_from_state_dict(state, str(path))
