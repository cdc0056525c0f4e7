"""What an adversarial run achieved, read back from its output folder: the share of faces dlib
still matches to their original (distance < 0.6) before the perturbation, after it, in the written
file (after the JPEG encoding), and for a recogniser the attack did not see.

No truly independent recogniser is available offline here (FaceNet's weights are not shipped with
facenet-pytorch), so the transfer figure uses dlib's C++ binding with another alignment: the chip cut
from dlib's 68-point landmarks (face_recognition's default) instead of the 5-point ones the attack
cut through. Same network weights: it measures robustness to the alignment, not transfer to another
model, and says so wherever it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from anonymize.faces.chips import CHIP_PADDING, CHIP_SIZE
from anonymize.metrics.identity import SAME_PERSON_DISTANCE, Boxes, DlibRecognizer, distance
from anonymize.weights import WeightsStore


class Landmarks68Recognizer:
    """dlib's C++ recogniser on chips aligned from the 68-point landmarks fitted in each box."""

    def __init__(self, weights: WeightsStore) -> None:
        self._predictor = _predictor68(weights.require("dlib_shape_predictor_68"))
        self._encoder = dlib.face_recognition_model_v1(str(weights.require("dlib_face_recognition_resnet")))

    def descriptors(self, rgb: np.ndarray, boxes: Boxes) -> np.ndarray:
        image = np.ascontiguousarray(rgb)
        chips = []
        for x0, y0, x1, y1 in boxes:
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            chips.append(dlib.get_face_chip(image, self._predictor(image, rect), size=CHIP_SIZE, padding=CHIP_PADDING))
        return np.asarray(self._encoder.compute_face_descriptor(chips), dtype=np.float32) if chips else np.zeros((0, 128))


@lru_cache(maxsize=1)
def _predictor68(path: Path) -> dlib.shape_predictor:
    return dlib.shape_predictor(str(path))


@dataclass(frozen=True)
class AdversarialFigures:
    faces: int
    matched_before: float  # share of faces matched to their original before the perturbation (the method's output)
    matched_after: float  # after it, in memory (the attacked recogniser, its own alignment)
    matched_written: float  # in the written file (JPEG at the run's quality, when the output is JPEG)
    matched_transfer_written: float  # dlib C++ with 68-point alignment, the written file
    psnr_db: float  # mean PSNR under the chips (perturbed vs unperturbed output)
    distance_after: float  # mean distance to the original, in memory
    distance_written: float  # mean distance to the original, written file

    def lines(self) -> list[str]:
        return [f"faces {self.faces}",
                f"dlib (attacked) match rate: {self.matched_before:.0%} before -> {self.matched_after:.0%} after "
                f"-> {self.matched_written:.0%} in the written file",
                f"mean distance to the original: {self.distance_after:.3f} after, {self.distance_written:.3f} written",
                f"PSNR under the chips: {self.psnr_db:.1f} dB",
                f"dlib C++ with 68-point alignment (same weights, not independent), written file: "
                f"{self.matched_transfer_written:.0%}"]


def measure(input_dir: Path, output_dir: Path, weights: WeightsStore) -> AdversarialFigures:
    """The figures of the adversarial run written into ``output_dir`` from ``input_dir`` (its manifest, its files)."""
    table = pq.read_table(output_dir / "manifest.parquet").to_pandas()
    table = table[(table.status == "done") & table.adv_kind.notna()]
    attacked, other = DlibRecognizer(weights), Landmarks68Recognizer(weights)
    written, transfer = [], []
    for source, rows in table.groupby("source_path"):
        boxes = [list(box) for box in rows.box]
        original = _rgb(input_dir / source)
        output = _rgb(output_dir / rows.output_path.iloc[0])
        written += list(distance(attacked.descriptors(original, boxes), attacked.descriptors(output, boxes)))
        transfer += list(distance(other.descriptors(original, boxes), other.descriptors(output, boxes)))

    def rate(values: object) -> float:
        return float(np.mean(np.asarray(values) < SAME_PERSON_DISTANCE))

    return AdversarialFigures(len(table), rate(table.adv_distance_before), rate(table.adv_distance_after), rate(written),
                              rate(transfer), float(table.adv_psnr_db.mean()),
                              float(table.adv_distance_after.mean()), float(np.mean(written)))


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
