"""What FALCO's two loss networks see: the project's one preprocessing, or the authors' inputs exactly.

``corrected`` (the default) feeds the real crop and the generated face through the same transforms:
both in [-1, 1] to ArcFace (:func:`anonymize.models.arcface.arcface_input`) and, for FaRL, resized to
224, brought to [0, 1] and normalised with CLIP's mean and std, as FaRL was trained
(:meth:`anonymize.models.farl.FaRLEncoder.preprocess`).

``reference`` reproduces the inputs of the authors' code (chi0tzp/FALCO, ``anonymize.py`` with
``lib/id_loss.py`` and ``lib/attr_loss.py``): the real image comes from ``ToTensor``, in [0, 1]; the
generated one is the raw generator output, in [-1, 1]; both go as they are to ArcFace (the same
resize to 256, inner-face crop and pooling to 112) and to FaRL (resize to 224 only, no CLIP
normalisation). The two sides then differ by a range shift, so the identity cosine and the token
L1 of an unchanged face are not 1 and 0, and the attribute term has another scale than under
``corrected``: ``lambda_attr = 0.1`` was tuned by the authors on these inputs, which is why this mode
exists (``benchmarks/falco_loss_balance.py`` measures the ratio of the terms under both).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from anonymize.methods.latent.optimize import LossNetworks, Targets, autocast_for, embed_faces
from anonymize.models.images import CanonicalImages

Preprocessing = Literal["corrected", "reference"]
PREPROCESSINGS: tuple[str, ...] = ("corrected", "reference")


def reference_real(real: CanonicalImages) -> CanonicalImages:
    """The real crop in the authors' range: ``ToTensor``'s [0, 1] (carried in the canonical wrapper on purpose)."""
    return CanonicalImages((real.tensor + 1.0) * 0.5)


def reference_embeddings(images: CanonicalImages, networks: LossNetworks) -> tuple[Tensor, Tensor]:
    """ArcFace identities and FaRL tokens of ``images`` in whatever range they come, without CLIP normalisation.

    ArcFace's own input transform (resize to 256, inner crop, pooling) is linear and range-blind, which
    is the authors' ``IDLoss``; FaRL gets the 224 px resize only, the authors' ``AttrLoss`` transform."""
    identity = networks.arcface(images)
    tokens = networks.farl.encode(images.resized(networks.farl.config.input_size).tensor).tokens
    return identity, tokens


def embed_for_loss(images: CanonicalImages, networks: LossNetworks, preprocessing: Preprocessing,
                   bf16: bool) -> tuple[Tensor, Tensor]:
    """Identities [B, E] and tokens [B, T, C] (float32) of generated faces, as the chosen preprocessing feeds them."""
    if preprocessing == "corrected":
        return embed_faces(images, networks, bf16)
    with autocast_for(images.tensor.device, bf16):
        identity, tokens = reference_embeddings(images, networks)
    return identity.float(), tokens.float()


@torch.no_grad()
def falco_targets(real: CanonicalImages, networks: LossNetworks, preprocessing: Preprocessing,
                  bf16: bool = False) -> Targets:
    """The real crops' identities and tokens, fed as the chosen preprocessing feeds the real side."""
    side = real if preprocessing == "corrected" else reference_real(real)
    identity, tokens = embed_for_loss(side, networks, preprocessing, bf16)
    return Targets(identity, tokens)
