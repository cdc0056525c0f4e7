"""FID between the originals and the anonymized images, only with the real Inception weights.

The weights come through the weights manager (artefact ``inception_fid``, checked against its
pinned hash); without them FID is reported as unavailable with the sentence saying what to put
where, never estimated with something else. Features are collected while the audit walks the
images, so no image is decoded twice.

The Fréchet distance of two Gaussians is |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace
of the matrix square root is computed as the sum of the square roots of the eigenvalues of
S1^(1/2) S2 S1^(1/2), a symmetric positive semi-definite matrix with the same spectrum as S1 S2,
so no general (complex) matrix square root is needed. With fewer images than feature dimensions
the same trace is cheaper from the centred features themselves: with S1 = A'A / (n1 - 1) and
S2 = B'B / (n2 - 1), the non-zero eigenvalues of S1 S2 are the squared singular values of
B A' / sqrt((n1 - 1)(n2 - 1)), so the trace is that small matrix's nuclear norm (exact, and
seconds instead of minutes on a CPU for a few hundred images). With fewer images than feature
dimensions (2048) the covariances are rank deficient and FID is biased upwards: compare values
only between audits of the same number of images.

What is compared (``--fid-region``, ``--fid-target``): by default whole original images against whole
outputs; region "face" compares the crops of the confirmed face boxes instead (CFA-Net Table 3 computes
its FID "within the detected face region"); a target folder replaces the originals as the reference set
(FALCO Table 2 reports LFW's FID against CelebA-HQ as well as against LFW). The status says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anonymize.io.decode import ImageDecodeError, decode_image
from anonymize.io.walk import walk_images
from anonymize.models.checkpoint import CheckpointError
from anonymize.models.images import CanonicalImages
from anonymize.weights import WeightsError, WeightsStore

FID_ARTEFACT = "inception_fid"
FARL_ARTEFACT = "farl_ep64"
FARL_PROXY_LABEL = ("Fréchet distance of FaRL ViT-B/16 image embeddings (farl_ep64): a proxy, "
                    "NOT comparable to published FID (Inception features)")
MIN_IMAGES = 2


@dataclass(frozen=True)
class FidResult:
    value: float | None
    status: str  # "computed on N + N images" or "unavailable (<why>)"
    images: int = 0


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of N x D features."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b)."""
    values, vectors = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of N x D features, by the cheaper of the two exact routes."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    (count_a, dim), count_b = a.shape, len(b)
    if count_a * count_b > dim * dim:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    centred_a, centred_b = a - a.mean(axis=0), b - b.mean(axis=0)
    scale_a, scale_b = count_a - 1, count_b - 1
    trace_root = float(np.linalg.svd(centred_b @ centred_a.T, compute_uv=False).sum()) / np.sqrt(scale_a * scale_b)
    difference = a.mean(axis=0) - b.mean(axis=0)
    traces = float((centred_a**2).sum()) / scale_a + float((centred_b**2).sum()) / scale_b
    return float(difference @ difference + traces - 2.0 * trace_root)


FID_REGIONS = ("image", "face")


def face_crops(rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """The pixels inside each face box (clipped to the image): CFA-Net Table 3 computes FID inside the detected faces."""
    height, width = rgb.shape[:2]
    crops = []
    for x0, y0, x1, y1 in boxes:
        top, left = int(max(0, np.floor(y0))), int(max(0, np.floor(x0)))
        bottom, right = max(int(min(height, np.ceil(y1))), top + 1), max(int(min(width, np.ceil(x1))), left + 1)
        crops.append(rgb[top:bottom, left:right])
    return crops


class FidFeatures:
    """Collects features (Inception's by default) of originals and outputs, one image (or face crop) at a time.

    ``region`` "face": each face box's crop instead of the whole image (the caller gives the boxes). A target set
    (:func:`add_target_folder`, FALCO's FID against CelebA-HQ) replaces the originals as the reference."""

    def __init__(self, model: torch.nn.Module, device: str,
                 select: Callable[[Any], torch.Tensor] = lambda features: features, region: str = "image") -> None:
        if region not in FID_REGIONS:
            raise ValueError(f"unknown FID region {region!r}: choose one of {', '.join(FID_REGIONS)}")
        self.model = model
        self.device = device
        self.select = select  # the model's output -> N x D features
        self.region = region
        self.originals: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []
        self.target: list[np.ndarray] = []
        self.target_name: str | None = None  # the target set's folder, once given

    def _features(self, rgb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.select(self.model(CanonicalImages.from_uint8(np.ascontiguousarray(rgb), self.device))).float().cpu().numpy()[0]

    def add(self, original: np.ndarray, output: np.ndarray, boxes: Sequence[Sequence[float]] = ()) -> None:
        """One image pair: both whole, or (region "face") the crops of ``boxes`` in both. With a target set the
        originals are not the reference, so their features are not computed."""
        pairs = zip(face_crops(original, boxes), face_crops(output, boxes)) if self.region == "face" else [(original, output)]
        for before, after in pairs:
            if self.target_name is None:
                self.originals.append(self._features(before))
            self.outputs.append(self._features(after))

    def add_target(self, rgb: np.ndarray) -> None:
        """One image of the target set, whole (a set of face images, such as CelebA-HQ's aligned crops)."""
        self.target.append(self._features(rgb))

    def result(self) -> FidResult:
        unit = "face crops" if self.region == "face" else "images"
        count = len(self.outputs)
        if self.target_name is not None:
            reference, described = self.target, f"{count} anonymized {unit} against {len(self.target)} images of {self.target_name}"
        else:
            reference, described = self.originals, f"{count} + {count} {unit}"
        if min(count, len(reference)) < MIN_IMAGES:
            return FidResult(None, f"unavailable (needs at least {MIN_IMAGES} on each side, got {described})", count)
        value = fid_from_features(np.stack(reference), np.stack(self.outputs))
        return FidResult(max(value, 0.0), f"computed on {described}", count)


def add_target_folder(collectors: Sequence[FidFeatures], folder: Path, max_pixels: int) -> None:
    """Every image under ``folder`` as each collector's target set, each image decoded once; an unreadable or empty
    folder stops the audit loudly."""
    if not Path(folder).is_dir():
        raise FidTargetError(f"{folder}: --fid-target is not a folder")
    images = list(walk_images(folder))
    if not images:
        raise FidTargetError(f"{folder}: no image found for --fid-target")
    for found in images:
        try:
            rgb = decode_image(found.path, max_pixels).rgb
        except ImageDecodeError as exc:
            raise FidTargetError(f"--fid-target: {exc}") from None
        for collector in collectors:
            collector.add_target(rgb)
    for collector in collectors:
        collector.target_name = str(folder)


class FidTargetError(ValueError):
    """The target set of FID cannot be read (the audit turns it into its one-line error)."""


def open_fid_features(weights: WeightsStore, device: str, region: str = "image") -> FidFeatures | FidResult:
    """A feature collector, or the unavailable result saying why (missing or unverified weights)."""
    try:
        check = weights.check(FID_ARTEFACT)
        if check.status == "missing":
            artifact = weights.artifact(FID_ARTEFACT)
            where = weights.path(FID_ARTEFACT)
            return FidResult(None, f"unavailable (no Inception weights: put {where.name} from {artifact.url} in {where.parent}, "
                                   f"or run `anonymize weights fetch {FID_ARTEFACT}`)")
        path = weights.require(FID_ARTEFACT)
    except WeightsError as exc:
        return FidResult(None, f"unavailable (Inception weights not usable: {exc})")
    from anonymize.models.legacy.inception import load_fid_inception

    try:
        return FidFeatures(load_fid_inception(path, device), device, region=region)
    except CheckpointError as exc:
        return FidResult(None, f"unavailable ({exc})")


def open_farl_features(weights: WeightsStore, device: str, region: str = "image") -> FidFeatures | FidResult:
    """The FaRL-feature Fréchet proxy's collector (FaRL's normalised CLS embedding), or why it is unavailable."""
    try:
        check = weights.check(FARL_ARTEFACT)
        if check.status == "missing":
            return FidResult(None, f"unavailable (no FaRL weights: run `anonymize weights fetch {FARL_ARTEFACT}`)")
        path = weights.require(FARL_ARTEFACT)
    except WeightsError as exc:
        return FidResult(None, f"unavailable (FaRL weights not usable: {exc})")
    from anonymize.models.legacy.farl import load_farl

    try:
        model = load_farl(path).to(device).eval()
    except CheckpointError as exc:
        return FidResult(None, f"unavailable ({exc})")
    return FidFeatures(model, device, select=lambda features: features.cls, region=region)
