"""The audit: prove that an anonymized folder is safe to release, independently of how it was made.

``run_audit(AuditConfig(original_dir, anonymized_dir))`` is all a caller needs; every other
field has a default meant for a release gate:

* pairing through ``<anonymized>/manifest.parquet`` when present, else by relative path;
* detector ``"auto"``: the strongest detection available, always stronger than the run's: the
  ensemble of every detector whose weights are here (RetinaFace, MTCNN, dlib HOG) at their
  recall-first thresholds (the manifest says which detector the run used); faces the run recorded
  are audited too. A face only one member found, and no other member finds again on a close-up,
  is a "possible face": listed, but kept out of re-identification and of the missed-face gate.
  dlib's CNN detector is available on request; it is thorough but takes about ten seconds per
  photo on a CPU;
* ``aligned`` None: taken from the run's options in the manifest (False without one);
* identity labels (``identity_from_folders`` None): used when every source lies in a top-level
  folder, there are at least two such folders and one holds two images or more (CelebA-style
  ``<identity>/<photo>``), so rank-1 counts another photo of the same person as re-identified and
  the recognizer's same- vs different-person separation is checked;
* thresholds (:class:`Thresholds`): at most 5 % of faces verified as their original (dlib distance
  < 0.6), no missed face, no metadata leak; rank-1 rate and detection rate are reported but not
  gated unless asked; an output that cannot be audited always fails;
* files: ``audit.parquet`` and ``audit-summary.json`` in ``report_dir`` when given, else in
  ``<anonymized>-audit/`` beside the anonymized folder; the HTML report only with ``report_dir``.
  Nothing is ever written inside the original or anonymized folder.

* the papers' instruments and protocols (:mod:`anonymize.audit.instruments`, :mod:`anonymize.audit.protocols`):
  detection rates per detector (dlib HOG, MTCNN, RetinaFace) on the outputs, TPR at FAR, rank and
  parrot re-identification with dlib and, when their weights are here, FaceNet; SSIM/PSNR/LPIPS inside
  the face boxes; FID and the FaRL proxy. ``summary["figures"]`` lists each with its instrument,
  threshold and protocol (:mod:`anonymize.audit.figures`).
* attribute privacy (AnonymousNet, :mod:`anonymize.audit.attributes`): attributes estimated
  (``attribute_source``, default ``auto``: estimators+landmarks, else landmarks) on the same aligned crop of every original and
  output face; k / l / t of the release over ``quasi_identifiers`` / ``sensitive`` from the output
  estimates, preservation per attribute and the share of unique attribute vectors, in
  ``summary["attributes"]``.

The HTML report shows crops of original faces: keep it with the originals, never publish it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anonymize import __version__
from anonymize.audit.attributes import (
    DEFAULT_K, DEFAULT_QUASI_IDENTIFIERS, DEFAULT_SENSITIVE, DEFAULT_SOURCE, AttributeCollector, attribute_figures, matching_crops,
    open_collector, unavailable,
)
from anonymize.audit.faces import SourceFace, confirm_faces, match_boxes, source_faces
from anonymize.audit.fid import FidFeatures, FidResult, open_farl_features, open_fid_features
from anonymize.audit.figures import paper_figures
from anonymize.audit.human import human_goal_figures, look_alike_figures, resolve_goal
from anonymize.audit.judges import choose_judges, judge_figures
from anonymize.audit.identities import read_identities
from anonymize.audit.instruments import OUTPUT_DETECTORS, Recogniser, Unavailable, open_lpips, open_output_detectors, open_recognisers
from anonymize.audit.protocols import FARS, different_person_distances, parrot_identification, tpr_at_far, true_identity_ranks
from anonymize.audit.leaks import inspect_metadata
from anonymize.audit.missed import UNCHANGED_MEAN_ABS_DIFF, is_unchanged, region_change
from anonymize.audit.pairing import AuditError, ImagePair, Pairing, pair_images
from anonymize.metrics.quality import face_box_mask, outside_faces_mask, psnr, ssim, ssim_map
from anonymize.audit.reid import IdentitySeparation, identify, identity_separation, pairwise_distances
from anonymize.audit.results import AUDIT_PARQUET_NAME, AUDIT_SUMMARY_NAME, ROW_SCHEMA, default_audit_dir, write_rows, write_summary
from anonymize.audit.summary import Thresholds, crossed_thresholds, face_figures, image_figures, rank1_sentence
from anonymize.faces.detect import DETECTORS, Detector, DetectorSettings, create_detector
from anonymize.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, sha256_file
from anonymize.metrics.identity import SAME_PERSON_DISTANCE
from anonymize.weights import WeightsError, WeightsStore

AUTO = "auto"
RETINAFACE_ARTEFACT = "retinaface_mobilenet0.25"
AUDIT_ENSEMBLE = ("retinaface", "mtcnn", "dlib-hog")  # every fast detector, strongest first
MEMBER_ARTEFACTS = {"retinaface": (RETINAFACE_ARTEFACT,), "mtcnn": ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"),
                    "dlib-hog": ("dlib_shape_predictor_68",)}
MAX_PAIRWISE_FACES = 2000  # the "before" distances use at most this many original faces (pairs grow quadratically)


class AuditProgress:
    """What the audit reports as it goes; the CLI draws it, tests ignore it."""

    def start(self, total: int) -> None: ...

    def advance(self) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass(frozen=True)
class AuditConfig:
    """What to audit and how; only the two folders are required (defaults: see the module doc)."""

    original_dir: Path
    anonymized_dir: Path
    manifest_path: Path | None = None  # None: <anonymized>/manifest.parquet when present, else pair by relative path
    report_dir: Path | None = None  # HTML report (and, by default, the audit files) go here
    parquet_path: Path | None = None  # None: <report_dir or <anonymized>-audit>/audit.parquet
    summary_path: Path | None = None  # None: audit-summary.json beside the Parquet
    write_files: bool = True
    detector: str = AUTO  # auto (the strongest ensemble) | retinaface | mtcnn | dlib-hog | dlib-cnn | ensemble
    det_threshold: float | None = None  # None: the detector's default
    weights_dir: Path | None = None  # None: $ANONYMIZE_HOME or ~/.cache/anonymize
    trust_unverified: bool = False  # accept weight files that do not match weights.lock
    device: str = AUTO  # for RetinaFace and Inception; dlib runs on the CPU
    aligned: bool | None = None  # None: as the run's manifest says
    identity_from_folders: bool | None = None  # None: when the original tree looks like <identity>/<photo>
    distance_threshold: float = SAME_PERSON_DISTANCE
    unchanged_threshold: float = UNCHANGED_MEAN_ABS_DIFF
    fid: bool = True  # computed only when the inception_fid weights are present and verified
    farl_proxy: bool = True  # FaRL-feature Fréchet proxy, only when the farl_ep64 weights are present
    lpips: bool = True  # LPIPS of face crops, only when lpips and its weights are present
    identities_file: Path | None = None  # "<original path>,<identity>" lines; overrides identity folders
    recognizer_backend: str = "torch"  # dlib recogniser: torch (batched, CPU or CUDA) | dlib
    output_detectors: tuple[str, ...] = OUTPUT_DETECTORS  # per-detector detection rates on the outputs
    thresholds: Thresholds = field(default_factory=Thresholds)
    worst_cases: int = 8  # faces shown per section of the report
    max_pixels: int = DEFAULT_MAX_PIXELS
    # auto: as the run's manifest records (FALCO and the filters: machine; camouflage: human), else machine.
    # "human" audits any folder for that goal, e.g. one that was never anonymized (see anonymize.audit.human).
    privacy_goal: str = AUTO
    study_pairs: int | None = None  # blind human study kit beside the report; None: 20 for the human goal, else none
    study_seed: int = 0
    # Attribute privacy (AnonymousNet, anonymize.audit.attributes): k / l / t of the release from
    # attributes re-estimated on the outputs; None: not measured.
    attribute_source: str | None = DEFAULT_SOURCE
    quasi_identifiers: tuple[str, ...] = DEFAULT_QUASI_IDENTIFIERS
    sensitive: tuple[str, ...] = DEFAULT_SENSITIVE
    attribute_k: int = DEFAULT_K  # the release's share of faces in classes smaller than this is reported


@dataclass
class AuditResult:
    rows: list[dict[str, Any]]  # one per audited face, or per image without one (see results.ROW_SCHEMA)
    summary: dict[str, Any]
    passed: bool
    crossed: list[str]  # one sentence per crossed threshold
    parquet_path: Path | None = None
    summary_path: Path | None = None
    report_path: Path | None = None
    before_distances: dict[str, list[float]] = field(default_factory=dict)  # for the report's histogram


# ---- set-up -------------------------------------------------------------------------------------


def _is_inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def output_paths(config: AuditConfig) -> tuple[Path, Path, Path | None]:
    """Parquet, summary and report folder, refused when inside the original or anonymized folder."""
    base = Path(config.report_dir) if config.report_dir is not None else default_audit_dir(config.anonymized_dir)
    parquet = Path(config.parquet_path) if config.parquet_path is not None else base / AUDIT_PARQUET_NAME
    summary = Path(config.summary_path) if config.summary_path is not None else parquet.parent / AUDIT_SUMMARY_NAME
    report = Path(config.report_dir) if config.report_dir is not None else None
    for path, what in ((parquet, "audit Parquet"), (summary, "audit summary"), (report, "report folder")):
        if path is None:
            continue
        for folder, role in ((config.original_dir, "original"), (config.anonymized_dir, "anonymized")):
            if _is_inside(path, folder):
                raise AuditError(f"{path}: the {what} must not be written inside the {role} folder {folder}")
    return parquet, summary, report


@dataclass(frozen=True)
class AuditDetector:
    name: str  # a detector name, "ensemble" for several
    members: tuple[str, ...]  # the ensemble's members (empty for a single detector)
    recall_first: bool
    reason: str


def _available(weights: WeightsStore, name: str) -> bool:
    try:
        return all(weights.status(artefact) == "present" for artefact in MEMBER_ARTEFACTS[name])
    except WeightsError:
        return False


def choose_detector(requested: str, weights: WeightsStore, run_detector: object) -> AuditDetector:
    """``auto``: the ensemble of every available fast detector at recall-first thresholds, and why."""
    if requested != AUTO:
        if requested not in DETECTORS:
            raise AuditError(f"unknown detector {requested!r}: choose auto or one of {', '.join(DETECTORS)}")
        return AuditDetector(requested, (), False, "chosen by the user")
    members = tuple(name for name in AUDIT_ENSEMBLE if _available(weights, name))
    described = "+".join(members) + " at recall-first thresholds"
    if not isinstance(run_detector, str):
        comparison = "the run's detector is unknown"
    elif len(members) > len(run_detector.split("+")) or run_detector.split("(")[0] in members:
        comparison = f"stronger than the run's {run_detector} (more detectors, lower thresholds)"
    else:
        comparison = f"the run used {run_detector}: not stronger (install the RetinaFace and MTCNN weights)"
    if len(members) < 2:
        return AuditDetector(members[0] if members else "dlib-hog", (), True, f"{described}; {comparison}; "
                             "only one detector available, so no face can be confirmed by a second one")
    return AuditDetector("ensemble", members, True, f"ensemble of {described}; {comparison}")


def resolve_device(device: str) -> str:
    if device != AUTO:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def identity_labels(sources: list[str], mode: bool | None) -> dict[str, str] | None:
    """Source path -> top-level folder, when the dataset is organised by identity (see module doc)."""
    if mode is False:
        return None
    folders = {source: source.split("/", 1)[0] for source in sources if "/" in source}
    if mode is None:
        counts: dict[str, int] = {}
        for folder in folders.values():
            counts[folder] = counts.get(folder, 0) + 1
        if len(folders) != len(sources) or len(counts) < 2 or max(counts.values(), default=0) < 2:
            return None
    return folders


# ---- one image ----------------------------------------------------------------------------------


@dataclass
class _Context:
    config: AuditConfig
    detector: Detector
    recognisers: list[Recogniser]  # dlib first
    aligned: bool
    labels: dict[str, str] | None
    fid: FidFeatures | None
    farl: FidFeatures | None = None
    output_detectors: dict[str, Detector] = field(default_factory=dict)
    lpips: Any = None  # LpipsDistance or None
    descriptors: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)  # name -> (originals, outputs)
    rows: list[dict[str, Any]] = field(default_factory=list)
    gallery: list[np.ndarray] = field(default_factory=list)  # original face descriptors
    probes: list[np.ndarray] = field(default_factory=list)  # anonymized face descriptors, same order
    face_rows: list[int] = field(default_factory=list)  # row index of each gallery face
    first_faces: list[int] = field(default_factory=list)  # gallery index of each labelled image's first face
    attributes: AttributeCollector | None = None
    attributes_failed: str | None = None  # why the attribute figures are missing, once estimation failed


def _image_row(pair: ImagePair, **values: Any) -> dict[str, Any]:
    """A row with every schema column (None where not measured)."""
    row: dict[str, Any] = dict.fromkeys(ROW_SCHEMA.names)
    row.update(source_path=pair.source_rel, output_path=pair.output_rel, metadata_leak=[], metadata_detail="", size_mismatch=False)
    row.update(values)
    return row


def _audit_pair(pair: ImagePair, context: _Context) -> None:
    config = context.config
    try:
        output = decode_image(pair.output_path, config.max_pixels, display_name=pair.output_rel)
    except ImageDecodeError as exc:
        context.rows.append(_image_row(pair, error=f"unreadable output: {exc}"))
        return
    finding = inspect_metadata(pair.output_path)
    common = {"metadata_leak": list(finding.kinds), "metadata_detail": finding.detail}
    if pair.source_path is None:
        context.rows.append(_image_row(pair, **common, error="no original with this path (faces not audited)"))
        return
    try:
        original = decode_image(pair.source_path, config.max_pixels, display_name=pair.source_rel)
    except ImageDecodeError as exc:
        context.rows.append(_image_row(pair, **common, error=f"unreadable original: {exc}"))
        return
    common["identity"] = context.labels.get(pair.source_rel) if context.labels else None
    common["identical_to_source"] = _same_bytes(pair.source_path, pair.output_path)
    output_rgb, common["size_mismatch"] = _same_size(output.rgb, original.rgb)
    try:
        faces = source_faces(original.rgb, context.detector, pair.manifest_boxes, context.aligned)
        faces = confirm_faces(original.rgb, faces, context.detector)
        found = context.detector.detect(output_rgb)
        boxes = [face.box for face in faces]
        described = {recogniser.name: recogniser.describe_pair(original.rgb, output_rgb, boxes) for recogniser in context.recognisers}
        before, after = described["dlib"]
        still_found = {name: match_boxes(boxes, [face.box for face in detector.detect(output_rgb)])
                       for name, detector in context.output_detectors.items()}
    except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the audit
        context.rows.append(_image_row(pair, **common, error=f"audit failed ({type(exc).__name__}: {exc})"))
        return
    mask = outside_faces_mask(original.rgb.shape, [*boxes, *pair.manifest_boxes])
    similarity = ssim_map(original.rgb, output_rgb)
    common["psnr_outside_db"] = psnr(original.rgb, output_rgb, mask)
    common["ssim_outside"] = ssim(original.rgb, output_rgb, mask, similarity)
    for collector in (context.fid, context.farl):
        if collector is not None:
            collector.add(original.rgb, output_rgb)
    if not faces:
        context.rows.append(_image_row(pair, **common))
        return
    matches = match_boxes(boxes, [face.box for face in found])
    lpips_values = _lpips_of_faces(context, original.rgb, output_rgb, boxes)
    for index, (face, overlap, descriptor_before, descriptor_after) in enumerate(zip(faces, matches, before, after)):
        box_mask = face_box_mask(original.rgb.shape, face.box)
        per_face = {
            "detected_by": [name for name, found_at in still_found.items() if found_at[index] is not None],
            "psnr_face_db": psnr(original.rgb, output_rgb, box_mask),
            "ssim_face": ssim(original.rgb, output_rgb, box_mask, similarity),
            "lpips_face": lpips_values[index] if lpips_values else None,
        }
        for name, (originals, outputs) in described.items():
            if name != "dlib":
                per_face[f"{name.replace('-', '_')}_distance"] = float(np.linalg.norm(originals[index] - outputs[index]))
            if not face.possible:
                gathered = context.descriptors.setdefault(name, ([], []))
                gathered[0].append(originals[index])
                gathered[1].append(outputs[index])
        _add_face(context, pair, index, face, overlap, descriptor_before, descriptor_after, original.rgb, output_rgb,
                  {**common, **per_face})
        if not face.possible:
            _collect_attributes(context, original.rgb, output_rgb, face, f"{pair.source_rel}#{index}")


def _collect_attributes(context: _Context, original: np.ndarray, output: np.ndarray, face: SourceFace, key: str) -> None:
    if context.attributes is None:
        return
    try:
        context.attributes.add(*matching_crops(original, output, face.box, face.landmarks, context.aligned, key))
    except Exception as exc:  # noqa: BLE001 - attribute figures are one section: their failure stops only them
        context.attributes_failed = f"attribute estimation failed ({type(exc).__name__}: {' '.join(str(exc).split())})"
        context.attributes = None


def _attribute_summary(config: AuditConfig, context: _Context, opened: object) -> dict[str, Any]:
    if config.attribute_source is None:
        return unavailable("not requested")
    if isinstance(opened, dict):
        return opened
    if context.attributes_failed is not None:
        return unavailable(context.attributes_failed)
    try:
        tables = context.attributes.tables() if context.attributes is not None else None
        if tables is None:
            return unavailable("no face was audited")
        return attribute_figures(*tables, config.quasi_identifiers, config.sensitive, config.attribute_k)
    except Exception as exc:  # noqa: BLE001
        return unavailable(f"attribute figures failed ({type(exc).__name__}: {' '.join(str(exc).split())})")


def _lpips_of_faces(context: _Context, original: np.ndarray, output: np.ndarray, boxes: list) -> list[float]:
    if context.lpips is None:
        return []
    height, width = original.shape[:2]
    crops = []
    for x0, y0, x1, y1 in boxes:
        top, left = int(max(0, y0)), int(max(0, x0))
        bottom, right = max(int(min(height, y1)), top + 1), max(int(min(width, x1)), left + 1)
        crops.append((original[top:bottom, left:right], output[top:bottom, left:right]))
    return context.lpips.distances([a for a, _ in crops], [b for _, b in crops])


def _add_face(context: _Context, pair: ImagePair, index: int, face: SourceFace, overlap: float | None,
              descriptor_before: np.ndarray, descriptor_after: np.ndarray, original: np.ndarray, output: np.ndarray,
              common: dict[str, Any]) -> None:
    config = context.config
    change = region_change(original, output, face.box)
    distance = float(np.linalg.norm(descriptor_before - descriptor_after))
    if not face.possible:  # a possible face stays out of re-identification
        if index == 0 and common.get("identity") is not None:
            context.first_faces.append(len(context.gallery))
        context.face_rows.append(len(context.rows))
        context.gallery.append(descriptor_before)
        context.probes.append(descriptor_after)
    values = {**common, "identity": common.get("identity") if index == 0 else None}
    context.rows.append(_image_row(
        pair, **values,
        face_index=index,
        box=[float(v) for v in face.box],
        found_by=face.found_by,
        face_status=face.status,
        confirmed_by=face.confirmed_by,
        det_score=face.score,
        detected_in_output=overlap is not None,
        output_iou=overlap,
        identity_distance=distance,
        reidentified=None if face.possible else distance < config.distance_threshold,
        region_change=change,
        missed=is_unchanged(change, config.unchanged_threshold),
    ))


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return os.path.getsize(a) == os.path.getsize(b) and sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def _same_size(output: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, bool]:
    """The output at the original's size (resized when it differs) and whether it differed."""
    if output.shape == original.shape:
        return output, False
    height, width = original.shape[:2]
    return cv2.resize(output, (width, height), interpolation=cv2.INTER_AREA), True


# ---- across the dataset ---------------------------------------------------------------------------


def _fill_identification(context: _Context) -> float | None:
    """Rank-1 columns of every face row; returns the chance hit rate."""
    if not context.gallery:
        return None
    gallery_labels = [context.rows[row].get("identity") for row in context.face_rows] if context.labels else None
    result = identify(np.stack(context.probes), np.stack(context.gallery), list(range(len(context.gallery))), gallery_labels)
    for probe, row_index in enumerate(context.face_rows):
        nearest_row = context.rows[context.face_rows[int(result.nearest[probe])]]
        row = context.rows[row_index]
        row["nearest_original"] = f"{nearest_row['source_path']}#{nearest_row['face_index']}"
        row["nearest_distance"] = float(result.nearest_distance[probe])
        row["rank1_hit"] = bool(result.hits[probe])
    return result.chance


def _subsample(indices: list[int], limit: int) -> list[int]:
    if len(indices) <= limit:
        return indices
    chosen = np.random.default_rng(0).choice(len(indices), size=limit, replace=False)
    return [indices[i] for i in sorted(chosen)]


def _before_distances(context: _Context, separation: IdentitySeparation | None) -> dict[str, list[float]]:
    """Distances between originals, the scale the anonymized distances are read against."""
    if separation is not None:
        return {"same person": separation.same_distances, "different people": separation.different_distances}
    chosen = _subsample(list(range(len(context.gallery))), MAX_PAIRWISE_FACES)
    if len(chosen) < 2:
        return {}
    distances = pairwise_distances(np.stack([context.gallery[i] for i in chosen]), np.stack([context.gallery[i] for i in chosen]))
    return {"between originals": [float(v) for v in distances[np.triu_indices(len(chosen), 1)]]}


def _separation(context: _Context, threshold: float) -> IdentitySeparation | None:
    if not context.labels:
        return None
    chosen = _subsample(context.first_faces, MAX_PAIRWISE_FACES)
    labels = [context.rows[context.face_rows[i]]["identity"] for i in chosen]
    if len(chosen) < 2:
        return None
    return identity_separation(np.stack([context.gallery[i] for i in chosen]), labels, threshold)


def _confirmed_face_rows(context: _Context) -> list[dict[str, Any]]:
    return [context.rows[index] for index in context.face_rows]


def _recogniser_figures(context: _Context) -> dict[str, Any]:
    """Every protocol of :mod:`anonymize.audit.protocols`, for each available recogniser."""
    figures: dict[str, Any] = {}
    rows = _confirmed_face_rows(context)
    labelled = list(context.first_faces)  # gallery indices of labelled images' first faces
    labels_of_gallery = [row.get("identity") for row in rows] if context.labels else None
    for recogniser in context.recognisers:
        originals, outputs = context.descriptors.get(recogniser.name, ([], []))
        entry: dict[str, Any] = {"instrument": recogniser.instrument, "threshold": recogniser.threshold, "faces": len(originals)}
        if not originals:
            figures[recogniser.name] = entry
            continue
        gallery, probes = np.stack(originals), np.stack(outputs)
        genuine = np.linalg.norm(gallery - probes, axis=1)
        entry["verification_rate"] = float((genuine < recogniser.threshold).mean())
        ranks = true_identity_ranks(probes, gallery, list(range(len(gallery))), labels_of_gallery)
        entry["rank1_rate"] = float((ranks == 1).mean())
        entry["mean_rank"] = float(ranks.mean())
        entry["gallery"] = len(gallery)
        if context.labels and len(labelled) >= 2:
            labels = [rows[i]["identity"] for i in labelled]
            impostor = different_person_distances(gallery[labelled], labels)
            entry["different_person_pairs"] = int(len(impostor))
            entry["tpr_at_far"] = {f"{far:g}": vars(tpr_at_far(genuine, impostor, far)) for far in FARS}
            parrot = parrot_identification(probes[labelled], labels)
            entry["parrot"] = vars(parrot)
        figures[recogniser.name] = entry
    return figures


def _detection_by_detector(context: _Context) -> dict[str, Any]:
    rows = _confirmed_face_rows(context)
    return {name: {"detected": sum(name in (row["detected_by"] or []) for row in rows), "faces": len(rows),
                   "rate": (sum(name in (row["detected_by"] or []) for row in rows) / len(rows)) if rows else None}
            for name in context.output_detectors}


# ---- the run ------------------------------------------------------------------------------------


def run_audit(config: AuditConfig, progress: AuditProgress | None = None) -> AuditResult:
    """Audit ``config.anonymized_dir`` against ``config.original_dir``; see the module doc for the defaults."""
    progress = progress or AuditProgress()
    original_dir, anonymized_dir = Path(config.original_dir), Path(config.anonymized_dir)
    if _is_inside(original_dir, anonymized_dir):  # the anonymized tree would then hold the originals too
        raise AuditError(f"{original_dir}: the original folder must not be the anonymized folder or lie inside it")
    parquet_path, summary_path, report_dir = output_paths(config)
    pairing = pair_images(original_dir, anonymized_dir, config.manifest_path)
    try:
        goal, goal_source = resolve_goal(config.privacy_goal, pairing.privacy_goal)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    weights = WeightsStore(config.weights_dir, trust_unverified=config.trust_unverified)
    device = resolve_device(config.device)
    run_aligned = bool(pairing.run_arguments.get("aligned", False))
    run_detector = None if run_aligned else pairing.run_detector  # an aligned run detects nothing
    choice = choose_detector(config.detector, weights, run_detector)
    detector_name, detector_reason = choice.name, choice.reason
    aligned = run_aligned if config.aligned is None else config.aligned
    try:
        settings = DetectorSettings(config.det_threshold, 0, device, recall_first=choice.recall_first)
        detector = create_detector(detector_name, weights, settings, **({"members": choice.members} if choice.members else {}))
        detector_name = detector.name
        recognisers, unavailable = open_recognisers(weights, device, config.recognizer_backend, config.distance_threshold)
        output_detectors, missing_detectors = open_output_detectors(weights, device)
    except WeightsError as exc:
        raise AuditError(str(exc)) from None
    output_detectors = {name: found for name, found in output_detectors.items() if name in config.output_detectors}
    unavailable += [item for item in missing_detectors if item.name in config.output_detectors]
    fid = open_fid_features(weights, device) if config.fid else FidResult(None, "not requested")
    farl = open_farl_features(weights, device) if config.farl_proxy else FidResult(None, "not requested")
    lpips = open_lpips(weights, device) if config.lpips else Unavailable("lpips", "LPIPS", "not requested")
    if isinstance(lpips, Unavailable):
        unavailable.append(lpips)
    sources = [pair.source_rel for pair in pairing.pairs if pair.source_rel]
    if config.identities_file is not None:
        labels: dict[str, str] | None = read_identities(Path(config.identities_file), sources)
    else:
        labels = identity_labels(sources, config.identity_from_folders)
    context = _Context(config, detector, recognisers, aligned, labels, fid if isinstance(fid, FidFeatures) else None,
                       farl if isinstance(farl, FidFeatures) else None, output_detectors,
                       None if isinstance(lpips, Unavailable) else lpips)
    opened = open_collector(config.attribute_source, weights, device) if config.attribute_source is not None else None
    context.attributes = opened if isinstance(opened, AttributeCollector) else None

    progress.start(len(pairing.pairs))
    for pair in pairing.pairs:
        _audit_pair(pair, context)
        progress.advance()
        if context.rows and context.rows[-1]["error"] and context.rows[-1]["output_path"] == pair.output_rel:
            progress.message(f"not audited: {pair.output_rel}: {context.rows[-1]['error']}")

    chance = _fill_identification(context)
    separation = _separation(context, config.distance_threshold)
    fid_result = context.fid.result() if context.fid is not None else fid
    farl_result = context.farl.result() if context.farl is not None else farl
    summary = _summary(config, pairing, context, detector_name, detector_reason, aligned, chance, separation, fid_result)
    summary["quality"]["farl_frechet_proxy"] = farl_result.value
    summary["quality"]["farl_frechet_proxy_status"] = farl_result.status
    summary["recognisers"] = _recogniser_figures(context)
    judges, judge_reason = choose_judges([recogniser.name for recogniser in recognisers], pairing.loss_recognisers)
    summary["judges"] = judge_figures(summary["recognisers"], judges, goal, judge_reason, pairing.loss_recognisers)
    judge = summary["judges"]["worst"] or (judges[0] if judges else None)
    summary["privacy_goal"], summary["privacy_goal_source"] = goal, goal_source
    summary["recogniser_roles"] = {"white_box": list(pairing.loss_recognisers), "judges": judges, "judge": judge,
                                   "judge_reason": judge_reason}
    if goal == "human":
        summary["human_goal"] = human_goal_figures(summary["recognisers"], _confirmed_face_rows(context), judge, judge_reason,
                                                   pairing.loss_recognisers, config.thresholds.max_face_psnr_db,
                                                   config.thresholds.max_face_ssim)
    summary["look_alike"] = look_alike_figures(_confirmed_face_rows(context), config.thresholds.max_face_psnr_db,
                                               config.thresholds.max_face_ssim)
    summary["instruments_unavailable"] = {item.name: {"instrument": item.instrument, "status": item.status} for item in unavailable}
    summary["detection_by_detector"] = _detection_by_detector(context)
    summary["attributes"] = _attribute_summary(config, context, opened)
    summary["figures"] = paper_figures(summary)
    crossed = crossed_thresholds(summary, config.thresholds)
    summary["passed"], summary["crossed"] = not crossed, crossed
    result = AuditResult(context.rows, summary, not crossed, crossed, before_distances=_before_distances(context, separation))
    if config.write_files:
        _write(result, config, parquet_path, summary_path, report_dir)
    return result


def _summary(config: AuditConfig, pairing: Pairing, context: _Context, detector: str, detector_reason: str,
             aligned: bool, chance: float | None, separation: IdentitySeparation | None, fid: FidResult) -> dict[str, Any]:
    faces, images = face_figures(context.rows), image_figures(context.rows)
    faces["reid"]["rank1_chance"] = chance
    faces["reid"]["rank1_meaning"] = rank1_sentence(faces["reid"]["rank1_rate"], chance, faces["faces"], bool(context.labels))
    images["quality"]["fid"] = fid.value
    images["quality"]["fid_status"] = fid.status
    warnings = []
    if separation is not None and not separation.separated:
        warnings.append("the recognizer does not separate the identities of these originals well: re-identification figures are unreliable")
    if "not stronger" in detector_reason or "only one detector" in detector_reason:
        warnings.append(f"detector {detector}: {detector_reason}")
    return {
        "anonymize_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "original_dir": str(Path(config.original_dir).resolve()),
        "anonymized_dir": str(Path(config.anonymized_dir).resolve()),
        "manifest_path": str(pairing.manifest_path) if pairing.manifest_path else None,
        "pairing": "manifest" if pairing.manifest_path else "relative path",
        "run": {  # what made the anonymized folder, from its manifest (for `anonymize audit compare`)
            "method": pairing.run_arguments.get("method"),
            "options": pairing.run_arguments.get("method_options") or {},
            "region": pairing.run_arguments.get("region"),
        },
        "detector": detector,
        "detector_reason": detector_reason,
        "aligned": aligned,
        "identity_labels": "folders" if context.labels else None,
        "distance_threshold": config.distance_threshold,
        "unchanged_threshold": config.unchanged_threshold,
        "thresholds": asdict(config.thresholds),
        "not_released": len(pairing.not_released),
        "missing_outputs": pairing.missing_outputs[:200],
        **images,
        **faces,
        "identity_check": {"available": True, **separation.as_dict()} if separation is not None else {
            "available": False,
            "reason": "the originals are not grouped in identity folders" if not context.labels else "too few labelled faces",
        },
        "warnings": warnings,
    }


def _write(result: AuditResult, config: AuditConfig, parquet_path: Path, summary_path: Path, report_dir: Path | None) -> None:
    metadata = {"anonymize_version": __version__, "audit_summary": json.dumps(result.summary, default=str)}
    result.parquet_path = write_rows(parquet_path, result.rows, metadata)
    result.summary["parquet_path"] = str(parquet_path)
    if report_dir is not None:
        from anonymize.audit.report import write_report

        result.report_path = write_report(result, config, report_dir)
        result.summary["report_path"] = str(result.report_path)
    result.summary_path = write_summary(summary_path, result.summary)
