"""The audit's types: what to audit and how (:class:`AuditConfig`), what it resolved before the first
image (:class:`AuditPlan`), what it gathers image by image (:class:`Gathered`) and what it returns
(:class:`AuditResult`). The defaults are explained in :mod:`anonymize.audit.audit`; the summary's
records are in :mod:`anonymize.audit.summary`, the loaded instruments in :mod:`anonymize.audit.instruments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.audit.attributes import DEFAULT_K, DEFAULT_QUASI_IDENTIFIERS, DEFAULT_SENSITIVE, DEFAULT_SOURCE
from anonymize.audit.instruments import OUTPUT_DETECTORS
from anonymize.audit.missed import UNCHANGED_MEAN_ABS_DIFF
from anonymize.audit.summary import AuditSummary, Thresholds
from anonymize.io.decode import DEFAULT_MAX_PIXELS
from anonymize.metrics.identity import SAME_PERSON_DISTANCE

AUTO = "auto"


class AuditProgress:
    """What the audit reports as it goes; the CLI draws it, tests ignore it."""

    def start(self, total: int) -> None: ...

    def advance(self) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass(frozen=True)
class AuditConfig:
    """What to audit and how; only the two folders are required (defaults: see :mod:`anonymize.audit.audit`)."""

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
    fid_region: str = "image"  # image: whole images; face: the crops of the confirmed face boxes (CFA-Net Table 3)
    fid_target: Path | None = None  # a folder of images FID (and the FaRL proxy) compares the outputs with, instead of
    # the originals (FALCO Table 2's FID against CelebA-HQ); None: the originals
    farl_proxy: bool = True  # FaRL-feature Fréchet proxy, only when the farl_ep64 weights are present
    lpips: bool = True  # LPIPS of face crops, only when lpips and its weights are present
    identities_file: Path | None = None  # "<original path>,<identity>" lines; overrides identity folders
    recogniser_backend: str = "torch"  # dlib recogniser: torch (batched, CPU or CUDA) | dlib
    output_detectors: tuple[str, ...] = OUTPUT_DETECTORS  # per-detector detection rates on the outputs
    thresholds: Thresholds = field(default_factory=Thresholds)
    worst_cases: int = 8  # faces shown per section of the report
    max_pixels: int = DEFAULT_MAX_PIXELS
    # auto: as the run's manifest records (FALCO and the filters: machine; camouflage: human), else machine.
    # "human" audits any folder for that goal, e.g. one that was never anonymized (see anonymize.audit.human).
    privacy_goal: str = AUTO
    study_pairs: int | None = None  # blind human study kit beside the report; None: 200 for the human goal, else none
    study_control_pairs: int = 200  # real-real control pairs in the kit (needs identities), as the papers' 200
    study_seed: int = 0
    # Attribute privacy (AnonymousNet, anonymize.audit.attributes): k / l / t of the release from
    # attributes re-estimated on the outputs; None: not measured.
    attribute_source: str | None = DEFAULT_SOURCE
    quasi_identifiers: tuple[str, ...] = DEFAULT_QUASI_IDENTIFIERS
    sensitive: tuple[str, ...] = DEFAULT_SENSITIVE
    attribute_k: int = DEFAULT_K  # the release's share of faces in classes smaller than this is reported
    # keep the audit detector's findings on each original by content hash beside the audit's files, so a
    # re-audit does not detect them again (anonymize.audit.originals_cache)
    originals_cache: bool = True
    # --sample N: audit N images drawn with sample_seed face by face, check every image's file (metadata, byte
    # copies), and gate the sampled rates on their 95% upper bounds (anonymize.audit.sampling); None: every image
    sample: int | None = None
    sample_seed: int = 0
    workers: int | None = None  # threads measuring pairs (decode, detect, describe); None: one per core
    # the pose model's heads where no face box lies, with the auto detector, when MoveNet is in the weights folder
    heads: bool = True


@dataclass(frozen=True)
class AuditPlan:
    """What the audit settled before the first image: the config, whether images are aligned crops, the identities."""

    config: AuditConfig
    aligned: bool
    labels: dict[str, str] | None  # source path -> identity, when known


@dataclass
class Gathered:
    """What the audit collects image by image (rows, descriptors), read once every image is done."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # one per audited face, or per image without one
    descriptors: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)  # name -> (originals, outputs)
    gallery: list[np.ndarray] = field(default_factory=list)  # original face descriptors (dlib)
    probes: list[np.ndarray] = field(default_factory=list)  # anonymized face descriptors, same order
    face_rows: list[int] = field(default_factory=list)  # row index of each gallery face
    first_faces: list[int] = field(default_factory=list)  # gallery index of each labelled image's first face
    attributes_failed: str | None = None  # why the attribute figures are missing, once estimation failed

    def confirmed_face_rows(self) -> list[dict[str, Any]]:
        """The rows of the faces in the gallery (possible faces apart), in gallery order."""
        return [self.rows[index] for index in self.face_rows]


@dataclass(frozen=True)
class AuditResult:
    """The audit's rows and summary, and the files it wrote (None when it wrote none)."""

    rows: list[dict[str, Any]]  # one per audited face, or per image without one (see results.ROW_SCHEMA)
    summary: AuditSummary
    parquet_path: Path | None = None
    summary_path: Path | None = None
    report_path: Path | None = None
    before_distances: dict[str, list[float]] = field(default_factory=dict)  # for the report's histogram

    @property
    def passed(self) -> bool:
        """No threshold crossed (the summary's verdict)."""
        return self.summary.passed

    @property
    def crossed(self) -> list[str]:
        """One sentence per crossed threshold."""
        return self.summary.crossed
