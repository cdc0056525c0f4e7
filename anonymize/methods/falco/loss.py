"""FALCO's objective, run through the shared W+ loop (:func:`anonymize.methods.latent.optimize.optimise_codes`).

Each face starts from a mixed W+ code: the layers in ``trainable_layers`` (3-7 by default, the
middle resolutions that carry identity) come from its paired fake, every other layer from the e4e
inversion of the real face. Only the trainable layers change; the others are never written to,
so they stay bitwise equal to the inversion. The loss of face i is

    lambda_id * |cos(ArcFace(G(w_i)), ArcFace(x_i)) - m|  +  lambda_attr * sum_t mean_c |F_tc(G(w_i)) - F_tc(x_i)|

where F_tc is channel c of token t of FaRL's last transformer block (before ``ln_post``), for all
197 tokens at ViT-B/16 (CLS + 196 patches): the L1 distance is averaged over channels and summed
over tokens, exactly as the reference's ``AttrLoss`` (one ``nn.L1Loss`` per token, added up), so
``lambda_attr = 0.1`` weighs it as the reference's 0.1 does (the paper gives no weights). What the
networks see is :mod:`.preprocessing`'s: by default both images go through the same transforms;
``preprocessing="reference"`` feeds them as the authors' code does.

Clamping. The written face is the generator's output clamped to [-1, 1]. Under ``corrected`` the
loop's faces are clamped too, so the loss minimised is the loss of what is written (pixels beyond
the range then pass no gradient). Under ``reference`` they are not, as in the authors' loop, so
every pixel passes gradients, but the loss minimised is then the one of an image never written.
Dropping the clamp changes more than the gradients at saturated pixels: on the tiny test generator
(a third of its pixels overshoot; ``test_falco.py``'s three faces, 25 steps, m = 0.5) the written
face's loss fell by 41%, 28% and 56% with the clamp and by 42%, 1% and 48% without, so the default
keeps it.

The reference averages both terms over the faces of its batch (its ID loss adds the per-face terms
at HEAD and divides by the batch size; before commit ad08224 the loop overwrote instead of adding),
and runs at batch 1. Here the per-face losses are summed instead, so each face's gradient is the one
it would get alone; Adam is invariant to that constant factor (up to its epsilon). Batching and
bf16 are the shared loop's (see :mod:`anonymize.methods.latent.optimize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor

from anonymize.methods.falco.preprocessing import Preprocessing, embed_for_loss
from anonymize.methods.latent.optimize import LossNetworks, Targets, attribute_loss, optimise_codes
from anonymize.models.images import CanonicalImages


@dataclass(frozen=True)
class OptimSettings:
    """FALCO's weights and margin, and the loop's schedule (it is a :class:`~anonymize.methods.latent.optimize.Schedule`)."""

    steps: int = 50
    lr: float = 0.01
    lr_gamma: float = 0.8
    lambda_id: float = 10.0
    lambda_attr: float = 0.1
    margin: float = 0.0
    bf16: bool = False
    preprocessing: Preprocessing = "corrected"


@dataclass
class OptimResult:
    ws: Tensor  # [B, num_ws, w_dim] final codes
    images: CanonicalImages  # G(final codes), at the generator's resolution
    id_cos_start: Tensor  # [B] ArcFace cosine to the original, initial mixed code
    id_cos_end: Tensor  # [B] same, final code
    attr_start: Tensor  # [B] attribute loss, initial mixed code
    attr_end: Tensor  # [B]
    loss_history: Tensor  # [steps + 1, B] per-face total loss before each step and at the end


def face_losses(images: CanonicalImages, targets: Targets, networks: LossNetworks,
                settings: OptimSettings) -> tuple[Tensor, Tensor, Tensor]:
    """Per-face (total loss, identity cosine, attribute loss), each [B], float32."""
    identity, tokens = embed_for_loss(images, networks, settings.preprocessing, settings.bf16)
    cosine = F.cosine_similarity(identity, targets.identity, dim=1)
    attribute = attribute_loss(tokens, targets.tokens)
    total = settings.lambda_id * (cosine - settings.margin).abs() + settings.lambda_attr * attribute
    return total, cosine, attribute


@dataclass(frozen=True)
class FalcoLoss:
    """FALCO's objective (:func:`face_losses`) as a :class:`~anonymize.methods.latent.optimize.FaceLoss`."""

    targets: Targets
    networks: LossNetworks
    settings: OptimSettings

    def __call__(self, images: CanonicalImages, ws: Tensor, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]:
        total, cosine, attribute = face_losses(images, self.targets, self.networks, replace(self.settings, bf16=bf16))
        return total, {"id_cos": cosine, "attr": attribute}


def optimise_latents(initial_ws: Tensor, trainable_layers: Sequence[int], targets: Targets,
                     networks: LossNetworks, settings: OptimSettings) -> OptimResult:
    """Run FALCO's optimisation on a batch of codes [B, num_ws, w_dim]; see the module docstring."""
    result = optimise_codes(initial_ws, trainable_layers, networks.generator, FalcoLoss(targets, networks, settings), settings,
                            clamp=settings.preprocessing == "corrected")
    return OptimResult(result.ws, result.images, result.start["id_cos"], result.end["id_cos"],
                       result.start["attr"], result.end["attr"], result.loss_history)
