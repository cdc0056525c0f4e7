"""The per-face objective of an attribute edit, for the shared W+ loop (:func:`optimise_codes`).

For a generated face G(w) with FaRL CLS embedding f, zero-shot log-odds ``l_a(f)`` (so
``p_a = sigmoid(l_a)``, :mod:`anonymize.attributes.zero_shot`), FaRL tokens T and ArcFace identity e':

    lambda_target * sum_{a in targets} BCE(p_a, t_a)                    reach each target probability
  + lambda_keep   * mean_{a not in targets} |p_a - p0_a|                  leave the others where they were
  + lambda_tokens * FALCO's token L1 (T vs the real face's tokens)        keep pose, background, expression
  + the identity term

where ``p0`` are the real face's probabilities. The identity term is FALCO's ``lambda_id |cos(e', e) - m|``
(``identity=falco``), CFA's angle, target and latent terms (``identity=cfa``,
:func:`anonymize.methods.cfa.objective.identity_terms`), or nothing (``identity=none``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anonymize.attributes.zero_shot import ZeroShotPrompts
from anonymize.methods.cfa.objective import CfaWeights, identity_terms
from anonymize.methods.latent.optimize import LossNetworks, attribute_loss, autocast_for
from anonymize.models.images import CanonicalImages

IDENTITY_MODES = ("falco", "cfa", "none")


@dataclass(frozen=True)
class EditWeights:
    lambda_target: float = 1.0
    lambda_keep: float = 1.0
    lambda_tokens: float = 0.01
    lambda_id: float = 10.0  # identity=falco
    cfa: CfaWeights = CfaWeights(lambda_attr=0.0)  # identity=cfa (its attribute term is lambda_tokens here)


@dataclass(frozen=True)
class IdentityTargets:
    """What the identity term compares against, per face: e [B, E]; for CFA also z*, cos(alpha) and w0."""

    mode: str
    anchors: Tensor
    margin: float = 0.0
    targets: Tensor | None = None
    cos_alpha: Tensor | None = None
    inversion: Tensor | None = None


@dataclass(frozen=True)
class AttributeEditLoss:
    networks: LossNetworks
    prompts: ZeroShotPrompts
    goals: Tensor  # [B, A] target probability of each attribute (ignored where not a target)
    is_target: Tensor  # [B, A] bool
    start: Tensor  # [B, A] p0: the real face's probabilities
    tokens: Tensor  # [B, T, C] the real face's FaRL tokens
    identity: IdentityTargets
    weights: EditWeights

    def __call__(self, images: CanonicalImages, ws: Tensor, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast_for(images.tensor.device, bf16):
            features = self.networks.farl(images)
        logits = self.prompts.logits(features.cls.float())
        probabilities = torch.sigmoid(logits)
        target_mask, keep_mask = self.is_target.float(), (~self.is_target).float()
        bce = F.binary_cross_entropy_with_logits(logits, self.goals, reduction="none")
        target = (bce * target_mask).sum(dim=1)
        keep = ((probabilities - self.start).abs() * keep_mask).sum(dim=1) / keep_mask.sum(dim=1).clamp(min=1)
        tokens = attribute_loss(features.tokens.float(), self.tokens)
        w = self.weights
        total = w.lambda_target * target + w.lambda_keep * keep + w.lambda_tokens * tokens
        parts = {"target": target, "keep": keep, "tokens": tokens, "probabilities": probabilities.detach()}
        if self.identity.mode != "none":
            with autocast_for(images.tensor.device, bf16):
                embedding = self.networks.arcface(images).float()
            if self.identity.mode == "falco":
                cosine = F.cosine_similarity(embedding, self.identity.anchors, dim=1)
                total = total + w.lambda_id * (cosine - self.identity.margin).abs()
                parts["id_cos"] = cosine
            else:
                term, cfa_parts = identity_terms(embedding, ws, self.identity.anchors, self.identity.targets,
                                                 self.identity.cos_alpha, self.identity.inversion, w.cfa)
                total = total + term
                parts.update(id_cos=cfa_parts["cos_anchor"], cos_target=cfa_parts["cos_target"])
        return total, parts
