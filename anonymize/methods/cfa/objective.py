"""CFA's per-face objective for the shared W+ loop (:func:`anonymize.methods.latent.optimize.optimise_codes`).

For a generated face G(w) with ArcFace identity a (unit length), the loss of face i is

    lambda_tgt (1 - cos(a, z*_i))  +  lambda_ang |cos(a, e_i) - cos(alpha_i)|
    + lambda_attr * FALCO's attribute loss  +  lambda_lat ||w - w0_i||^2

``z*`` pulls the face toward the chosen new identity; the angle term holds it at ``alpha`` from the
original ``e`` (the target alone would also be met by faces at other angles from ``e`` when the
recogniser cannot reach z* exactly); FaRL's attribute loss keeps pose, expression and background;
the latent term keeps the code near its e4e inversion ``w0`` (it is summed over all layers, but only
the trainable ones move). The first and last terms are added after FALCO's two, so with
``lambda_tgt = lambda_lat = 0`` the total, and hence every step, is FALCO's loss with ``lambda_id =
lambda_ang`` and ``m = cos(alpha)``, bit for bit (adding an exact zero changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from anonymize.methods.cfa.content import ContentTarget, Perceptual, content_loss
from anonymize.methods.latent.optimize import LossNetworks, attribute_loss, embed_faces
from anonymize.models.images import CanonicalImages


@dataclass(frozen=True)
class CfaWeights:
    lambda_tgt: float = 10.0
    lambda_ang: float = 10.0
    lambda_attr: float = 0.1
    lambda_lat: float = 0.001
    content_weight: float = 0.0


@dataclass(frozen=True)
class CfaLoss:
    """The objective of a batch: per face its original identity, target, angle cosine, tokens and inversion."""

    networks: LossNetworks
    anchors: Tensor  # [B, E] e, unit
    targets: Tensor  # [B, E] z*, unit
    cos_alpha: Tensor  # [B]
    tokens: Tensor  # [B, T, C] FaRL tokens of the real faces
    inversion: Tensor  # [B, num_ws, w_dim] w0
    weights: CfaWeights
    content: ContentTarget | None = None  # with ``perceptual``: the content term (used when content_weight > 0)
    perceptual: Perceptual | None = None

    def __call__(self, images: CanonicalImages, ws: Tensor, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]:
        identity, tokens = embed_faces(images, self.networks, bf16)
        attribute = attribute_loss(tokens, self.tokens)
        total, parts = identity_terms(identity, ws, self.anchors, self.targets, self.cos_alpha, self.inversion, self.weights)
        total = total + self.weights.lambda_attr * attribute
        parts = {**parts, "attr": attribute, "identity": identity.detach()}
        if self.weights.content_weight > 0:
            if self.content is None or self.perceptual is None:
                raise ValueError("content_weight > 0 needs the original crops, their identity regions and a perceptual distance")
            content = content_loss(images, self.content, self.perceptual)
            total = total + self.weights.content_weight * content
            parts["content"] = content.detach()
        return total, parts


def identity_terms(identity: Tensor, ws: Tensor, anchors: Tensor, targets: Tensor, cos_alpha: Tensor, inversion: Tensor,
                   weights: CfaWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """CFA's loss without FaRL's attribute term, per face [B]: the angle, target and latent terms (also the
    identity loss of ``--method attributes -p identity=cfa``). The angle term comes first, so with
    ``lambda_tgt = lambda_lat = 0`` the sum is exactly FALCO's identity term."""
    cos_anchor = F.cosine_similarity(identity, anchors, dim=1)
    cos_target = F.cosine_similarity(identity, targets, dim=1)
    latent = (ws - inversion).square().sum(dim=(1, 2))
    w = weights
    total = w.lambda_ang * (cos_anchor - cos_alpha).abs() + w.lambda_tgt * (1 - cos_target) + w.lambda_lat * latent
    return total, {"cos_anchor": cos_anchor, "cos_target": cos_target, "latent": latent}
