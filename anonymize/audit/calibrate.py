"""The recogniser's own "not the same person" angle, from same/different pairs of a labelled face set.

CFA's angle is only meaningful against the recogniser that will judge the result: a face whose
identity is more than ``theta`` from the original is "another person" for that recogniser at a
chosen false-accept rate. Given a folder per identity (every image one face crop), every pair of
images is scored by the cosine of their descriptors; the threshold ``t`` is the lowest cosine at which
at most ``far`` of the different-identity pairs are (wrongly) accepted, ``cos > t`` meaning "same
person"; ``theta = arccos(t)``. TAR is the share of same-identity pairs accepted at ``t``. For dlib,
whose own rule is a Euclidean distance (0.6), the distance threshold at the same FAR is given too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from anonymize.errors import AnonymizeError
from anonymize.io.decode import ImageDecodeError, decode_image
from anonymize.io.walk import image_files
from anonymize.metrics.verification import Threshold, threshold_at_far  # noqa: F401 - part of this module's interface

RECOGNISERS = ("dlib", "arcface", "faceres", "mobileface")
RECORDED = ("faceres", "mobileface")  # the audit reads their threshold from the calibration record
STORED = (*RECORDED, "arcface")  # records written; CFA's -p angle=threshold+N reads arcface's


class CalibrationError(AnonymizeError, ValueError):
    """The face set cannot be calibrated on (missing folder, too few identities, unreadable image)."""


@dataclass(frozen=True)
class Calibration:
    recogniser: str
    identities: int
    images: int
    same_pairs: int
    different_pairs: int
    far_wanted: float
    cosine: Threshold  # accept "same person" when cos > value
    angle_degrees: float  # arccos(cosine.value): a CFA angle above it is "another person" at this FAR
    distance: Threshold | None = None  # dlib: accept when the Euclidean distance < value

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def identity_folders(root: Path, max_per_identity: int | None = None) -> list[tuple[str, list[Path]]]:
    """(identity, image paths) for every sub-folder of ``root`` holding an image, sorted by name."""
    if not root.is_dir():
        raise CalibrationError(f"{root}: not a folder (expected one sub-folder of face images per identity)")
    found = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        images = image_files(folder, recursive=False)
        if images:
            found.append((folder.name, images[:max_per_identity] if max_per_identity else images))
    if len(found) < 2:
        raise CalibrationError(f"{root}: {len(found)} identity folder(s) with images; calibration needs at least 2")
    if sum(len(images) >= 2 for _, images in found) == 0:
        raise CalibrationError(f"{root}: no identity has two images, so there is no same-person pair")
    return found


def pair_scores(embeddings: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(same cosines, different cosines, same distances, different distances) over all pairs i < j."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    units = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    cosines = units @ units.T
    squared = np.sum(embeddings**2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * embeddings @ embeddings.T, 0.0))
    upper = np.triu_indices(len(embeddings), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    return cosines[upper][same], cosines[upper][~same], distances[upper][same], distances[upper][~same]


def calibrate(embeddings: np.ndarray, labels: Sequence[int], far: float, recogniser: str) -> Calibration:
    same_cos, diff_cos, same_dist, diff_dist = pair_scores(embeddings, labels)
    cosine = threshold_at_far(same_cos, diff_cos, far)
    distance = threshold_at_far(same_dist, diff_dist, far, higher_is_same=False) if recogniser == "dlib" else None
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cosine.value))))
    return Calibration(recogniser, len(set(labels)), len(labels), len(same_cos), len(diff_cos), far, cosine, angle, distance)


def embed_folders(folders: list[tuple[str, list[Path]]], embed: Callable[[np.ndarray], np.ndarray],
                  advance: Callable[[], None] | None = None) -> tuple[np.ndarray, list[int]]:
    """Every image's descriptor (``embed`` of its RGB array) and its identity index."""
    embeddings, labels = [], []
    for label, (_, images) in enumerate(folders):
        for path in images:
            try:
                rgb = decode_image(path).rgb
            except ImageDecodeError as exc:
                raise CalibrationError(f"{path}: cannot be read as an image ({exc.cause})") from None
            embeddings.append(np.asarray(embed(rgb), dtype=np.float64))
            labels.append(label)
            if advance is not None:
                advance()
    return np.stack(embeddings), labels


def recogniser_embedder(name: str, weights_dir: Path | None, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one face image (a face crop such as aligned CelebA) to its descriptor.

    Both find the face with the run's dlib HOG detector first (the centred one when there are several):
    dlib's descriptor of a box guessed from the image frame (:meth:`DlibRecogniser.descriptor_of_aligned`)
    separates CelebA's identities far worse (same-person pairs under 0.6: 59% against 96% with the
    detected box, and 37% of different-person pairs under 0.6 against none, on 12 photos of each of the
    5 celeba-ids identities), so the frame box is only the fallback when no face is found. ArcFace sees
    the face brought to FFHQ framing as ``--aligned`` runs do, i.e. as CFA's optimisation sees it.
    """
    from anonymize.faces.align import align_aligned_input, centred_face
    from anonymize.faces.detect import DetectorSettings, create_detector
    from anonymize.weights import WeightsStore

    if name not in RECOGNISERS:
        raise CalibrationError(f"unknown recogniser {name!r}: choose one of {', '.join(RECOGNISERS)}")
    store = WeightsStore(weights_dir)
    detector = create_detector("dlib-hog", store, DetectorSettings(device=device))
    if name in RECORDED:
        from anonymize.metrics.graph_recognisers import GraphRecogniser

        graph = GraphRecogniser(store, name, device)

        def describe_graph(rgb: np.ndarray) -> np.ndarray:
            face = centred_face(detector.detect(rgb), rgb.shape)
            height, width = rgb.shape[:2]
            box = face.box if face is not None else (width * 0.1, height * 0.1, width * 0.9, height * 0.9)
            return graph.descriptors(rgb, [box])[0]

        return describe_graph
    if name == "dlib":
        from anonymize.metrics.identity import DlibRecogniser

        recogniser = DlibRecogniser(store, device=device)

        def describe(rgb: np.ndarray) -> np.ndarray:
            face = centred_face(detector.detect(rgb), rgb.shape)
            if face is None:
                return recogniser.descriptor_of_aligned(rgb)
            return recogniser.descriptors(rgb, [face.box])[0]

        return describe
    import torch

    from anonymize.models.images import CanonicalImages
    from anonymize.models.registry import artefact_of, load_arcface_model

    store.require_all([artefact_of("arcface")], purpose="calibration with ArcFace",
                      alternative="--recogniser dlib needs no download")
    arcface = load_arcface_model(store, torch.device(device))

    @torch.no_grad()
    def embed(rgb: np.ndarray) -> np.ndarray:
        _, aligned = align_aligned_input(rgb, detector, 256)
        return arcface(CanonicalImages.from_uint8(aligned.crop[None], torch.device(device))).float().cpu().numpy()[0]

    return embed


def write_record(calibration: Calibration, faces_dir: Path, weights_dir: Path | None) -> Path:
    """Store the threshold where the audit (faceres, mobileface) and CFA's ``-p angle=threshold+N`` (arcface)
    find it (``<weights>/calibration/<name>.json``), atomically."""
    import json
    import os
    import tempfile
    from datetime import datetime, timezone

    from anonymize.metrics.graph_recognisers import calibration_record_path
    from anonymize.weights import WeightsStore

    path = calibration_record_path(WeightsStore(weights_dir), calibration.recogniser)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**calibration.as_dict(), "faces_dir": str(Path(faces_dir).resolve()),
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".calibration-")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=1)
    os.replace(temporary, path)
    return path
