"""Descriptors per second: dlib's Python binding vs the PyTorch module read from the same file.

Two tables:

* the network alone on 150 x 150 chips, batch 1 and 64: dlib's ``compute_face_descriptor`` on a list
  of chips (CPU; dlib runs its own batches of 16) against :class:`DlibFaceResNet` (CPU, and CUDA when
  there is one), forward only;
* the identity metric as the audit and ``--identity-metric`` call it
  (:class:`anonymize.metrics.identity.DlibRecogniser`: 5-point landmarks and dlib's chips, then the
  network), one call per photo of ../shared/data/portraits and groups, with either backend.

dlib's binding runs on one core, so on CPU torch is held to one thread too (``--threads`` changes
that): the rows compare the implementations, not the thread counts. On a busy machine more torch
threads than free cores make torch slower, not faster.
``python -m benchmarks.dlib_recogniser [--device cpu|cuda] [--threads N]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dlib
import numpy as np
import torch

from anonymize.io.decode import decode_image
from anonymize.metrics.detection import read_imglab_boxes
from anonymize.metrics.identity import DlibRecogniser
from anonymize.models.legacy.dlib_resnet import load_dlib_face_resnet
from anonymize.weights import WeightsStore
from benchmarks.models import print_table, timed

BATCHES = (1, 64)
CPU_THREADS = 1


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chips(batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(batch)
    return [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(batch)]


def network_rows(device: str, weights: WeightsStore | None = None, repeats: int = 3) -> list[dict[str, object]]:
    """Descriptors per second of the network alone, per implementation and batch."""
    weights = weights or WeightsStore()
    path = weights.require("dlib_face_recognition_resnet")
    network = load_dlib_face_resnet(path).to(device)
    encoder = dlib.face_recognition_model_v1(str(path)) if device == "cpu" else None
    rows = []
    for batch in BATCHES:
        chips = _chips(batch)
        tensor = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().to(device)
        cases = {}
        if encoder is not None:
            cases["dlib binding"] = lambda: encoder.compute_face_descriptor(chips)
        cases["torch module"] = lambda: network(tensor)
        for name, step in cases.items():
            with torch.no_grad():
                seconds = timed(step, device, repeats)
            rows.append({"device": device, "threads": torch.get_num_threads() if device == "cpu" else "", "implementation": name, "batch": batch,
                         "seconds": round(seconds, 4), "descriptors_per_s": round(batch / seconds, 1)})
    return rows


def _photos(shared: Path) -> list[tuple[np.ndarray, list[tuple[float, float, float, float]]]]:
    """Photos of portraits and groups with their face boxes (labelled where labelled, else dlib's HOG)."""
    data = shared / "data"
    labelled = {**read_imglab_boxes(data / "groups" / "training.xml"), **read_imglab_boxes(data / "groups" / "testing.xml")}
    detector = dlib.get_frontal_face_detector()
    photos = []
    for path in sorted((data / "portraits").iterdir()) + sorted((data / "groups").glob("*.jpg")):
        rgb = np.ascontiguousarray(decode_image(path).rgb)
        boxes = labelled.get(path.name) or [(r.left(), r.top(), r.right() + 1.0, r.bottom() + 1.0)
                                            for r in detector(rgb, 1 if max(rgb.shape[:2]) < 1000 else 0)]
        if boxes:
            photos.append((rgb, boxes))
    return photos


def metric_rows(shared: Path, device: str, weights: WeightsStore | None = None, passes: int = 2) -> list[dict[str, object]]:
    """The identity metric over the photos of ../shared, per backend: faces per second (best pass) and speed-up."""
    if not (shared / "data").is_dir():
        return []
    weights = weights or WeightsStore()
    photos = _photos(shared)
    faces = sum(len(boxes) for _, boxes in photos)
    backends = [("dlib", "cpu"), ("torch", device)] if device == "cpu" else [("torch", device)]
    rows = []
    for backend, on in backends:
        recogniser = DlibRecogniser(weights, backend, on)
        recogniser.descriptors(*photos[0])  # warm-up
        seconds = float("inf")
        for _ in range(passes):
            started = time.perf_counter()
            for rgb, boxes in photos:
                recogniser.descriptors(rgb, boxes)
            seconds = min(seconds, time.perf_counter() - started)
        rows.append({"device": on, "threads": torch.get_num_threads() if on == "cpu" else "", "backend": backend, "photos": len(photos), "faces": faces,
                     "seconds": round(seconds, 3), "faces_per_s": round(faces / seconds, 1)})
    if len(rows) == 2:
        rows[1]["speed_up"] = round(rows[0]["seconds"] / rows[1]["seconds"], 1)  # type: ignore[operator]
    return rows


def run(device: str, shared: Path = Path("../shared"), threads: int = CPU_THREADS) -> list[dict[str, object]]:
    with torch_threads(threads):
        return network_rows(device) + metric_rows(shared, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--threads", type=int, default=CPU_THREADS, help=f"torch threads on CPU (default {CPU_THREADS}, as dlib)")
    args = parser.parse_args()
    with torch_threads(args.threads):
        print_table(f"dlib face ResNet, network alone ({args.device})", network_rows(args.device))
        print_table(f"identity metric over {args.shared / 'data'} ({args.device})", metric_rows(args.shared, args.device))


if __name__ == "__main__":
    main()
