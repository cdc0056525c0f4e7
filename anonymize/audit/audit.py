"""The audit: prove that an anonymized folder is safe to release, independently of how it was made.

``run_audit(AuditConfig(original_dir, anonymized_dir))`` is all a caller needs; every other
field has a default meant for a release gate:

* pairing through ``<anonymized>/manifest.parquet`` when present, else by relative path;
* detector ``"auto"`` (:func:`anonymize.faces.choose.choose_audit_detector`): the strongest detection
  available, always stronger than the run's: the
  ensemble of every detector whose weights are here (RetinaFace, MTCNN, dlib HOG) at their
  recall-first thresholds, each also searching the original padded and mirrored (:mod:`anonymize.faces.augment`;
  the manifest says which detector the run used); faces the run recorded are audited too. A face only
  one member found, and no other member finds again on a close-up, is a "possible face": kept out of
  re-identification and of the missed-face count; left unchanged, it fails the gate (``max_possible_faces``,
  0) unless the face mesh rules it out (:mod:`anonymize.audit.mesh_check`).
  dlib's CNN detector is available on request; it is thorough but takes about ten seconds per
  photo on a CPU;
* ``aligned`` None: taken from the run's options in the manifest (False without one);
* identity labels (``identity_from_folders`` None): used when every source lies in a top-level
  folder, there are at least two such folders and one holds two images or more (CelebA-style
  ``<identity>/<photo>``), so rank-1 counts another photo of the same person as re-identified and
  the recogniser's same- vs different-person separation is checked;
* thresholds (:class:`~anonymize.audit.summary.Thresholds`): at most 5 % of faces verified as their
  original (dlib distance < 0.6), no missed face, no metadata leak; rank-1 rate and detection rate are reported but not
  gated unless asked; an output that cannot be audited always fails;
* files: ``audit.parquet`` and ``audit-summary.json`` in ``report_dir`` when given, else in
  ``<anonymized>-audit/`` beside the anonymized folder; the HTML report only with ``report_dir``.
  Nothing is ever written inside the original or anonymized folder. Beside them, ``cache/originals/`` keeps the
  audit detector's findings on each original by content hash, so a re-audit after a re-run does not detect the
  originals again (:mod:`anonymize.audit.originals_cache`; ``originals_cache=False``: none kept);
* ``sample``: N images audited face by face, every file checked, the rates' 95% intervals, the identity gate on the
  upper bound (:mod:`anonymize.audit.sampling`); ``workers``: pairs measured on threads, folded in walk order;
* speed: each detector network looks at an output once; the paper detectors' default-threshold faces are read
  from the ensemble's recall-first ones where that is exact (:mod:`anonymize.audit.output_detection`).

* the papers' instruments and protocols (:mod:`anonymize.audit.instruments`, :mod:`anonymize.audit.protocols`):
  detection rates per detector (dlib HOG, MTCNN, RetinaFace) on the outputs, TPR at FAR, rank and
  parrot re-identification with dlib and, when their weights are here, FaceNet; SSIM/PSNR/LPIPS inside
  the face boxes; FID and the FaRL proxy (whole images or face crops, ``fid_region``; against the originals or
  a target set, ``fid_target``). ``summary.figures`` lists each with its instrument,
  threshold and protocol (:mod:`anonymize.audit.figures`). CFA-Net's LFW pairs protocol
  (:mod:`anonymize.audit.lfw_pairs`) and FALCO's train-on-anonymized (:mod:`anonymize.audit.utility`) run apart.
* attribute privacy (AnonymousNet, :mod:`anonymize.audit.attributes`): attributes estimated
  (``attribute_source``, default ``auto``: estimators+landmarks, else landmarks) on the same aligned crop of every original and
  output face; k / l / t of the release over ``quasi_identifiers`` / ``sensitive`` from the output
  estimates, preservation per attribute and the share of unique attribute vectors, in
  ``summary.attributes``.

The audit's types are in :mod:`anonymize.audit.config`, the summary's records in
:mod:`anonymize.audit.summary`; this module only runs the steps, then builds the summary once.
The HTML report shows crops of original faces: keep it with the originals, never publish it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from anonymize import __version__
from anonymize.audit.attributes import AttributeCollector, attribute_figures, matching_crops, open_collector
from anonymize.audit.config import AuditConfig, AuditPlan, AuditProgress, AuditResult, Gathered
from anonymize.audit.content_check import ContentIndex, content_copies, copies_crossed, observe_pair
from anonymize.audit.faces import SourceFace, confirm_faces, match_boxes, source_faces
from anonymize.audit.fid import FidFeatures, FidResult, FidTargetError, add_target_folder, open_farl_features, open_fid_features
from anonymize.audit.figures import paper_figures
from anonymize.audit.human import human_goal_figures, look_alike_figures, resolve_goal
from anonymize.audit.identities import read_identities
from anonymize.audit.instruments import (
    AuditInstruments, Unavailable, open_lpips, open_mesh_check, open_output_detectors, open_recognisers,
)
from anonymize.audit.judges import choose_judges, judge_figures
from anonymize.audit.leaks import inspect_metadata
from anonymize.audit.mesh_check import MESH_FACE_SCORE
from anonymize.audit.missed import is_unchanged, region_change
from anonymize.audit.originals_cache import CACHE_FOLDER, OriginalsCache, detector_fingerprint
from anonymize.audit.outside import is_inside, refuse_inside
from anonymize.audit.pairing import AuditError, ImagePair, Pairing, pair_images, same_size
from anonymize.audit.protocols import FARS, different_person_distances, parrot_identification, tpr_at_far, true_identity_ranks
from anonymize.audit.reid import IdentitySeparation, identify, identity_separation, pairwise_distances
from anonymize.audit.report import REPORT_NAME, check_report_folders, write_report
from anonymize.audit.report_folder import refuse_links_below
from anonymize.audit.results import AUDIT_PARQUET_NAME, AUDIT_SUMMARY_NAME, ROW_SCHEMA, default_audit_dir, write_rows, write_summary
from anonymize.audit.summary import (
    AttributeFigures, AuditSummary, ContentCopies, DetectorDetection, RecogniserFigures, RecogniserRoles, RunOrigin, UnavailableInstrument,
)
from anonymize.audit.sampling import sample_indices
from anonymize.audit.tally import crossed_thresholds, face_figures, identity_check, image_figures, sample_figures, spread
from anonymize.faces.choose import AuditDetector, choose_audit_detector
from anonymize.faces.types import Face
from anonymize.faces.detect import DEFAULT_THRESHOLDS, DetectorSettings, create_detector, pose_model_present
from anonymize.faces.heads import FOUND_BY as HEAD_FOUND_BY
from anonymize.io.decode import ImageDecodeError, decode_image, sha256_file
from anonymize.io.manifest import MANIFEST_NAME, readable_values
from anonymize.io.outdir import WORK_DIR_NAME
from anonymize.metrics.quality import face_box_mask, ms_ssim, outside_faces_mask, psnr, ssim, ssim_map
from anonymize.models.device import resolve_device
from anonymize.run.local import available_cores, in_order, torch_threads_per_worker, worker_pool
from anonymize.weights import WeightsError, WeightsStore

MAX_PAIRWISE_FACES = 2000  # the "before" distances use at most this many original faces (pairs grow quadratically)


# ---- set-up -------------------------------------------------------------------------------------


def output_paths(config: AuditConfig) -> tuple[Path, Path, Path | None]:
    """Parquet, summary and report folder, refused when inside the original or anonymized folder."""
    base = Path(config.report_dir) if config.report_dir is not None else default_audit_dir(config.anonymized_dir)
    parquet = Path(config.parquet_path) if config.parquet_path is not None else base / AUDIT_PARQUET_NAME
    summary = Path(config.summary_path) if config.summary_path is not None else parquet.parent / AUDIT_SUMMARY_NAME
    report = Path(config.report_dir) if config.report_dir is not None else None
    for path, what in ((parquet, "audit Parquet"), (summary, "audit summary"), (report, "report folder")):
        if path is not None:
            refuse_inside(path, what, config.original_dir, config.anonymized_dir)
    return parquet, summary, report


def released_files_not_audited(anonymized_dir: Path, pairing: Pairing) -> list[tuple[str, Path, str]]:
    """Every entry of the released tree that no audited pair covers, as (relative path, path, why), sorted: side
    files (``--copy-other``), photos in a form the image walk does not take, hidden files, links. Each is a
    release file nobody checked, so it counts as not audited (a leak) like an unreadable image. Left out: the
    run's own ``manifest.parquet`` at the root (or the manifest the pairing read, when inside) and its
    ``.anonymize`` work folder at the root."""
    audited = {pair.output_rel for pair in pairing.pairs}
    audited_folders = {str(PurePosixPath(rel).parent) for rel in audited}
    root = Path(anonymized_dir)
    manifest = Path(os.path.realpath(pairing.manifest_path)) if pairing.manifest_path is not None else None
    found: list[tuple[str, Path, str]] = []

    def unlistable(exc: OSError) -> None:
        path = Path(exc.filename) if exc.filename else root
        rel = path.relative_to(root).as_posix() if path != root else "."
        found.append((rel, path, f"a folder the audit cannot list ({exc.strerror or exc}): not audited"))

    for folder, folders, files in os.walk(root, followlinks=False, onerror=unlistable):
        here = Path(folder)
        rel_folder = PurePosixPath(here.relative_to(root).as_posix()) if here != root else PurePosixPath()
        if here == root:
            folders[:] = [name for name in folders if name != WORK_DIR_NAME]
        for name in list(folders):
            path = here / name
            if path.is_symlink():
                rel = str(rel_folder / name)
                if not any(folder_rel == rel or folder_rel.startswith(rel + "/") for folder_rel in audited_folders):
                    found.append((rel, path, "a link to a folder in the release (not followed, not audited)"))
        folders.sort()
        for name in sorted(files):
            path = here / name
            rel = str(rel_folder / name)
            if rel in audited:
                continue
            if here == root and name == MANIFEST_NAME:
                continue
            if manifest is not None and Path(os.path.realpath(path)) == manifest:
                continue
            if path.is_symlink():
                why = "a link in the release (not followed, not audited)"
            elif name.startswith(".") or any(part.startswith(".") for part in rel_folder.parts):
                why = "a hidden file in the release (not audited: remove it, or check it by hand)"
            else:
                why = "not an image the audit reads (a side file: remove it from the release, or check it by hand)"
            found.append((rel, path, why))
    return sorted(found, key=lambda item: item[0])


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


def _open_instruments(config: AuditConfig, weights: WeightsStore, device: str, choice: AuditDetector) -> AuditInstruments:
    """Every model the audit measures with; a required one that cannot load stops the audit with one line."""
    try:
        # the audit looks harder than the run: recall-first thresholds, the frame padded and the mirror searched
        settings = DetectorSettings(config.det_threshold, 0, device, recall_first=choice.recall_first, augment=choice.recall_first,
                                    heads=config.heads and choice.recall_first and pose_model_present(weights))
        detector = create_detector(choice.name, weights, settings, **({"members": choice.members} if choice.members else {}))
        recognisers, unavailable = open_recognisers(weights, device, config.recogniser_backend, config.distance_threshold)
        output_detectors, missing_detectors = open_output_detectors(weights, device, getattr(detector, "members", [detector]))
    except WeightsError as exc:
        raise AuditError(str(exc)) from None
    output_detectors = {name: found for name, found in output_detectors.items() if name in config.output_detectors}
    unavailable += [item for item in missing_detectors if item.name in config.output_detectors]
    fid = open_fid_features(weights, device, config.fid_region) if config.fid else FidResult(None, "not requested")
    farl = open_farl_features(weights, device, config.fid_region) if config.farl_proxy else FidResult(None, "not requested")
    if config.fid_target is not None:  # FALCO's FID against another set: read it before the first image, loudly
        try:
            add_target_folder([item for item in (fid, farl) if isinstance(item, FidFeatures)], Path(config.fid_target),
                              config.max_pixels)
        except FidTargetError as exc:
            raise AuditError(str(exc)) from None
    lpips = open_lpips(weights, device) if config.lpips else Unavailable("lpips", "LPIPS", "not requested")
    if isinstance(lpips, Unavailable):
        unavailable.append(lpips)
    attributes = open_collector(config.attribute_source, weights, device) if config.attribute_source is not None else None
    mesh = open_mesh_check(weights, device)
    if isinstance(mesh, Unavailable):
        unavailable.append(mesh)
    return AuditInstruments(detector, recognisers, output_detectors, fid, farl, None if isinstance(lpips, Unavailable) else lpips,
                            attributes, unavailable, None if isinstance(mesh, Unavailable) else mesh)


def _originals_cache(config: AuditConfig, detector: Any, audit_folder: Path) -> OriginalsCache:
    """The originals' findings kept beside the audit's files (none when it writes no files or the cache is off)."""
    keep = config.write_files and config.originals_cache
    return OriginalsCache(audit_folder / CACHE_FOLDER if keep else None, detector_fingerprint(detector, config.max_pixels))


# ---- one image ----------------------------------------------------------------------------------


def _image_row(pair: ImagePair, **values: Any) -> dict[str, Any]:
    """A row with every schema column (None where not measured)."""
    row: dict[str, Any] = dict.fromkeys(ROW_SCHEMA.names)
    row.update(source_path=pair.source_rel, output_path=pair.output_rel, metadata_leak=[], metadata_detail="", size_mismatch=False,
               sampled=True)
    row.update(values)
    return row


def _check_file(pair: ImagePair) -> dict[str, Any]:
    """An image --sample left out: only what needs no network (its metadata, and whether it is a byte copy of its original)."""
    finding = inspect_metadata(pair.output_path)
    common = {"metadata_leak": list(finding.kinds), "metadata_detail": finding.detail, "sampled": False}
    if pair.source_path is None:
        return _image_row(pair, **common, error="no original with this path (faces not audited)")
    return _image_row(pair, **common, identical_to_source=_same_bytes(pair.source_path, pair.output_path))


@dataclass
class Measured:
    """What the networks found on one pair, measured on a worker thread; :func:`_fold_pair` adds it to the audit in order."""

    original: np.ndarray
    output: np.ndarray
    common: dict[str, Any]
    faces: list[SourceFace]
    found: list[Face]  # the audit detector's faces in the output
    described: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]  # recogniser -> (original, output) descriptors per face
    still_found: dict[str, list[float | None]]  # output detector -> per face, its overlap with a face it found (None: not found)
    similarity: np.ndarray  # SSIM map
    lpips_values: list[float]
    mesh_scores: dict[int, float]  # face index -> the face mesh's score, for possible faces left unchanged


def _measure_pair(pair: ImagePair, plan: AuditPlan, instruments: AuditInstruments,
                  originals: OriginalsCache, content: ContentIndex | None = None) -> Measured | dict[str, Any]:
    """Decode, detect, describe one pair (thread-safe: touches nothing shared but the instruments); a row when it cannot."""
    config = plan.config
    try:
        output = decode_image(pair.output_path, config.max_pixels, display_name=pair.output_rel)
    except ImageDecodeError as exc:
        return _image_row(pair, error=f"unreadable output: {exc}")
    finding = inspect_metadata(pair.output_path)
    common = {"metadata_leak": list(finding.kinds), "metadata_detail": finding.detail}
    if pair.source_path is None:
        return _image_row(pair, **common, error="no original with this path (faces not audited)")
    try:
        original = decode_image(pair.source_path, config.max_pixels, display_name=pair.source_rel)
    except ImageDecodeError as exc:
        return _image_row(pair, **common, error=f"unreadable original: {exc}")
    common["identity"] = plan.labels.get(pair.source_rel) if plan.labels else None
    common["identical_to_source"] = _same_bytes(pair.source_path, pair.output_path)
    output_rgb, common["size_mismatch"] = same_size(output.rgb, original.rgb)
    detector = instruments.detector
    try:
        findings = originals.findings(sha256_file(pair.source_path))
        faces = source_faces(original.rgb, detector, pair.manifest_boxes, plan.aligned, findings.detect(detector, original.rgb))
        faces = confirm_faces(original.rgb, faces, detector, findings.close_up_check())
        findings.save()
        in_output = instruments.output_detection.detect(output_rgb)
        boxes = [face.box for face in faces]
        described = {recogniser.name: recogniser.describe_pair(original.rgb, output_rgb, boxes) for recogniser in instruments.recognisers}
        if content is not None:  # every output against every original, by content (anonymize.audit.content_check)
            observe_pair(content, pair.source_rel, pair.output_rel, original.rgb, output.rgb, output_rgb, faces, in_output.audit,
                         described, instruments.recognisers)
        still_found = {name: match_boxes(boxes, [face.box for face in detected]) for name, detected in in_output.by_detector.items()}
        lpips_values = _lpips_of_faces(instruments.lpips, original.rgb, output_rgb, boxes) if faces else []
        mesh_scores = _mesh_scores(instruments.mesh, original.rgb, output_rgb, faces, config.unchanged_threshold)
    except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the audit
        return _image_row(pair, **common, error=f"audit failed ({type(exc).__name__}: {exc})")
    return Measured(original.rgb, output_rgb, common, faces, in_output.audit, described, still_found,
                    ssim_map(original.rgb, output_rgb), lpips_values, mesh_scores)


def trusted_alone(face: SourceFace) -> bool:
    """Whether the one detector that found ``face`` scored it at or above its own default threshold."""
    threshold = DEFAULT_THRESHOLDS.get(face.detectors[0]) if len(face.detectors) == 1 else None
    return threshold is not None and face.score is not None and face.score >= threshold


def _mesh_scores(mesh: Any, original: np.ndarray, output: np.ndarray, faces: list[SourceFace],
                 unchanged_threshold: float) -> dict[int, float]:
    """The face mesh's score of each possible face the release left unchanged (none without the mesh). Never ruled out:
    a head only the pose model found (a head turned away shows no face to fit, and is still someone), and a face its one
    detector scored at or above that detector's default threshold (the run would have trusted it; measured on faint VOC
    faces, the mesh scored 0.001 to 0.13 on real faces MTCNN found at 0.86 to 0.98: README, Audit)."""
    if mesh is None:
        return {}
    indices = [index for index, face in enumerate(faces)
               if face.possible and face.detectors != (HEAD_FOUND_BY,) and not trusted_alone(face)
               and is_unchanged(region_change(original, output, face.box), unchanged_threshold)]
    return dict(zip(indices, mesh.scores(original, [faces[index].box for index in indices])))


def _fold_pair(pair: ImagePair, measured: Measured, plan: AuditPlan, instruments: AuditInstruments, gathered: Gathered) -> None:
    """Add one measured pair to the audit's rows, descriptors and dataset-level collectors (in walk order)."""
    original, output, common, faces = measured.original, measured.output, measured.common, measured.faces
    boxes = [face.box for face in faces]
    mask = outside_faces_mask(original.shape, [*boxes, *pair.manifest_boxes])
    common["psnr_outside_db"] = psnr(original, output, mask)
    common["ssim_outside"] = ssim(original, output, mask, measured.similarity)
    for collector in (instruments.fid, instruments.farl):
        if isinstance(collector, FidFeatures):  # region "face": the confirmed faces' boxes (CFA-Net Table 3)
            collector.add(original, output, [face.box for face in faces if not face.possible])
    if not faces:
        gathered.rows.append(_image_row(pair, **common))
        return
    before, after = measured.described["dlib"]
    matches = match_boxes(boxes, [face.box for face in measured.found])
    for index, (face, overlap, descriptor_before, descriptor_after) in enumerate(zip(faces, matches, before, after)):
        box_mask = face_box_mask(original.shape, face.box)
        per_face = {
            "detected_by": [name for name, found_at in measured.still_found.items() if found_at[index] is not None],
            "psnr_face_db": psnr(original, output, box_mask),
            "ssim_face": ssim(original, output, box_mask, measured.similarity),
            "ms_ssim_face": ms_ssim(original, output, face.box),
            "lpips_face": measured.lpips_values[index] if measured.lpips_values else None,
        }
        for name, (originals, outputs) in measured.described.items():
            if name != "dlib":
                per_face[f"{name.replace('-', '_')}_distance"] = float(np.linalg.norm(originals[index] - outputs[index]))
            if not face.possible:
                descriptors = gathered.descriptors.setdefault(name, ([], []))
                descriptors[0].append(originals[index])
                descriptors[1].append(outputs[index])
        _add_face(plan, gathered, pair, index, face, overlap, descriptor_before, descriptor_after, original, output,
                  {**common, **per_face, "mesh_score": measured.mesh_scores.get(index)})
        if not face.possible:
            _collect_attributes(plan, instruments, gathered, original, output, face, f"{pair.source_rel}#{index}")


def _collect_attributes(plan: AuditPlan, instruments: AuditInstruments, gathered: Gathered, original: np.ndarray,
                        output: np.ndarray, face: SourceFace, key: str) -> None:
    collector = instruments.attributes
    if not isinstance(collector, AttributeCollector) or gathered.attributes_failed is not None:
        return
    try:
        collector.add(*matching_crops(original, output, face.box, face.landmarks, plan.aligned, key))
    except Exception as exc:  # noqa: BLE001 - attribute figures are one section: their failure stops only them
        gathered.attributes_failed = f"attribute estimation failed ({type(exc).__name__}: {' '.join(str(exc).split())})"


def _lpips_of_faces(lpips: Any, original: np.ndarray, output: np.ndarray, boxes: list) -> list[float]:
    if lpips is None:
        return []
    height, width = original.shape[:2]
    crops = []
    for x0, y0, x1, y1 in boxes:
        top, left = int(max(0, y0)), int(max(0, x0))
        bottom, right = max(int(min(height, y1)), top + 1), max(int(min(width, x1)), left + 1)
        crops.append((original[top:bottom, left:right], output[top:bottom, left:right]))
    return lpips.distances([a for a, _ in crops], [b for _, b in crops])


def _add_face(plan: AuditPlan, gathered: Gathered, pair: ImagePair, index: int, face: SourceFace, overlap: float | None,
              descriptor_before: np.ndarray, descriptor_after: np.ndarray, original: np.ndarray, output: np.ndarray,
              common: dict[str, Any]) -> None:
    config = plan.config
    change = region_change(original, output, face.box)
    distance = float(np.linalg.norm(descriptor_before - descriptor_after))
    if not face.possible:  # a possible face stays out of re-identification
        if index == 0 and common.get("identity") is not None:
            gathered.first_faces.append(len(gathered.gallery))
        gathered.face_rows.append(len(gathered.rows))
        gathered.gallery.append(descriptor_before)
        gathered.probes.append(descriptor_after)
    values = {**common, "identity": common.get("identity") if index == 0 else None}
    gathered.rows.append(_image_row(
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


# ---- across the dataset ---------------------------------------------------------------------------


def _fill_identification(plan: AuditPlan, gathered: Gathered) -> float | None:
    """Rank-1 columns of every face row; returns the chance hit rate."""
    if not gathered.gallery:
        return None
    rows = gathered.rows
    gallery_labels = [rows[row].get("identity") for row in gathered.face_rows] if plan.labels else None
    result = identify(np.stack(gathered.probes), np.stack(gathered.gallery), list(range(len(gathered.gallery))), gallery_labels)
    for probe, row_index in enumerate(gathered.face_rows):
        nearest_row = rows[gathered.face_rows[int(result.nearest[probe])]]
        row = rows[row_index]
        row["nearest_original"] = f"{nearest_row['source_path']}#{nearest_row['face_index']}"
        row["nearest_distance"] = float(result.nearest_distance[probe])
        row["rank1_hit"] = bool(result.hits[probe])
    return result.chance


def _subsample(indices: list[int], limit: int) -> list[int]:
    if len(indices) <= limit:
        return indices
    chosen = np.random.default_rng(0).choice(len(indices), size=limit, replace=False)
    return [indices[i] for i in sorted(chosen)]


def _before_distances(gathered: Gathered, separation: IdentitySeparation | None) -> dict[str, list[float]]:
    """Distances between originals, the scale the anonymized distances are read against."""
    if separation is not None:
        return {"same person": separation.same_distances, "different people": separation.different_distances}
    chosen = _subsample(list(range(len(gathered.gallery))), MAX_PAIRWISE_FACES)
    if len(chosen) < 2:
        return {}
    faces = np.stack([gathered.gallery[i] for i in chosen])
    distances = pairwise_distances(faces, faces)
    return {"between originals": [float(v) for v in distances[np.triu_indices(len(chosen), 1)]]}


def _separation(plan: AuditPlan, gathered: Gathered) -> IdentitySeparation | None:
    if not plan.labels:
        return None
    chosen = _subsample(gathered.first_faces, MAX_PAIRWISE_FACES)
    labels = [gathered.rows[gathered.face_rows[i]]["identity"] for i in chosen]
    if len(chosen) < 2:
        return None
    return identity_separation(np.stack([gathered.gallery[i] for i in chosen]), labels, plan.config.distance_threshold)


def _recogniser_figures(plan: AuditPlan, instruments: AuditInstruments, gathered: Gathered) -> dict[str, RecogniserFigures]:
    """Every protocol of :mod:`anonymize.audit.protocols`, for each available recogniser."""
    figures: dict[str, RecogniserFigures] = {}
    rows = gathered.confirmed_face_rows()
    labelled = list(gathered.first_faces)  # gallery indices of labelled images' first faces
    labels_of_gallery = [row.get("identity") for row in rows] if plan.labels else None
    for recogniser in instruments.recognisers:
        originals, outputs = gathered.descriptors.get(recogniser.name, ([], []))
        if not originals:
            figures[recogniser.name] = RecogniserFigures(recogniser.instrument, recogniser.threshold, 0)
            continue
        gallery, probes = np.stack(originals), np.stack(outputs)
        genuine = np.linalg.norm(gallery - probes, axis=1)
        ranks = true_identity_ranks(probes, gallery, list(range(len(gallery))), labels_of_gallery)
        pairs = tprs = parrot = None
        if plan.labels and len(labelled) >= 2:
            labels = [rows[i]["identity"] for i in labelled]
            impostor = different_person_distances(gallery[labelled], labels)
            pairs = int(len(impostor))
            tprs = {f"{far:g}": tpr_at_far(genuine, impostor, far) for far in FARS}
            parrot = parrot_identification(probes[labelled], labels)
        figures[recogniser.name] = RecogniserFigures(
            recogniser.instrument, recogniser.threshold, len(originals),
            verification_rate=float((genuine < recogniser.threshold).mean()), rank1_rate=float((ranks == 1).mean()),
            mean_rank=float(ranks.mean()), gallery=len(gallery), different_person_pairs=pairs, tpr_at_far=tprs, parrot=parrot)
    return figures


def _detection_by_detector(instruments: AuditInstruments, gathered: Gathered) -> dict[str, DetectorDetection]:
    rows = gathered.confirmed_face_rows()
    detected = {name: sum(name in (row["detected_by"] or []) for row in rows) for name in instruments.output_detectors}
    return {name: DetectorDetection(count, len(rows), count / len(rows) if rows else None) for name, count in detected.items()}


def _attribute_figures(config: AuditConfig, instruments: AuditInstruments, gathered: Gathered) -> AttributeFigures:
    if config.attribute_source is None:
        return AttributeFigures.unavailable("not requested")
    opened = instruments.attributes
    if isinstance(opened, AttributeFigures):
        return opened
    if gathered.attributes_failed is not None:
        return AttributeFigures.unavailable(gathered.attributes_failed)
    try:
        tables = opened.tables() if opened is not None else None
        if tables is None:
            return AttributeFigures.unavailable("no face was audited")
        return attribute_figures(*tables, config.quasi_identifiers, config.sensitive, config.attribute_k)
    except Exception as exc:  # noqa: BLE001
        return AttributeFigures.unavailable(f"attribute figures failed ({type(exc).__name__}: {' '.join(str(exc).split())})")


def _mesh_status(instruments: AuditInstruments) -> str:
    """What rules possible faces out, or why nothing does."""
    if instruments.mesh is not None:
        return f"facemesh (ruled out under {MESH_FACE_SCORE})"
    missing = next((item.status for item in instruments.unavailable if item.name == "facemesh"), "not loaded")
    return f"none: {missing}"


def _fid_result(instrument: FidFeatures | FidResult) -> FidResult:
    return instrument.result() if isinstance(instrument, FidFeatures) else instrument


# ---- the run ------------------------------------------------------------------------------------


def run_audit(config: AuditConfig, progress: AuditProgress | None = None) -> AuditResult:
    """Audit ``config.anonymized_dir`` against ``config.original_dir``; see the module doc for the defaults."""
    progress = progress or AuditProgress()
    original_dir, anonymized_dir = Path(config.original_dir), Path(config.anonymized_dir)
    if is_inside(original_dir, anonymized_dir):  # the anonymized tree would then hold the originals too
        raise AuditError(f"{original_dir}: the original folder must not be the anonymized folder or lie inside it")
    parquet_path, summary_path, report_dir = output_paths(config)
    if config.fid_target is not None and not Path(config.fid_target).is_dir():
        raise AuditError(f"{config.fid_target}: --fid-target is not a folder")
    pairing = pair_images(original_dir, anonymized_dir, config.manifest_path)
    try:
        goal, goal_source = resolve_goal(config.privacy_goal, pairing.privacy_goal)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    if config.write_files:  # a link where the report's folders or the cache go: one line, before any work
        if report_dir is not None:
            check_report_folders(config, report_dir, goal)
        if config.originals_cache:
            refuse_links_below(parquet_path.parent, CACHE_FOLDER.parts)
    weights = WeightsStore(config.weights_dir, trust_unverified=config.trust_unverified)
    device = resolve_device(config.device)
    run_aligned = bool(pairing.run_arguments.get("aligned", False))
    run_detector = None if run_aligned else pairing.run_detector  # an aligned run detects nothing
    try:
        choice = choose_audit_detector(config.detector, weights, run_detector)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    instruments = _open_instruments(config, weights, device, choice)
    sources = [pair.source_rel for pair in pairing.pairs if pair.source_rel]
    if config.identities_file is not None:
        labels: dict[str, str] | None = read_identities(Path(config.identities_file), sources)
    else:
        labels = identity_labels(sources, config.identity_from_folders)
    plan = AuditPlan(config, run_aligned if config.aligned is None else config.aligned, labels)

    gathered = Gathered()
    originals = _originals_cache(config, instruments.detector, parquet_path.parent)
    sampled = sample_indices([pair.output_rel for pair in pairing.pairs], config.sample, config.sample_seed)
    workers = available_cores() if config.workers is None else max(config.workers, 1)
    content = ContentIndex({recogniser.name: recogniser.threshold for recogniser in instruments.recognisers})

    def measure(index: int) -> Measured | dict[str, Any]:
        pair = pairing.pairs[index]
        return _measure_pair(pair, plan, instruments, originals, content) if index in sampled else _check_file(pair)

    instruments.output_detection  # noqa: B018 - built once here, before the worker threads share it
    progress.start(len(pairing.pairs))
    pool = worker_pool(workers)
    with torch_threads_per_worker(workers, False):
        for index, measured in enumerate(in_order(pool, measure, range(len(pairing.pairs)), 2 * workers)):
            pair = pairing.pairs[index]
            if isinstance(measured, Measured):
                _fold_pair(pair, measured, plan, instruments, gathered)
            else:
                gathered.rows.append(measured)
            progress.advance()
            last = gathered.rows[-1] if gathered.rows else None
            if last is not None and last["error"] and last["output_path"] == pair.output_rel:
                progress.message(f"not audited: {pair.output_rel}: {last['error']}")
    pool.shutdown()
    for relpath, path, why in released_files_not_audited(anonymized_dir, pairing):
        gathered.rows.append(_image_row(ImagePair(relpath, path, None, None), error=why, sampled=False))
        progress.message(f"not audited: {relpath}: {why}")

    copies = content_copies(content, pairing.originals, {pair.output_rel: pair.output_path for pair in pairing.pairs},
                            {pair.output_rel: pair.source_rel for pair in pairing.pairs},
                            lambda path, rel: decode_image(path, config.max_pixels, display_name=rel).rgb, workers)
    chance = _fill_identification(plan, gathered)
    separation = _separation(plan, gathered)
    written = config.write_files
    report_path = report_dir / REPORT_NAME if written and report_dir is not None else None
    summary = _summary(plan, pairing, instruments, gathered, choice, (goal, goal_source), chance, separation,
                       parquet_path if written else None, report_path, len(sampled), copies)
    result = AuditResult(gathered.rows, summary, parquet_path if written else None, summary_path if written else None, report_path,
                         _before_distances(gathered, separation))
    if written:
        _write(result, config, parquet_path, summary_path, report_dir)
    return result


def _summary(plan: AuditPlan, pairing: Pairing, instruments: AuditInstruments, gathered: Gathered, choice: AuditDetector,
             goal: tuple[str, str], chance: float | None, separation: IdentitySeparation | None,
             parquet_path: Path | None, report_path: Path | None, sampled: int,
             copies: ContentCopies | None = None) -> AuditSummary:
    """Every figure computed first, then the summary built once (``goal``: the privacy goal and where it comes from)."""
    config, thresholds = plan.config, plan.config.thresholds
    privacy_goal, goal_source = goal
    faces = face_figures(gathered.rows, chance, bool(plan.labels), _mesh_status(instruments))
    images = image_figures(gathered.rows, _fid_result(instruments.fid), _fid_result(instruments.farl))
    detector, detector_reason = instruments.detector.name, choice.reason
    warnings = []
    if separation is not None and not separation.separated:
        warnings.append("the recogniser does not separate the identities of these originals well: re-identification figures are unreliable")
    if "not stronger" in detector_reason or "only one detector" in detector_reason:
        warnings.append(f"detector {detector}: {detector_reason}")
    recognisers = _recogniser_figures(plan, instruments, gathered)
    judge_names, judge_reason = choose_judges([recogniser.name for recogniser in instruments.recognisers], pairing.loss_recognisers)
    judges = judge_figures(recognisers, judge_names, privacy_goal, judge_reason, pairing.loss_recognisers)
    judge = judges.worst or (judge_names[0] if judge_names else None)
    confirmed = gathered.confirmed_face_rows()
    human_goal = human_goal_figures(recognisers, confirmed, judge, judge_reason, pairing.loss_recognisers,
                                    thresholds.max_face_psnr_db, thresholds.max_face_ssim) if privacy_goal == "human" else None
    look_alike = look_alike_figures(confirmed, thresholds.max_face_psnr_db, thresholds.max_face_ssim)
    unavailable = {item.name: UnavailableInstrument(item.instrument, item.status) for item in instruments.unavailable}
    detection_by_detector = _detection_by_detector(instruments, gathered)
    attributes = _attribute_figures(config, instruments, gathered)
    sample = (sample_figures(sampled, len(pairing.pairs), config.sample_seed, faces, judges)
              if sampled < len(pairing.pairs) else None)
    crossed = crossed_thresholds(thresholds, faces, images, privacy_goal, judges, human_goal, look_alike, sample)
    crossed += copies_crossed(copies)
    return AuditSummary(
        anonymize_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        original_dir=str(Path(config.original_dir).resolve()),
        anonymized_dir=str(Path(config.anonymized_dir).resolve()),
        manifest_path=str(pairing.manifest_path) if pairing.manifest_path else None,
        pairing="manifest" if pairing.manifest_path else "relative path",
        run=RunOrigin(  # what made the anonymized folder, from its manifest (for `anonymize audit compare`)
            method=pairing.run_arguments.get("method"),  # type: ignore[arg-type]
            options=pairing.run_arguments.get("method_options") or {},  # type: ignore[arg-type]
            region=pairing.run_arguments.get("region"),
        ),
        detector=detector,
        detector_reason=detector_reason,
        aligned=plan.aligned,
        identity_labels="folders" if plan.labels else None,
        distance_threshold=config.distance_threshold,
        unchanged_threshold=config.unchanged_threshold,
        thresholds=thresholds,
        not_released=len(pairing.not_released),
        missing_outputs=pairing.missing_outputs[:200],
        **spread(images),
        **spread(faces),
        identity_check=identity_check(separation, bool(plan.labels)),
        warnings=warnings,
        recognisers=recognisers,
        judges=judges,
        privacy_goal=privacy_goal,
        privacy_goal_source=goal_source,
        recogniser_roles=RecogniserRoles(list(pairing.loss_recognisers), judge_names, judge, judge_reason),
        human_goal=human_goal,
        look_alike=look_alike,
        instruments_unavailable=unavailable,
        detection_by_detector=detection_by_detector,
        attributes=attributes,
        figures=paper_figures(detection_by_detector=detection_by_detector, instruments_unavailable=unavailable,
                              recognisers=recognisers, face_quality=faces.face_quality, quality=images.quality,
                              attributes=attributes),
        passed=not crossed,
        crossed=crossed,
        parquet_path=str(parquet_path) if parquet_path is not None else None,
        report_path=str(report_path) if report_path is not None else None,
        sample=sample,
        content_copies=copies,
    )


def _write(result: AuditResult, config: AuditConfig, parquet_path: Path, summary_path: Path, report_dir: Path | None) -> None:
    """The Parquet (its metadata holds the summary, without the files' paths), the report, then the summary JSON."""
    summary = readable_values(result.summary.to_json(files=False))  # file names that are not UTF-8 as \xNN
    metadata = {"anonymize_version": __version__, "audit_summary": json.dumps(summary)}
    write_rows(parquet_path, result.rows, metadata)
    if report_dir is not None:
        write_report(result, config, report_dir)
    write_summary(summary_path, result.summary.to_json())
