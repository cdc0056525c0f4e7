"""Camouflage's per-face objective for the shared W+ loop (:func:`anonymize.methods.latent.optimize.optimise_codes`).

FALCO's loss with its targets reversed: identity stays with the source, appearance goes to the
reference. For a generated face G(w) of source x and reference r, the loss of face i is

    lambda_id   * max(0, m - cos(A(G), A(x)))          ArcFace: still the source to a recogniser (hinge)
  + lambda_feat * mean (M(G) - M(x))^2                 IR-SE50's last feature map: the source's structure
  + lambda_app  * mean (P(G) - P(r))^2                 FaRL, pooled: the reference's appearance (Eq. 4's squared L2)
  + lambda_pix  * max(0, PSNR(G, x) - psi)             pixels: pushed away from the source up to a ceiling
                  (dif=l2: - lambda_pix * mean (G - x)^2, the paper's unbounded Eq. 5)

A is ArcFace's unit embedding; M is the feature map its IR-SE50 trunk ends with (the same network,
one pass gives both); P is FaRL's last-block patch tokens laid out on their grid (14 x 14 at
ViT-B/16) and max-pooled to 4 x 1 (four horizontal bands: forehead and hair, eyes, nose and cheeks,
mouth and chin), so appearance is matched band by band, not pixel by pixel, and the reference's
pose does not have to be copied. The PSNR term is zero once the face is at most ``psi`` dB close to
its source, so it only pushes while the face still looks like the source pixel-wise. The paper's
Eq. 5 has no such floor; without a trained generator to hold the image on the face manifold, its
reward for every extra unit of squared distance drives W+ off the manifold (README: measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anonymize.methods.latent.optimize import LossNetworks, autocast_for
from anonymize.models.images import CanonicalImages

POOLED_BANDS = (4, 1)  # rows x columns of FaRL's token grid after adaptive max pooling
MIN_MSE = 1e-10  # keeps the PSNR of an exact copy finite (100 dB)


@dataclass(frozen=True)
class CamouflageWeights:
    lambda_id: float = 10.0
    id_margin: float = 0.8  # the hinge: no identity loss once cos(A(G), A(x)) >= m
    lambda_feat: float = 1.0
    lambda_app: float = 1.0
    lambda_pix: float = 0.1  # per dB above the ceiling
    psnr_ceiling: float = 20.0  # dB
    dif: str = "psnr"  # "psnr": the hinge above; "l2": Eq. 5, -mean (G - x)^2 on the [0, 1] scale, unbounded


def pooled_tokens(tokens: Tensor) -> Tensor:
    """FaRL tokens [B, 1 + g*g, C] -> the patch grid max-pooled to 4 x 1, flattened [B, C * 4]."""
    patches = tokens[:, 1:]
    grid = int(round(patches.shape[1] ** 0.5))
    if grid * grid != patches.shape[1]:
        raise ValueError(f"FaRL gave {patches.shape[1]} patch tokens, not a square grid")
    laid_out = patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid, grid)
    return F.adaptive_max_pool2d(laid_out, POOLED_BANDS).flatten(1)


def psnr_db(images: Tensor, references: Tensor) -> Tensor:
    """Per-image PSNR in dB of [-1, 1] images [B, 3, H, W] against same-size references, on the [0, 1] scale."""
    mse = ((images - references) / 2).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp_min(MIN_MSE))


@dataclass(frozen=True)
class SourceTargets:
    """What the identity and pixel terms compare against, from the source crops."""

    identity: Tensor  # [B, E] unit ArcFace embeddings
    feature_map: Tensor  # [B, C, h, w] IR-SE50's last feature map
    pixels: Tensor  # [B, 3, R, R] the source at the generator's resolution, [-1, 1]


@torch.no_grad()
def source_targets(real: CanonicalImages, networks: LossNetworks, resolution: int, bf16: bool = False) -> SourceTargets:
    with autocast_for(real.tensor.device, bf16):
        identity, feature_map = networks.arcface.embed_with_map(real)
    return SourceTargets(identity.float(), feature_map.float(), real.resized(resolution).tensor.float())


@torch.no_grad()
def appearance_of(images: CanonicalImages, networks: LossNetworks, bf16: bool = False) -> Tensor:
    """The appearance target of reference faces: their pooled FaRL tokens [B, C * 4]."""
    with autocast_for(images.tensor.device, bf16):
        tokens = networks.farl(images).tokens
    return pooled_tokens(tokens.float())


@dataclass(frozen=True)
class CamouflageLoss:
    """The objective of a batch: per face its source's targets and its reference's appearance."""

    networks: LossNetworks
    source: SourceTargets
    appearance: Tensor  # [B, C * 4] pooled FaRL tokens of each face's reference
    weights: CamouflageWeights

    def __call__(self, images: CanonicalImages, ws: Tensor, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast_for(images.tensor.device, bf16):
            identity, feature_map = self.networks.arcface.embed_with_map(images)
            tokens = self.networks.farl(images).tokens
        cosine = F.cosine_similarity(identity.float(), self.source.identity, dim=1)
        feature = (feature_map.float() - self.source.feature_map).square().mean(dim=(1, 2, 3))
        appearance = (pooled_tokens(tokens.float()) - self.appearance).square().mean(dim=1)
        psnr = psnr_db(images.tensor.float(), self.source.pixels)
        w = self.weights
        if w.dif == "l2":
            push = -((images.tensor.float() - self.source.pixels) / 2).square().mean(dim=(1, 2, 3))
        else:
            push = F.relu(psnr - w.psnr_ceiling)
        total = (w.lambda_id * F.relu(w.id_margin - cosine) + w.lambda_feat * feature + w.lambda_app * appearance
                 + w.lambda_pix * push)
        return total, {"id_cos": cosine, "feature": feature, "appearance": appearance, "psnr": psnr, "dif": push}
