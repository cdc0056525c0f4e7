"""The recogniser a parts run keeps matching: ArcFace (latent backend, or warp with ArcFace weights)
or dlib's ResNet run in PyTorch (warp backend; needs only face_recognition_models).

Both give the same four things: an embedding of candidate images (differentiable, for the PGD and the
W+ loss), a score against the original (ArcFace: cosine, higher is closer; dlib: Euclidean distance,
lower is closer), the hinge that is zero once the threshold ``tau`` is met, and the exact relevance
map of :mod:`anonymize.methods.parts.relevance` on the crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import dlib
import numpy as np
import torch
import torch.nn.functional as F

from anonymize.faces.chips import ChipLocation, extract_face_chips, face_chip_location
from anonymize.faces.landmarks import LandmarkFinder
from anonymize.methods.parts.relevance import arcface_map_on_crop, decompose_arcface, decompose_dlib, dlib_map_on_crop
from anonymize.models.arcface import ArcFace, arcface_input
from anonymize.models.dlib_resnet import DlibFaceResNet
from anonymize.models.images import CanonicalImages


@dataclass
class Reference:
    """The original face as the recogniser sees it: its embedding [E] and, for dlib, where its chip lies."""

    embedding: torch.Tensor
    crop: np.ndarray
    location: ChipLocation | None = None


class IdentityModel(Protocol):
    name: str
    tau: float

    def reference(self, crop: np.ndarray) -> Reference: ...

    def embed(self, images: torch.Tensor, reference: Reference) -> torch.Tensor: ...

    def score(self, embeddings: torch.Tensor, reference: Reference) -> torch.Tensor: ...

    def hinge(self, embeddings: torch.Tensor, reference: Reference) -> torch.Tensor: ...

    def passes(self, score: torch.Tensor) -> torch.Tensor: ...

    def relevance_on_crop(self, reference: Reference) -> np.ndarray: ...


def layer_identity_loss(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Li et al.'s Eq. 7 per image [B]: ``sum_k ||R_k(x_p) - R_k(x)||_2 / ||R_k(x)||_2`` over the layers.

    Always on (it pulls until the features are the original's, unlike the hinge). Each layer's L2 norm
    is divided by the original's at that layer, so every layer weighs alike whatever its width and
    ``lambda_id`` means the same for any recogniser (the paper's plain sum leaves the scale to alpha_id).
    ``features``: per layer [B, ...]; ``reference``: per layer the original's [1, ...] (or [B, ...]).
    """
    total = torch.zeros(features[0].shape[0], device=features[0].device)
    for mine, theirs in zip(features, reference, strict=True):
        difference = (mine.float() - theirs.float()).flatten(1).norm(dim=1)
        total = total + difference / theirs.float().flatten(1).norm(dim=1).clamp_min(1e-12)
    return total


def arcface_layers(arcface: ArcFace, images: CanonicalImages) -> list[torch.Tensor]:
    """The outputs of the recogniser's four IR-SE50 stages (56, 28, 14, 7 px at 112 px input): Eq. 7's layers."""
    return arcface.stage_features(arcface_input(images, arcface.input_size))


def to_canonical(images: torch.Tensor) -> CanonicalImages:
    """[B, 3, S, S] 0..255 -> canonical [-1, 1]."""
    return CanonicalImages(images / 127.5 - 1.0)


class ArcFaceIdentity:
    """ArcFace cosine to the original; passes when ``cos >= tau``; hinge ``max(0, tau - cos)``."""

    name = "arcface"

    def __init__(self, arcface: ArcFace, tau: float) -> None:
        self.arcface, self.tau = arcface, tau

    def reference(self, crop: np.ndarray) -> Reference:
        device = next(self.arcface.parameters()).device
        with torch.no_grad():
            embedding = self.arcface(CanonicalImages.from_uint8(crop, device))[0]
        return Reference(embedding, crop)

    def embed(self, images: torch.Tensor, reference: Reference) -> torch.Tensor:
        return self.arcface(to_canonical(images))

    def score(self, embeddings: torch.Tensor, reference: Reference) -> torch.Tensor:
        return F.cosine_similarity(embeddings, reference.embedding.unsqueeze(0), dim=1)

    def hinge(self, embeddings: torch.Tensor, reference: Reference) -> torch.Tensor:
        return (self.tau - self.score(embeddings, reference)).clamp_min(0)

    def passes(self, score: torch.Tensor) -> torch.Tensor:
        return score >= self.tau

    def relevance_on_crop(self, reference: Reference) -> np.ndarray:
        device = next(self.arcface.parameters()).device
        decomposition = decompose_arcface(self.arcface, CanonicalImages.from_uint8(reference.crop, device))
        return arcface_map_on_crop(decomposition.relevance[0].cpu().numpy(), reference.crop.shape[0])


class DlibIdentity:
    """dlib descriptor distance to the original; passes when ``distance <= tau``; hinge ``max(0, distance - tau)``.

    The chip of every candidate is cut where the original's chip lies (dlib's 5-point predictor run
    once, on the original), so the PGD's gradient reaches the pixels through the chip's sampling.
    """

    name = "dlib"

    def __init__(self, network: DlibFaceResNet, predictor5: dlib.shape_predictor, finder: LandmarkFinder, tau: float) -> None:
        self.network, self.predictor5, self.finder, self.tau = network, predictor5, finder, tau

    def reference(self, crop: np.ndarray) -> Reference:
        image = np.ascontiguousarray(crop)
        shape = self.predictor5(image, self.finder.face_rect(image))
        points = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], dtype=np.float64)
        location = face_chip_location(points)
        device = self.network.channel_means.device
        original = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0).to(device)
        reference = Reference(torch.zeros(0), crop, location)
        with torch.no_grad():
            reference.embedding = self.embed(original, reference)[0]
        return reference

    def chips(self, images: torch.Tensor, reference: Reference) -> torch.Tensor:
        return torch.cat([extract_face_chips(image, [reference.location]) for image in images])

    def embed(self, images: torch.Tensor, reference: Reference) -> torch.Tensor:
        return self.network(self.chips(images, reference))

    def score(self, embeddings: torch.Tensor, reference: Reference) -> torch.Tensor:
        return (embeddings - reference.embedding.unsqueeze(0)).norm(dim=1)

    def hinge(self, embeddings: torch.Tensor, reference: Reference) -> torch.Tensor:
        return (self.score(embeddings, reference) - self.tau).clamp_min(0)

    def passes(self, score: torch.Tensor) -> torch.Tensor:
        return score <= self.tau

    def relevance_on_crop(self, reference: Reference) -> np.ndarray:
        device = self.network.channel_means.device
        original = torch.from_numpy(np.ascontiguousarray(reference.crop)).permute(2, 0, 1).float().to(device)
        decomposition = decompose_dlib(self.network, self.chips(original.unsqueeze(0), reference))
        return dlib_map_on_crop(decomposition.relevance[0].cpu().numpy(), reference.location, reference.crop.shape[0])
