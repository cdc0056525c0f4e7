"""The audit's measuring instruments, each with the name, threshold and weights a paper would cite.

Recognisers (dlib's ResNet always; FaceNet CASIA-WebFace and VGGFace2 when their weights are
here; the TF.js recognisers faceres and mobileface, which no method here optimises against, when the
human-models are installed), the detectors that look for faces in the outputs (dlib HOG, MTCNN, RetinaFace at their
default thresholds, as the papers run them), LPIPS and the FaRL-feature Fréchet proxy. An
instrument whose weights are absent or unverified is listed as unavailable with the reason; it is
never replaced by another.
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from anonymize.audit.attributes import AttributeCollector
from anonymize.audit.fid import FidFeatures, FidResult
from anonymize.audit.output_detection import OutputDetection
from anonymize.audit.summary import AttributeFigures
from anonymize.faces.detect import DEFAULT_THRESHOLDS, Detector, DetectorSettings, create_detector
from anonymize.metrics.identity import SAME_PERSON_DISTANCE, DlibRecogniser
from anonymize.models.checkpoint import CheckpointError
from anonymize.weights import WeightsError, WeightsStore

Boxes = Sequence[Sequence[float]]
OUTPUT_DETECTORS = ("dlib-hog", "mtcnn", "retinaface")  # FALCO Table 1 (dlib, MTCNN); CFA-Net Table 3 (+ a CNN detector)
DETECTOR_ARTEFACTS = {"dlib-hog": ("dlib_shape_predictor_68",), "mtcnn": ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"),
                      "retinaface": ("retinaface_mobilenet0.25",)}
DETECTOR_INSTRUMENTS = {"dlib-hog": "dlib HOG detector (frontal_face_detector)",
                        "mtcnn": "MTCNN (facenet-pytorch 2.5.3 weights)",
                        "retinaface": "RetinaFace MobileNet-0.25"}
FACENET_MODELS = (("facenet-casia", "casia-webface", "CASIA-WebFace"), ("facenet-vggface2", "vggface2", "VGGFace2"))
GRAPH_RECOGNISERS = ("faceres", "mobileface")  # anonymize.models.human: the judges outside every method's loss
LPIPS_ARTEFACTS = ("lpips_alex_linear", "torchvision_alexnet")
FARL_ARTEFACT = "farl_ep64"


@dataclass
class Recogniser:
    name: str  # dlib | facenet-casia | facenet-vggface2 | faceres | mobileface
    instrument: str  # what a reader would cite
    threshold: float  # same-person distance
    describe_pair: Callable[[np.ndarray, np.ndarray, Boxes], tuple[np.ndarray, np.ndarray]]  # original, output, boxes
    # -> (N x D, N x D) descriptors of the same boxes in both images, computed in one batch


@dataclass(frozen=True)
class Unavailable:
    name: str
    instrument: str
    reason: str

    @property
    def status(self) -> str:
        return f"unavailable ({self.reason})"


@dataclass(frozen=True)
class AuditInstruments:
    """The models one audit measures with, opened once before the first image; each absent one says why."""

    detector: Detector  # finds the faces in the originals
    recognisers: list[Recogniser]  # dlib first
    output_detectors: dict[str, Detector]  # look for faces in the outputs, at their default thresholds
    fid: FidFeatures | FidResult  # the Inception feature collector, or why there is no FID
    farl: FidFeatures | FidResult  # likewise for the FaRL proxy
    lpips: Any  # an LpipsDistance, or None
    attributes: AttributeCollector | AttributeFigures | None  # the collector, or why it cannot run; None: not requested
    unavailable: list[Unavailable]  # instruments without weights, with the reason
    mesh: Any = None  # a MeshCheck that can rule possible faces out (None: the facemesh weights are not here)

    @cached_property
    def output_detection(self) -> OutputDetection:
        """The audit detector and the output detectors on one output, each network once (:mod:`anonymize.audit.output_detection`).

        On the outputs the audit detector runs without its test-time augmentation: its faces there give the
        detection rates (a figure, not the missed-face check), and its plain members' detections are what
        the paper detectors' default-threshold rates are read from."""
        return OutputDetection(without_augmentation(self.detector), self.output_detectors)


def without_augmentation(detector: Detector) -> Detector:
    """The detector (or each ensemble member) without :class:`~anonymize.faces.augment.AugmentedDetector`'s padding and
    mirror, and without the pose model's heads."""
    members = getattr(detector, "members", None)
    if members:
        from anonymize.faces.ensemble import EnsembleDetector

        plain = EnsembleDetector([_unwrapped(member) for member in members], getattr(detector, "min_face", 0))
        plain.name = detector.name
        return plain
    return _unwrapped(detector)


def _unwrapped(detector: Detector) -> Detector:
    while hasattr(detector, "base"):  # AugmentedDetector, HeadsDetector
        detector = detector.base  # type: ignore[attr-defined]
    return detector


def _usable(weights: WeightsStore, names: Sequence[str]) -> str | None:
    """None when every artefact can be loaded, else why not (one line)."""
    for name in names:
        try:
            check = weights.check(name, pinned_rehash=True)
        except WeightsError as exc:
            return str(exc)
        if check.status == "missing":
            artifact = weights.artifact(name)
            how = f"`anonymize weights fetch {name}`" + (" --trust-unverified" if artifact.sha256 is None and artifact.archive is None else "")
            return f"no {name} weights: run {how} or put {weights.path(name).name} in {weights.path(name).parent}"
        try:
            weights.require(name)
        except WeightsError as exc:
            return f"{name} not usable: {exc}"
    return None


def open_recognisers(weights: WeightsStore, device: str, backend: str = "torch",
                     dlib_threshold: float = SAME_PERSON_DISTANCE) -> tuple[list[Recogniser], list[Unavailable]]:
    """dlib (required) and every FaceNet whose weights are usable; the others with the reason."""
    dlib = DlibRecogniser(weights, backend=backend, device=device if backend == "torch" else "cpu")
    recognisers = [Recogniser("dlib", f"dlib ResNet face recogniser ({backend} backend), Euclidean distance",
                              dlib_threshold, lambda original, output, boxes: tuple(dlib.descriptors_of_images(
                                  [(original, boxes), (output, boxes)])))]
    unavailable = []
    from anonymize.models.facenet import FACENET_ARTEFACTS, FACENET_SAME_PERSON_DISTANCE, FaceNetRecogniser

    for name, model, dataset in FACENET_MODELS:
        artefact = FACENET_ARTEFACTS[model]
        instrument = f"FaceNet InceptionResnetV1 trained on {dataset} (facenet-pytorch), L2 distance of unit embeddings"
        reason = _usable(weights, [artefact])
        if reason is None:
            try:
                recogniser = FaceNetRecogniser(weights.require(artefact), device)
            except CheckpointError as exc:
                reason = str(exc)
            else:
                recognisers.append(Recogniser(name, instrument, FACENET_SAME_PERSON_DISTANCE, recogniser.descriptors_of_pair))
                continue
        unavailable.append(Unavailable(name, instrument, reason))
    for name in GRAPH_RECOGNISERS:
        recogniser, missing = open_graph_recogniser(weights, name, device)
        if recogniser is not None:
            recognisers.append(recogniser)
        else:
            unavailable.append(missing)
    return recognisers, unavailable


def open_graph_recogniser(weights: WeightsStore, name: str, device: str) -> tuple[Recogniser | None, Unavailable | None]:
    """A TF.js recogniser (:mod:`anonymize.metrics.graph_recognisers`) as an audit instrument, or why not."""
    from anonymize.metrics.graph_recognisers import GraphRecogniser
    from anonymize.models.human import RECOGNISERS
    from anonymize.models.tfjs import GraphModelError
    from anonymize.weights.human import artefact_names

    instrument = RECOGNISERS[name].instrument
    reason = _usable(weights, [*artefact_names(name), "dlib_shape_predictor_68"])
    if reason is None:
        try:
            graph = GraphRecogniser(weights, name, device)
        except (GraphModelError, WeightsError) as exc:
            reason = str(exc)
        else:
            described = f"{instrument}; threshold {graph.threshold_source}"
            return Recogniser(name, described, graph.distance_threshold, graph.descriptors_of_pair), None
    return None, Unavailable(name, instrument, reason)


def open_output_detectors(weights: WeightsStore, device: str, loaded: Sequence[Detector] = ()) -> tuple[dict[str, Detector], list[Unavailable]]:
    """dlib HOG, MTCNN and RetinaFace at their default thresholds, those whose weights are here.

    A detector already ``loaded`` (the audit ensemble's members) lends its networks: the output detector is
    a copy of it with the default threshold, so no network is loaded twice."""
    detectors, unavailable = {}, []
    for name in OUTPUT_DETECTORS:
        instrument = f"{DETECTOR_INSTRUMENTS[name]}, score threshold {DEFAULT_THRESHOLDS[name]}"
        plain = [_unwrapped(item) for item in loaded]  # an augmented member lends its plain detector
        lender = next((item for item in plain if getattr(item, "name", None) == name and not getattr(item, "min_face", 0)), None)
        if lender is not None:
            detectors[name] = copy.copy(lender)
            detectors[name].threshold = DEFAULT_THRESHOLDS[name]
            continue
        reason = _usable(weights, DETECTOR_ARTEFACTS[name])
        if reason is None:
            try:
                detectors[name] = create_detector(name, weights, DetectorSettings(device=device))
                continue
            except (WeightsError, CheckpointError) as exc:
                reason = str(exc)
        unavailable.append(Unavailable(name, instrument, reason))
    return detectors, unavailable


def open_mesh_check(weights: WeightsStore, device: str) -> object:
    """A :class:`~anonymize.audit.mesh_check.MeshCheck`, or :class:`Unavailable` saying why (then no possible face is ruled out)."""
    from anonymize.weights.human import artefact_names

    instrument = "MediaPipe face mesh (human-models facemesh), face-presence score of a possible face's region"
    reason = _usable(weights, artefact_names("facemesh"))
    if reason is not None:
        return Unavailable("facemesh", instrument, reason)
    from anonymize.audit.mesh_check import MeshCheck

    return MeshCheck(weights, device)


def open_lpips(weights: WeightsStore, device: str) -> object:
    """An :class:`~anonymize.models.lpips_alex.LpipsDistance`, or :class:`Unavailable` saying why."""
    instrument = "LPIPS v0.1 AlexNet (lpips 0.1.4 heads, torchvision ImageNet AlexNet) on face-box crops"
    try:
        import lpips  # noqa: F401
    except ImportError:
        return Unavailable("lpips", instrument, "the lpips package is not installed")
    reason = _usable(weights, LPIPS_ARTEFACTS)
    if reason is not None:
        return Unavailable("lpips", instrument, reason)
    from anonymize.models.lpips_alex import LpipsDistance

    try:
        return LpipsDistance(weights.require(LPIPS_ARTEFACTS[0]), weights.require(LPIPS_ARTEFACTS[1]), device)
    except CheckpointError as exc:
        return Unavailable("lpips", instrument, str(exc))
