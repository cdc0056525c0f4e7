"""What an adversarial run achieved, read back from its output folder: for every recogniser and alignment an
attacker could use, the share of written faces still matched to their original, and rank-1 among all originals.

Judges (each where its weights are present):

* ``dlib``: dlib's ResNet on the chip of its 5-point predictor fitted in the run's box (the alignment the
  step attacks when dlib is in its ensemble);
* ``dlib-68``: dlib's C++ recogniser on the chip of the 68-point predictor (face_recognition's default);
* ``dlib-box``: dlib's ResNet, the 5-point predictor fitted in the whole image as the face box (aligned input);
* ``mobileface`` and ``faceres``: the TF.js recognisers (:mod:`anonymize.metrics.graph_recognisers`).

A judge's "same person" line is set on the originals themselves when identities are known: the
distance at FAR 1e-3 over their different-identity pairs; otherwise its own default. ``in_ensemble``
marks the recognisers the perturbation was computed against, every dlib alignment included when dlib was
(the others are held out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
import pyarrow.parquet as pq

from anonymize.faces.chips import CHIP_PADDING, CHIP_SIZE
from anonymize.faces.landmarks import box_rectangle, shape_predictor
from anonymize.io.decode import decode_image
from anonymize.metrics.identity import SAME_PERSON_DISTANCE, Boxes, DlibRecogniser
from anonymize.metrics.quality import face_box_mask, psnr, ssim
from anonymize.metrics.verification import threshold_at_far
from anonymize.weights import WeightsError, WeightsStore

FAR = 1e-3
Describe = Callable[[np.ndarray, Boxes], np.ndarray]


class Landmarks68Recogniser:
    """dlib's C++ recogniser on chips aligned from the 68-point landmarks fitted in each box."""

    def __init__(self, weights: WeightsStore) -> None:
        self._predictor = shape_predictor(weights.require("dlib_shape_predictor_68"))
        self._encoder = dlib.face_recognition_model_v1(str(weights.require("dlib_face_recognition_resnet")))

    def descriptors(self, rgb: np.ndarray, boxes: Boxes) -> np.ndarray:
        image = np.ascontiguousarray(rgb)
        chips = []
        for box in boxes:
            chips.append(dlib.get_face_chip(image, self._predictor(image, box_rectangle(box)), size=CHIP_SIZE, padding=CHIP_PADDING))
        return np.asarray(self._encoder.compute_face_descriptor(chips), dtype=np.float32) if chips else np.zeros((0, 128))


@dataclass(frozen=True)
class Judge:
    name: str
    describe: Describe
    default_threshold: float  # L2 distance under which two faces are one person, without identities


def open_judges(weights: WeightsStore, device: str = "cpu", aligned: bool = True) -> tuple[list[Judge], dict[str, str]]:
    """Every judge whose weights are here, and why the others are missing."""
    dlib_net = DlibRecogniser(weights, device=device)
    judges = [Judge("dlib", dlib_net.descriptors, SAME_PERSON_DISTANCE),
              Judge("dlib-68", Landmarks68Recogniser(weights).descriptors, SAME_PERSON_DISTANCE)]
    if aligned:
        def whole_image(rgb: np.ndarray, boxes: Boxes) -> np.ndarray:
            height, width = rgb.shape[:2]
            return dlib_net.descriptors(rgb, [(0.0, 0.0, float(width), float(height))] * len(boxes))

        judges.append(Judge("dlib-box", whole_image, SAME_PERSON_DISTANCE))
    missing = {}
    from anonymize.metrics.graph_recognisers import GraphRecogniser

    for name in ("mobileface", "faceres"):
        try:
            graph = GraphRecogniser(weights, name, device)
        except WeightsError as exc:
            missing[name] = str(exc)
            continue
        judges.append(Judge(name, graph.descriptors, graph.distance_threshold))
    return judges, missing


@dataclass(frozen=True)
class JudgeFigures:
    name: str
    in_ensemble: bool
    threshold: float
    threshold_source: str  # "FAR 1e-3 on the originals" or "default"
    matched: float  # share of written faces under the threshold from their own original
    rank1: float | None  # share whose nearest original is the same person (None: no identities)


@dataclass(frozen=True)
class AdversarialFigures:
    faces: int
    ensemble: tuple[str, ...]
    judges: list[JudgeFigures]
    psnr_db: float  # mean over faces, face box: the perturbed vs the unperturbed final image (the manifest's)
    ssim: float
    written_psnr_db: float  # face box, the written file vs the original (paste-back resampling and JPEG included)
    written_ssim: float
    matched_before: float  # dlib (PyTorch, its own chip) before the perturbation, from the manifest
    matched_after: float  # ... after it, in memory

    def judge(self, name: str) -> JudgeFigures:
        return next(figures for figures in self.judges if figures.name == name)

    def lines(self) -> list[str]:
        out = [f"faces {self.faces}; ensemble {', '.join(self.ensemble)}; the perturbation in the face box: PSNR {self.psnr_db:.1f} dB, "
               f"SSIM {self.ssim:.3f} (written file vs original: {self.written_psnr_db:.1f} dB, {self.written_ssim:.3f})",
               f"dlib (manifest): {self.matched_before:.0%} matched before, {self.matched_after:.0%} after (in memory)"]
        for figures in self.judges:
            role = "in the ensemble" if figures.in_ensemble else "held out"
            rank1 = "n/a" if figures.rank1 is None else f"{figures.rank1:.0%}"
            out.append(f"{figures.name} ({role}): {figures.matched:.0%} matched, rank-1 {rank1} "
                       f"(distance < {figures.threshold:.3f}, {figures.threshold_source})")
        return out


def _rows(output_dir: Path) -> list[dict]:
    rows = pq.read_table(output_dir / "manifest.parquet").to_pylist()
    return [row for row in rows if row["status"] == "done" and row.get("adv_kind")]


def measure(input_dir: Path, output_dir: Path, weights: WeightsStore, labels: Mapping[str, str] | None = None,
            device: str = "cpu") -> AdversarialFigures:
    """The figures of the adversarial run written into ``output_dir`` from ``input_dir``; ``labels``: source path -> identity."""
    rows = _rows(output_dir)
    judges, _ = open_judges(weights, device, aligned=True)
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source_path"], []).append(row)
    originals: dict[str, list[np.ndarray]] = {judge.name: [] for judge in judges}
    outputs: dict[str, list[np.ndarray]] = {judge.name: [] for judge in judges}
    identities, psnrs, ssims = [], [], []
    for source, face_rows in sorted(by_source.items()):
        boxes = [list(row["box"]) for row in face_rows]
        original = decode_image(input_dir / source).rgb
        output = decode_image(output_dir / face_rows[0]["output_path"]).rgb
        for judge in judges:
            originals[judge.name] += list(judge.describe(original, boxes))
            outputs[judge.name] += list(judge.describe(output, boxes))
        for box in boxes:
            mask = face_box_mask(original.shape, tuple(box))
            psnrs.append(psnr(original, output, mask) or 0.0)
            ssims.append(ssim(original, output, mask) or 1.0)
            identities.append(labels.get(source) if labels else None)
    ensemble = tuple(str(rows[0].get("adv_ensemble") or "dlib").split(",")) if rows else ()
    known = labels is not None and all(identity is not None for identity in identities) and len(set(identities)) >= 2
    figures = [_judge_figures(judge, np.stack(originals[judge.name]), np.stack(outputs[judge.name]),
                              identities if known else None, judge.name.split("-")[0] in ensemble)
               for judge in judges] if rows else []
    before = [row["adv_distance_before"] < SAME_PERSON_DISTANCE for row in rows]
    after = [row["adv_distance_after"] < SAME_PERSON_DISTANCE for row in rows]
    def mean(values: Sequence[float | None]) -> float:
        present = [float(value) for value in values if value is not None and np.isfinite(value)]
        return float(np.mean(present)) if present else float("nan")

    return AdversarialFigures(len(rows), ensemble, figures, mean([row.get("adv_psnr_db") for row in rows]),
                              mean([row.get("adv_ssim") for row in rows]), mean(psnrs), mean(ssims),
                              float(np.mean(before)) if before else float("nan"), float(np.mean(after)) if after else float("nan"))


def _judge_figures(judge: Judge, originals: np.ndarray, outputs: np.ndarray, identities: Sequence[str] | None,
                   in_ensemble: bool) -> JudgeFigures:
    genuine = np.linalg.norm(originals - outputs, axis=1)
    threshold, source, rank1 = judge.default_threshold, "default", None
    if identities is not None:
        labels = np.asarray(identities)
        gallery = np.linalg.norm(originals[:, None, :] - originals[None, :, :], axis=2)
        upper = np.triu_indices(len(originals), 1)
        different = gallery[upper][labels[upper[0]] != labels[upper[1]]]
        same = gallery[upper][labels[upper[0]] == labels[upper[1]]]
        if len(different) and len(same):
            threshold = threshold_at_far(same, different, FAR, higher_is_same=False).value
            source = f"FAR {FAR:g} on {len(different)} different-identity pairs of the originals"
        probes = np.linalg.norm(outputs[:, None, :] - originals[None, :, :], axis=2)
        rank1 = float(np.mean(labels[probes.argmin(axis=1)] == labels))
    return JudgeFigures(judge.name, in_ensemble, float(threshold), source, float(np.mean(genuine < threshold)), rank1)
