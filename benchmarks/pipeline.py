"""Throughput of detect + blur over ../shared/data, and detection quality on the labelled group photos.

Each configuration runs in a fresh subprocess so that its peak memory (max RSS) is its own:
every detector serially (``--workers 1``), RetinaFace with the local pool (``--workers 2``) and
on a local Ray; each row carries the seconds per image in the prepare, anonymize and finish
stages and the share of wall time the method's device was busy. ``--pools`` times the prepare
stage alone on a pool of threads and a pool of processes (why the local executor uses threads).
``python -m benchmarks.pipeline --shared ../shared [--detectors dlib-hog retinaface] [--pools]``

``python -m benchmarks.pipeline --shared ../shared --detection-table`` prints README's recall and
false-positive table: every detector at its default and its recall-first thresholds on the 43
labelled faces, the two large photos (labelled by eye in tests/test_detection.py), dogs.jpg and
the 4000 px frame holding seven 37 px faces.

``python -m benchmarks.pipeline --shared ../shared --weights-dir .bench/weights --versus-deface 3``
is issue 12's comparison on a shared machine: anonymize (RetinaFace + blur + write, serial and
``--workers 2``) and deface over the same images, alternated run by run, each run in its own
process with the load average noted before it; it ends with the median images/s of each and
their ratios (of the medians, and of each anonymize run to the deface run of its round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.io.decode import decode_image
from anonymize.metrics.detection import DetectionScore, read_imglab_boxes
from anonymize.run import run, run_config
from anonymize.weights import WeightsStore


def detection_quality(detector_name: str, groups: Path, weights: WeightsStore) -> dict[str, float]:
    """Recall and false positives (IoU >= 0.3) on the 43 labelled faces, plus detections on dogs.jpg."""
    labelled = {**read_imglab_boxes(groups / "training.xml"), **read_imglab_boxes(groups / "testing.xml")}
    detector = create_detector(detector_name, weights, DetectorSettings())
    score = DetectionScore()
    for name, boxes in sorted(labelled.items()):
        score.add([face.box for face in detector.detect(decode_image(groups / name).rgb)], boxes)
    dogs = len(detector.detect(decode_image(groups / "dogs.jpg").rgb))
    return {"recall": round(score.recall, 3), "found": score.found, "labelled": score.labelled,
            "false_positives": score.false_positives, "detections_on_dogs": dogs}


def _score(detector, rgb, labelled, ignored=()) -> DetectionScore:
    from anonymize.metrics.detection import iou

    boxes = [face.box for face in detector.detect(rgb)]
    score = DetectionScore()
    score.add([box for box in boxes if not any(iou(box, other) >= 0.3 for other in ignored)], labelled)
    return score


def small_faces_in_a_large_frame(groups: Path) -> tuple[np.ndarray, list]:
    """2008_004176.jpg (seven faces of about 37 px) placed in a grey 4000 x 3000 frame."""
    photo = decode_image(groups / "2008_004176.jpg").rgb
    canvas = np.full((3000, 4000, 3), 128, np.uint8)
    top, left = 1700, 2900
    canvas[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    boxes = read_imglab_boxes(groups / "training.xml") | read_imglab_boxes(groups / "testing.xml")
    return canvas, [(x0 + left, y0 + top, x1 + left, y1 + top) for x0, y0, x1, y1 in boxes["2008_004176.jpg"]]


def detection_table_row(detector_name: str, recall_first: bool, groups: Path, weights: WeightsStore) -> dict[str, object]:
    from anonymize.faces.choose import choose_detector
    from tests.test_detection import LARGE_PHOTOS

    # auto: the run's default chain as it resolves here (an ensemble searching the padded frame and the mirror)
    choice = choose_detector(detector_name, weights, allow_download=False)
    detector = create_detector(choice.name, weights, DetectorSettings(recall_first=recall_first, augment=choice.augment or recall_first))
    started = time.perf_counter()
    labelled = {**read_imglab_boxes(groups / "training.xml"), **read_imglab_boxes(groups / "testing.xml")}
    voc = DetectionScore()
    for name, boxes in sorted(labelled.items()):
        voc.add([face.box for face in detector.detect(decode_image(groups / name).rgb)], boxes)
    row: dict[str, object] = {"detector": detector_name if choice.augment else detector.name, "thresholds": "recall-first" if recall_first else "default",
                              "groups": f"{voc.found}/{voc.labelled}", "groups_fp": voc.false_positives}
    for name, (faces, ignored) in LARGE_PHOTOS.items():
        score = _score(detector, decode_image(groups / name).rgb, faces, ignored)
        row[name] = f"{score.found}/{score.labelled}"
        row[f"{name}_fp"] = score.false_positives
    row["dogs.jpg"] = len(detector.detect(decode_image(groups / "dogs.jpg").rgb))
    canvas, small = small_faces_in_a_large_frame(groups)
    score = _score(detector, canvas, small)
    row["4000px"] = f"{score.found}/{score.labelled}"
    row["4000px_fp"] = score.false_positives
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def throughput(detector_name: str, data: Path, weights_dir: Path | None, workers: int = 1,
               executor: str = "local") -> dict[str, object]:
    _import_detector_modules(detector_name)
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = run(run_config(data, Path(tmp) / "out", method="blur", detector=detector_name, weights_dir=weights_dir,
                                device="cpu", workers=workers, executor=executor))  # type: ignore[arg-type]
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"images": summary.images, "faces": summary.faces, "seconds": round(seconds, 2),
            "images_per_s": round(summary.images / seconds, 2), "faces_per_s": round(summary.faces / seconds, 2),
            "cpu_s_per_image": round(cpu_seconds / summary.images, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **summary.stages}


def _import_detector_modules(detector_name: str) -> None:
    """Import the detector's libraries before the clock starts, as deface's timing starts after its imports
    (facexlib alone takes about 2 s to import; building the detector and the run's set-up stay timed)."""
    if detector_name in ("retinaface", "ensemble", "auto"):
        import facexlib.detection.retinaface  # noqa: F401


def bench_one(detector_name: str, shared: Path, weights_dir: Path | None, workers: int = 1,
              executor: str = "local") -> dict[str, object]:
    weights = WeightsStore(weights_dir)
    label = "ray (local, 2 CPUs)" if executor == "ray" else f"--workers {workers}"
    if executor == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    return {"tool": "anonymize", "detector": detector_name, "executor": label,
            **throughput(detector_name, shared / "data", weights_dir, workers, executor),
            **detection_quality(detector_name, shared / "data" / "groups", weights)}


def _prepare_all(stages: object, files: list[object]) -> int:
    return sum(len(stages.prepare(file).faces) for file in files)  # type: ignore[attr-defined]


def pool_rows(data: Path, weights_dir: Path | None, workers: int = 2) -> list[dict[str, object]]:
    """The prepare stage (hash, decode, detect, align) over every image: serial, threads, processes."""
    from anonymize.io.walk import ImageFile, walk_tree
    from anonymize.run.config import Detection
    from anonymize.run.prepare import Preparer, ResumePolicy

    stages = Preparer(Detection("retinaface"), ResumePolicy(False, data), 256, 178_956_970, weights_dir, "cpu")
    files = [ImageFile(entry.path, entry.relpath) for entry in walk_tree(data) if entry.kind == "image"]
    chunks = [files[index::workers] for index in range(workers)]
    rows = []
    for kind in ("serial", "threads", "processes"):
        started = time.perf_counter()
        if kind == "serial":
            faces = _prepare_all(stages, files)
        else:
            # processes are spawned (a forked child of a process running torch's thread pool can hang);
            # each builds its own detector, which is part of the time measured
            pool = ThreadPoolExecutor(workers) if kind == "threads" else ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            with pool:
                faces = sum(pool.map(_prepare_all, [stages] * workers, chunks))
        seconds = time.perf_counter() - started
        rows.append({"prepare stage": kind, "workers": 1 if kind == "serial" else workers, "images": len(files),
                     "faces": faces, "seconds": round(seconds, 2), "images_per_s": round(len(files) / seconds, 2)})
    return rows


DEFACE_SNIPPET = r"""
import json, sys, time, resource, xml.etree.ElementTree as ET
from pathlib import Path
import imageio.v2 as iio
from deface.centerface import CenterFace
from deface.deface import anonymize_frame
data, groups = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p for p in data.rglob('*') if p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
cf = CenterFace(in_shape=None, backend='auto')
started, cpu_started = time.perf_counter(), time.process_time(); faces = 0
for path in files:
    frame = iio.imread(path)[..., :3].copy()
    dets, _ = cf(frame, threshold=0.2)
    faces += len(dets)
    anonymize_frame(dets, frame, mask_scale=1.3, replacewith='blur', ellipse=True, draw_scores=False, replaceimg=None, mosaicsize=20)
    iio.imwrite(Path(sys.argv[3]) / (path.stem + '.png'), frame)
seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
if len(sys.argv) > 4 and sys.argv[4] == 'speed-only':
    print(json.dumps({'tool': 'deface (CenterFace)', 'images': len(files), 'faces': faces, 'seconds': round(seconds, 2),
        'images_per_s': round(len(files) / seconds, 2), 'cpu_s_per_image': round(cpu_seconds / len(files), 4)}))
    raise SystemExit
boxes = {}
for xml in ('training.xml', 'testing.xml'):
    for image in ET.parse(groups / xml).getroot().iter('image'):
        boxes[image.get('file')] = [(float(b.get('left')), float(b.get('top')), float(b.get('left')) + float(b.get('width')), float(b.get('top')) + float(b.get('height'))) for b in image.iter('box')]
found = labelled = fp = 0
for name, gt in boxes.items():
    dets, _ = cf(iio.imread(groups / name)[..., :3].copy(), threshold=0.2)
    pred = [tuple(d[:4]) for d in dets]
    def iou(a, b):
        w = max(0, min(a[2], b[2]) - max(a[0], b[0])); h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        u = (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - w*h
        return w*h/u if u > 0 else 0
    pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gt)), reverse=True)
    up, ug = set(), set()
    for o, i, j in pairs:
        if o < 0.3: break
        if i in up or j in ug: continue
        up.add(i); ug.add(j)
    found += len(ug); labelled += len(gt); fp += len(pred) - len(up)
dogs = len(cf(iio.imread(groups / 'dogs.jpg')[..., :3].copy(), threshold=0.2)[0])
print(json.dumps({'tool': 'deface (CenterFace)', 'detector': 'centerface', 'images': len(files), 'faces': faces,
    'seconds': round(seconds, 2), 'images_per_s': round(len(files) / seconds, 2), 'faces_per_s': round(faces / seconds, 2),
    'cpu_s_per_image': round(cpu_seconds / len(files), 4),
    'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    'recall': round(found / labelled, 3), 'found': found, 'labelled': labelled, 'false_positives': fp, 'detections_on_dogs': dogs}))
"""


def bench_deface(python: Path, shared: Path, speed_only: bool = False) -> dict[str, object] | None:
    """deface (pip `deface`, CenterFace) over the same photos, blurring and writing each: same work, other tool.

    ``speed_only``: skip its recall on the labelled photos (the versus-deface rounds measure it once)."""
    if not python.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(python), "-c", DEFACE_SNIPPET, str(shared / "data"), str(shared / "data" / "groups"), tmp]
        done = subprocess.run(command + (["speed-only"] if speed_only else []), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"tool": "deface", "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def pool_rows_in_subprocess(shared: Path, weights_dir: Path | None) -> list[dict[str, object]]:
    command = [sys.executable, "-m", "benchmarks.pipeline", "--shared", str(shared), "--pools"]
    if weights_dir:
        command += ["--weights-dir", str(weights_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return [{"prepare stage": "error", "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}]
    return [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--detector", help="run one detector in this process and print its JSON")
    parser.add_argument("--workers", type=int, default=1, help="with --detector: the local executor's workers")
    parser.add_argument("--executor", default="local", choices=["local", "ray"], help="with --detector")
    parser.add_argument("--pools", action="store_true", help="time the prepare stage on threads vs processes")
    parser.add_argument("--detectors", nargs="*", default=["dlib-hog", "mtcnn", "retinaface"])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--deface-python", type=Path, default=Path(".bench/deface-venv/bin/python"))
    parser.add_argument("--detection-table", action="store_true", help="print the recall / false-positive table (README)")
    parser.add_argument("--table-detectors", nargs="*", default=["retinaface", "mtcnn", "dlib-hog", "ensemble"])
    parser.add_argument("--versus-deface", type=int, metavar="ROUNDS", default=0,
                        help="alternate anonymize (RetinaFace, --workers 1 and 2) and deface runs, ROUNDS times, then the ratios")
    parser.add_argument("--throughput-only", action="store_true", help="with --detector: the timed run alone, no quality check")
    args = parser.parse_args()
    if args.versus_deface:
        for row in versus_deface(args.shared, args.weights_dir, args.deface_python, args.versus_deface):
            print(json.dumps(row), flush=True)
        return
    if args.detection_table:
        weights = WeightsStore(args.weights_dir)
        for name in args.table_detectors:
            for recall_first in (False, True):
                print(json.dumps(detection_table_row(name, recall_first, args.shared / "data" / "groups", weights)), flush=True)
        return
    if args.detector and args.throughput_only:
        row = throughput(args.detector, args.shared / "data", args.weights_dir, args.workers, args.executor)
        print(json.dumps({"tool": "anonymize", "detector": args.detector, "executor": f"--workers {args.workers}", **row}))
        return
    if args.detector:
        print(json.dumps(bench_one(args.detector, args.shared, args.weights_dir, args.workers, args.executor)))
        return
    if args.pools:
        for row in pool_rows(args.shared / "data", args.weights_dir):
            print(json.dumps(row))
        return
    for row in pipeline_rows(args.shared, args.detectors, args.weights_dir, args.deface_python):
        print(json.dumps(row))


# (detector, workers, executor): every detector serially, then RetinaFace on the pool and on Ray.
def configurations(detectors: list[str]) -> list[tuple[str, int, str]]:
    return [(name, 1, "local") for name in detectors] + [("retinaface", 2, "local"), ("retinaface", 2, "ray")]


def pipeline_rows(shared: Path, detectors: list[str], weights_dir: Path | None, deface_python: Path) -> list[dict[str, object]]:
    rows = []
    for name, workers, executor in configurations(detectors):
        command = [sys.executable, "-m", "benchmarks.pipeline", "--shared", str(shared), "--detector", name,
                   "--workers", str(workers), "--executor", executor]
        if weights_dir:
            command += ["--weights-dir", str(weights_dir)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"tool": "anonymize", "detector": name, "executor": executor,
                         "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    deface = bench_deface(deface_python, shared)
    if deface:
        rows.append(deface)
    return rows


def _anonymize_run(shared: Path, weights_dir: Path | None, workers: int) -> dict[str, object]:
    command = [sys.executable, "-m", "benchmarks.pipeline", "--shared", str(shared), "--detector", "retinaface",
               "--workers", str(workers), "--throughput-only"] + (["--weights-dir", str(weights_dir)] if weights_dir else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"anonymize --workers {workers} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def versus_deface(shared: Path, weights_dir: Path | None, deface_python: Path, rounds: int,
                  workers: tuple[int, ...] = (1, 2)) -> list[dict[str, object]]:
    """Each round: anonymize serial, deface, anonymize with 2 workers (so every anonymize run has a deface run
    beside it), then one summary row per worker count: medians and ratios to deface, with the load seen."""
    if not deface_python.exists():
        raise SystemExit(f"{deface_python}: deface is not installed (make bench installs it)")
    rows: list[dict[str, object]] = []
    for round_index in range(rounds):
        order = [("anonymize", workers[0]), ("deface", 0), *[("anonymize", count) for count in workers[1:]]]
        for tool, count in order:
            load = os.getloadavg()[0]
            if tool == "anonymize":
                row = _anonymize_run(shared, weights_dir, count)
            else:
                row = bench_deface(deface_python, shared, speed_only=True)
            rows.append({"round": round_index + 1, "load_1min_before": round(load, 2), **(row or {})})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    deface_rows = [row for row in rows if str(row.get("tool", "")).startswith("deface")]
    deface_by_round = {row["round"]: row["images_per_s"] for row in deface_rows}
    summary = []
    for count in workers:
        ours = [row for row in rows if row.get("executor") == f"--workers {count}"]
        pairs = [float(row["images_per_s"]) / float(deface_by_round[row["round"]]) for row in ours]  # type: ignore[arg-type]
        median_ours = statistics.median(float(row["images_per_s"]) for row in ours)  # type: ignore[arg-type]
        median_deface = statistics.median(float(value) for value in deface_by_round.values())  # type: ignore[arg-type]
        summary.append({"summary": f"anonymize --workers {count} vs deface", "rounds": rounds,
                        "anonymize_images_per_s": [row["images_per_s"] for row in ours],
                        "deface_images_per_s": list(deface_by_round.values()),
                        "ratio_of_medians": round(median_ours / median_deface, 2),
                        "ratio_per_round": [round(value, 2) for value in pairs],
                        "anonymize_cpu_s_per_image": [row.get("cpu_s_per_image") for row in ours],
                        "deface_cpu_s_per_image": [row.get("cpu_s_per_image") for row in deface_rows],
                        "load_1min_before_each": [row["load_1min_before"] for row in ours]})
    return rows + summary


if __name__ == "__main__":
    main()
