"""The parts method's latent backend: W+ edits from the e4e inversion of the chosen parts' attributes.

The candidates of one face (one per set of parts) start from the same e4e inversion ``w0`` and only
the layers in ``trainable_layers`` (3-8 by default, the middle resolutions that carry facial shape)
move, through the shared loop :func:`anonymize.methods.latent.optimize.optimise_codes`. Every term of
the loss is computed on the written image c: with ``paste=face`` (the default, as in Li et al., whose
generator regenerates the whole face) c = G(w) brought to the crop's size; with ``paste=parts`` the
composite

    c = m * G(w) + (1 - m) * x

(m: the candidate's feathered part mask, x: the original crop), so pixels outside the parts are the
original's. Per candidate:

    lambda_id(t) * L_id(c, x)                                       identity, ``identity=layers`` (default):
                                                                    Eq. 7, sum over ArcFace's 4 IR-SE50 stages
                                                                    of ||R_k(c) - R_k(x)|| / ||R_k(x)||, always on;
                                                                    ``identity=hinge``: max(0, tau - cos), stops at tau
    + lambda_text * zero-shot CE toward the named attributes        (FaRL image CLS vs text prompts)
    + lambda_tokens * sum_t (1 - m_t) * mean_c |F_tc(c) - F_tc(x)|  FaRL tokens outside the parts
    + lambda_latent * ||w - w0||^2                                  W+ regulariser

where m_t is the share of patch t covered by the mask (the CLS token, t = 0, counts as outside): the
stand-in for the paper's reconstruction term, which keeps what the indicator does not select. As in
Li et al., the identity weight ramps up over the optimisation: ``lambda_id(t) = lambda_id * t / T``
for step t of T (0 at the first step, full at the end and in the final evaluation), so the attribute
edit leads and the identity constraint takes over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anonymize.methods.base import MethodError
from anonymize.methods.latent.optimize import LoopResult, optimise_codes
from anonymize.methods.parts.attributes import AttributeTexts
from anonymize.methods.parts.identity import ArcFaceIdentity, Reference, arcface_layers, layer_identity_loss
from anonymize.models.e4e import E4EEncoder
from anonymize.models.farl import FaRLEncoder
from anonymize.models.images import CanonicalImages
from anonymize.models.stylegan2 import StyleGAN2Generator
from anonymize.weights import WeightsStore


@dataclass(frozen=True)
class LatentSettings:
    """What :func:`optimise_codes` reads (its Schedule) plus the parts objective's weights."""

    steps: int = 50
    lr: float = 0.01
    lr_gamma: float = 1.0
    bf16: bool = False
    lambda_id: float = 10.0
    lambda_text: float = 1.0
    lambda_tokens: float = 0.1
    lambda_latent: float = 0.001
    tau: float = 0.5
    identity: str = "layers"  # "layers": Eq. 7 over ArcFace's stages; "hinge": max(0, tau - cos)
    paste: str = "face"  # "face": the whole regenerated crop; "parts": only inside the part masks


class PartsLoss:
    """The objective of one face's candidates (see the module docstring); ``set_step`` drives the ramp."""

    def __init__(self, original: CanonicalImages, masks: Tensor, inversion: Tensor, texts: AttributeTexts,
                 targets: Sequence[Tensor], farl: FaRLEncoder, identity: ArcFaceIdentity, reference: Reference,
                 settings: LatentSettings) -> None:
        self.original, self.masks, self.inversion = original, masks, inversion
        self.texts, self.targets, self.farl = texts, list(targets), farl
        self.identity, self.reference, self.settings = identity, reference, settings
        with torch.no_grad():
            self.tokens = farl(original).tokens.float()  # [1, T, C]
            self.layers = [layer.float() for layer in arcface_layers(identity.arcface, original)]
        self.paste_masks = masks if settings.paste == "parts" else None  # None: the whole regenerated face
        grid = farl.config.grid
        inside = F.adaptive_avg_pool2d(masks, (grid, grid)).flatten(1)  # [K, grid²]
        self.token_weights = torch.cat([torch.zeros_like(inside[:, :1]), inside], dim=1).neg().add(1)  # [K, T]
        self.id_weight = 0.0

    def set_step(self, step: int) -> None:
        steps = max(self.settings.steps, 1)
        self.id_weight = self.settings.lambda_id * min(step, steps) / steps

    def composite(self, generated: CanonicalImages) -> CanonicalImages:
        resized = generated.resized(self.original.size)
        if self.paste_masks is None:
            return resized
        return CanonicalImages(self.paste_masks * resized.tensor + (1 - self.paste_masks) * self.original.tensor)

    def __call__(self, images: CanonicalImages, ws: Tensor, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]:
        composite = self.composite(images)
        stages = arcface_layers(self.identity.arcface, composite)
        embeddings = F.normalize(self.identity.arcface.output_layer(stages[-1]), dim=1)  # ArcFace's forward, same pass
        cosine = self.identity.score(embeddings, self.reference)
        hinge = (self.settings.tau - cosine).clamp_min(0)
        layers = layer_identity_loss(stages, self.layers)
        identity = layers if self.settings.identity == "layers" else hinge
        features = self.farl(composite)
        text = self.texts.loss(features.cls.float(), self.targets)
        tokens = ((features.tokens.float() - self.tokens).abs().mean(dim=2) * self.token_weights).sum(dim=1)
        latent = (ws - self.inversion).square().sum(dim=(1, 2))
        s = self.settings
        total = self.id_weight * identity + s.lambda_text * text + s.lambda_tokens * tokens + s.lambda_latent * latent
        return total, {"id_cos": cosine, "hinge": hinge, "id_layers": layers, "text": text, "tokens": tokens, "latent": latent}


@dataclass
class LatentEdit:
    images: np.ndarray  # [K, S, S, 3] uint8 composites
    scores: list[float]  # ArcFace cosine of each to the original
    loop: LoopResult


class LatentEditor:
    """e4e, its StyleGAN2 decoder, FaRL's two towers; edits one face's candidates in one batch."""

    def __init__(self, encoder: E4EEncoder, generator: StyleGAN2Generator, farl: FaRLEncoder, texts: AttributeTexts,
                 trainable_layers: Sequence[int], settings: LatentSettings) -> None:
        self.encoder, self.generator, self.farl, self.texts = encoder, generator, farl, texts
        self.trainable_layers, self.settings = tuple(trainable_layers), settings
        missing = [layer for layer in self.trainable_layers if layer >= generator.num_ws]
        if missing:
            raise MethodError(f"method 'parts': trainable_layers {missing} do not exist; the generator has W+ layers 0..{generator.num_ws - 1}")

    @classmethod
    def load(cls, store: WeightsStore, device: torch.device, params) -> LatentEditor:
        from anonymize.models.registry import load_e4e_pair, load_farl_model, load_farl_text_model

        encoder, generator = load_e4e_pair(store, device)
        settings = LatentSettings(steps=params.steps, lr=params.lr, lambda_id=params.lambda_id, lambda_text=params.lambda_text,
                                  lambda_tokens=params.lambda_tokens, lambda_latent=params.lambda_latent, tau=params.tau,
                                  identity=params.identity, paste=params.paste or "face")
        texts = AttributeTexts.build(load_farl_text_model(store, device))
        return cls(encoder, generator, load_farl_model(store, device), texts, params.trainable_layers, settings)

    def edit(self, crop: np.ndarray, choices: Sequence[tuple[str, ...]], masks: np.ndarray,
             identity: ArcFaceIdentity, reference: Reference) -> LatentEdit:
        device = self.encoder.latent_avg.device
        original = CanonicalImages.from_uint8(crop, device)
        mask_tensor = torch.from_numpy(masks).float().unsqueeze(1).to(device)
        with torch.no_grad():
            inversion = self.encoder(original).float()
        targets = [self.texts.targets(parts) for parts in choices]
        loss = PartsLoss(original, mask_tensor, inversion, self.texts, targets, self.farl, identity, reference, self.settings)
        initial = inversion.expand(len(choices), -1, -1)
        result = optimise_codes(initial, self.trainable_layers, self.generator, loss, self.settings, on_step=loss.set_step)
        with torch.no_grad():
            composite = loss.composite(result.images)
        return LatentEdit(composite.to_uint8(), result.end["id_cos"].tolist(), result)
