"""A crowded test set with known faces, built from ../shared/data: small, overlapping and cut faces.

The VOC photos in ../shared/data/groups are too easy to tell detectors apart (every one finds 43/43),
so these scenes are made where the labels are known by construction:

* ``small``: 24 aligned CelebA photos pasted at 20 to 40 px face width on dogs.jpg (no human face),
  each blended in through a soft ellipse so no square edge helps the detector.
* ``overlapping``: 8 pairs of faces, the second pasted over the first so that it (with its hair and the
  blend's surroundings, measured on the blend's opacity) hides a third to a half of the first face's box;
  both are labelled (a person sees both).
* ``cut``: CelebA faces pasted with 55 to 60 % of them inside the frame on each edge, and the labelled VOC photos
  cropped so that the frame cuts faces; a face is labelled when at least half of its box is inside
  the frame, with its box clipped to the frame.

A CelebA face's box is the mean RetinaFace box over the aligned 178 x 218 photos of celeba-ids,
(47, 68, 133, 183), scaled with the photo. Scores use :class:`~anonymize.metrics.detection.DetectionScore`
(IoU >= 0.3, one detection per face).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anonymize.io.decode import decode_image
from anonymize.metrics.detection import read_imglab_boxes

Box = tuple[float, float, float, float]
CELEBA_FACE = (47.0, 68.0, 133.0, 183.0)  # in an aligned 178 x 218 CelebA photo
CELEBA_SIZE = (178, 218)


def celeba_photos(shared: Path) -> list[np.ndarray]:
    return [decode_image(path).rgb for path in sorted((shared / "data" / "celeba-ids").glob("*/*.jpg"))[::2]]


def paste_face(canvas: np.ndarray, photo: np.ndarray, face_width: float, centre: tuple[float, float],
           cover: np.ndarray | None = None) -> Box:
    """Blend ``photo`` (a CelebA crop) into ``canvas`` so its face is ``face_width`` px wide and centred at
    ``centre`` (anywhere, even partly outside); returns the face's box in canvas pixels (unclipped). The
    blend's opacity is written into ``cover`` (canvas-sized) when given: what this paste hides."""
    scale = face_width / (CELEBA_FACE[2] - CELEBA_FACE[0])
    width, height = max(2, round(CELEBA_SIZE[0] * scale)), max(2, round(CELEBA_SIZE[1] * scale))
    small = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    face_cx, face_cy = (CELEBA_FACE[0] + CELEBA_FACE[2]) / 2 * scale, (CELEBA_FACE[1] + CELEBA_FACE[3]) / 2 * scale
    left, top = round(centre[0] - face_cx), round(centre[1] - face_cy)
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (width // 2, round(height * 0.55)), (round(width * 0.46), round(height * 0.47)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, width / 25))[..., None]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, canvas.shape[0]), min(left + width, canvas.shape[1])
    if y1 > y0 and x1 > x0:
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        part, alpha = small[y0 - top:y1 - top, x0 - left:x1 - left], mask[y0 - top:y1 - top, x0 - left:x1 - left]
        canvas[y0:y1, x0:x1] = np.round(region * (1 - alpha) + part * alpha).astype(np.uint8)
        if cover is not None:
            cover[y0:y1, x0:x1] = np.maximum(cover[y0:y1, x0:x1], alpha[..., 0])
    return (left + CELEBA_FACE[0] * scale, top + CELEBA_FACE[1] * scale, left + CELEBA_FACE[2] * scale, top + CELEBA_FACE[3] * scale)


def visible(box: Box, height: int, width: int, share: float = 0.5) -> Box | None:
    """``box`` clipped to the frame, or None when less than ``share`` of it is inside."""
    x0, y0, x1, y1 = box
    inside = (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))
    area = (x1 - x0) * (y1 - y0)
    kept = max(0.0, inside[2] - inside[0]) * max(0.0, inside[3] - inside[1])
    return inside if area > 0 and kept >= share * area else None


def _background(shared: Path, width: int, height: int) -> np.ndarray:
    return cv2.resize(decode_image(shared / "data" / "groups" / "dogs.jpg").rgb, (width, height), interpolation=cv2.INTER_AREA)


def small_faces(shared: Path) -> tuple[np.ndarray, list[Box]]:
    canvas, faces, boxes = _background(shared, 1280, 960), celeba_photos(shared), []
    rng = np.random.default_rng(1)
    for index in range(24):
        row, column = divmod(index, 6)
        centre = (110 + column * 210 + rng.uniform(-30, 30), 120 + row * 230 + rng.uniform(-30, 30))
        boxes.append(paste_face(canvas, faces[index], 20 + 20 * (index % 6) / 5, centre))
    return canvas, boxes


def hidden_share(cover: np.ndarray, box: Box) -> float:
    """The share of ``box`` that an opacity map hides (opacity above one half)."""
    x0, y0, x1, y1 = (int(round(value)) for value in box)
    region = cover[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    return float((region > 0.5).mean()) if region.size else 0.0


def overlapping_faces(shared: Path) -> tuple[np.ndarray, list[Box]]:
    """Pairs where the second face, pasted with its hair and surroundings, hides a third to a half of the
    first face's box, measured on the blend's own opacity (so a label is a face a person can see)."""
    canvas, faces, boxes = _background(shared, 1280, 960), celeba_photos(shared), []
    for index in range(8):
        row, column = divmod(index, 4)
        width = 60 + 15 * (index % 4)
        x, y = 150 + column * 300, 220 + row * 450
        back = paste_face(canvas, faces[30 + 2 * index], width, (x, y))
        target = (1 / 3, 5 / 12, 1 / 2)[index % 3]
        shifts = np.arange(0.5, 2.5, 0.02) * width
        for shift in shifts:  # the nearest placement that hides no more than the target share
            cover = np.zeros(canvas.shape[:2], np.float32)
            paste_face(canvas.copy(), faces[31 + 2 * index], width * 1.15, (x + shift, y + width * 0.25), cover)
            if hidden_share(cover, back) <= target:
                break
        boxes.append(back)
        boxes.append(paste_face(canvas, faces[31 + 2 * index], width * 1.15, (x + shift, y + width * 0.25)))
    return canvas, boxes


def edge_faces(shared: Path, inward: float = 0.08, share: float = 0.5) -> tuple[np.ndarray, list[Box]]:
    """CelebA faces on each edge of a frame, centred ``inward`` face widths inside it; labelled where at least
    ``share`` of the face is in the frame (with ``inward`` 0.08, 55 to 60 % of each face is)."""
    canvas, faces, boxes = _background(shared, 1000, 750), celeba_photos(shared), []
    height, width = canvas.shape[:2]
    for index, (x, y) in enumerate([(0, 200), (0, 520), (width, 300), (width, 600), (300, 0), (700, 0), (250, height), (650, height)]):
        face_width = 70 + 10 * (index % 3)
        step = inward * face_width
        centre = (x + step if x == 0 else x - step if x == width else x, y + step if y == 0 else y - step if y == height else y)
        clipped = visible(paste_face(canvas, faces[50 + index], face_width, centre), height, width, share)
        if clipped is not None:
            boxes.append(clipped)
    return canvas, boxes


def cut_faces(shared: Path) -> list[tuple[np.ndarray, list[Box]]]:
    """CelebA faces just inside each edge of a frame, and VOC photos cropped through their faces."""
    canvas, boxes = edge_faces(shared)
    scenes = [(canvas, boxes)]
    groups = shared / "data" / "groups"
    labelled = read_imglab_boxes(groups / "training.xml") | read_imglab_boxes(groups / "testing.xml")
    for name, faces_in_photo in sorted(labelled.items()):
        photo = decode_image(groups / name).rgb
        leftmost = min(faces_in_photo, key=lambda box: box[0])
        cut = int(round((leftmost[0] + leftmost[2]) / 2))  # the frame's left edge through the middle of the leftmost face
        cropped = photo[:, cut:]
        kept = [visible((x0 - cut, y0, x1 - cut, y1), *cropped.shape[:2]) for x0, y0, x1, y1 in faces_in_photo]
        scenes.append((np.ascontiguousarray(cropped), [box for box in kept if box is not None]))
    return scenes


def scenes(shared: Path) -> dict[str, list[tuple[np.ndarray, list[Box]]]]:
    return {"small": [small_faces(shared)], "overlapping": [overlapping_faces(shared)], "cut": cut_faces(shared)}


def recall_rows(shared: Path, weights_dir: Path | None, detectors: list[str], recall_first: bool = False) -> list[dict[str, object]]:
    """Per detector: faces found / labelled and false positives on each kind of scene, and in all."""
    import time

    from anonymize.faces.detect import DetectorSettings, create_detector
    from anonymize.metrics.detection import DetectionScore
    from anonymize.weights import WeightsStore

    built = scenes(shared)
    weights = WeightsStore(weights_dir)
    rows = []
    for name in detectors:
        base, _, augment = name.partition("@")  # "retinaface+mtcnn@pad+flip": an ensemble, padded and mirrored
        members = tuple(base.split("+"))
        if base == "auto":  # the run's default chain as it resolves here
            from anonymize.faces.choose import choose_detector

            choice = choose_detector("auto", weights, allow_download=False)
            detector = create_detector(choice.name, weights, DetectorSettings(recall_first=recall_first, augment=choice.augment))
        else:
            detector = (create_detector("ensemble", weights, DetectorSettings(recall_first=recall_first), members=members)
                        if len(members) > 1 else create_detector(base, weights, DetectorSettings(recall_first=recall_first)))
        if augment:
            from anonymize.faces.augment import AugmentedDetector

            detector = AugmentedDetector(detector, pad="pad" in augment, flips="flip" in augment)
        row: dict[str, object] = {"detector": name, "thresholds": "recall-first" if recall_first else "default"}
        total = DetectionScore()
        started = time.perf_counter()
        for kind, items in built.items():
            score = DetectionScore()
            for rgb, boxes in items:
                found = [face.box for face in detector.detect(rgb)]
                score.add(found, boxes)
                total.add(found, boxes)
            row[kind] = f"{score.found}/{score.labelled}"
            row[f"{kind}_fp"] = score.false_positives
        row["all"] = f"{total.found}/{total.labelled} ({total.recall:.1%})"
        row["all_fp"] = total.false_positives
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return rows


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--detectors", nargs="*", default=["auto", "retinaface", "mtcnn", "dlib-hog", "blazeface", "mediapipe-full",
                                                           "retinaface+mtcnn"],
                        help="names, '+' for an ensemble, '@pad+flip' to search the padded frame and the mirror; auto: the run's default")
    parser.add_argument("--recall-first", action="store_true")
    args = parser.parse_args()
    for row in recall_rows(args.shared, args.weights_dir, args.detectors, args.recall_first):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
