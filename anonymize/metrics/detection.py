"""Detection quality against hand-labelled boxes (dlib's imglab XML), for tests and benchmarks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def read_imglab_boxes(path: Path) -> dict[str, list[Box]]:
    """File name -> labelled face boxes from an imglab XML file (box top/left/width/height)."""
    boxes: dict[str, list[Box]] = {}
    for image in ET.parse(path).getroot().iter("image"):
        found = boxes.setdefault(image.get("file", ""), [])
        for box in image.iter("box"):
            if box.get("ignore") == "1":
                continue
            left, top = float(box.get("left", 0)), float(box.get("top", 0))
            found.append((left, top, left + float(box.get("width", 0)), top + float(box.get("height", 0))))
    return boxes


def iou(a: Box, b: Box) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class DetectionScore:
    labelled: int = 0
    found: int = 0  # labelled faces matched by a detection
    false_positives: int = 0  # detections matching no labelled face

    @property
    def recall(self) -> float:
        return self.found / self.labelled if self.labelled else 1.0

    def add(self, predicted: Sequence[Box], labelled: Sequence[Box], threshold: float = 0.3) -> None:
        """Greedy one-to-one matching by IoU, best pairs first."""
        pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(predicted) for j, g in enumerate(labelled)), reverse=True)
        used_pred, used_gt = set(), set()
        for overlap, i, j in pairs:
            if overlap < threshold:
                break
            if i in used_pred or j in used_gt:
                continue
            used_pred.add(i)
            used_gt.add(j)
        self.labelled += len(labelled)
        self.found += len(used_gt)
        self.false_positives += len(predicted) - len(used_pred)
