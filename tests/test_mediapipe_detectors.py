"""MediaPipe's BlazeFace and full-range detectors (TF.js graphs read by the project) as run detectors: the
anchors and decoding, and their recall on the labelled photos, a 4000 px frame and the crowded scenes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.faces.mediapipe import BLAZEFACE, FULL_RANGE, decode, five_points, ssd_anchors, windows
from anonymize.io.decode import decode_image
from anonymize.metrics.detection import DetectionScore
from tests.helpers import TinyWeights
from tests.test_detection import labelled_faces


def test_anchors_follow_mediapipe_s_grids():
    blaze, full = ssd_anchors(BLAZEFACE), ssd_anchors(FULL_RANGE)
    assert blaze.shape == (896, 2) and full.shape == (2304, 2)
    assert blaze[0].tolist() == blaze[1].tolist() == [8.0, 8.0]  # 16 x 16 grid, two anchors a cell, centres at (i + 0.5) * 16
    assert blaze[512].tolist() == [16.0, 16.0] and blaze[895].tolist() == [240.0, 240.0]  # then 8 x 8, six a cell
    assert full[0].tolist() == [2.0, 2.0] and full[48].tolist() == [2.0, 6.0]  # 48 x 48, row-major


def test_decoding_adds_the_anchor_to_the_offsets_and_reads_the_logit_as_a_sigmoid():
    raw = np.zeros((1, 17))
    raw[0, :5] = [0.0, 4.0, -2.0, 20.0, 30.0]  # logit 0, centre offset (4, -2), size 20 x 30
    raw[0, 5:7] = [-5.0, -6.0]  # first keypoint, relative to the anchor
    row = decode(raw, np.array([[100.0, 50.0]]))[0]
    assert row[:5].tolist() == [94.0, 33.0, 114.0, 63.0, 0.5]
    assert row[5:7].tolist() == [95.0, 44.0]
    points = five_points(np.array([[10, 10], [30, 10], [20, 20], [20, 30], [0, 15], [40, 15]], float))
    assert points.tolist() == [[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]  # mouth corners 0.4 eye distances aside


def test_windows_cover_the_square_down_to_twice_the_input():
    assert windows(150, 200, 192) == [(0, 0, 200)]
    found = windows(3000, 4000, 192)
    assert found[0] == (0, 0, 4000) and min(side for _, _, side in found) >= 384
    assert all(x < 4000 and y < 3000 for x, y, _ in found)  # no window lies in the padding only


@pytest.fixture(scope="module")
def mediapipe_store(tiny_weights: TinyWeights, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    source = shared_dir / "weights" / "human-models"
    if not (source / "blazeface-back.json").is_file():
        pytest.skip(f"{source} is absent: MediaPipe's detectors live there (see ../shared/README.md)")
    store = tiny_weights.store(tmp_path_factory.mktemp("mediapipe-weights"))
    from anonymize.weights import read_lock
    from anonymize.weights.human import artefact_names
    from tests.helpers import REPO_LOCK

    real = read_lock(REPO_LOCK)
    lock = dict(store.lock)
    for model in ("blazeface-back", "facemesh-detection-full"):
        for name in artefact_names(model):
            lock[name] = real[name]
            target = store.root / real[name].filename
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / Path(real[name].filename).name, target)
    from anonymize.weights import WeightsStore

    return WeightsStore(store.root, lock=lock)


@pytest.mark.parametrize("name, min_found, max_false_positives", [("blazeface", 42, 0), ("mediapipe-full", 42, 1)])
def test_each_finds_the_labelled_faces_with_few_false_positives(name, min_found, max_false_positives, mediapipe_store, shared_dir):
    groups = shared_dir / "data" / "groups"
    detector = create_detector(name, mediapipe_store, DetectorSettings())
    score = DetectionScore()
    for photo, boxes in sorted(labelled_faces(groups).items()):
        faces = detector.detect(decode_image(groups / photo).rgb)
        assert all(face.landmarks.shape == (5, 2) for face in faces)
        score.add([face.box for face in faces], boxes)
    assert score.labelled == 43 and score.found >= min_found and score.false_positives <= max_false_positives


def test_the_full_range_detector_finds_37_px_faces_in_a_4000_px_frame_and_no_face_on_dogs(mediapipe_store, shared_dir):
    from benchmarks.pipeline import small_faces_in_a_large_frame

    groups = shared_dir / "data" / "groups"
    detector = create_detector("mediapipe-full", mediapipe_store, DetectorSettings())
    canvas, labelled = small_faces_in_a_large_frame(groups)
    score = DetectionScore()
    score.add([face.box for face in detector.detect(canvas)], labelled)
    assert score.found == len(labelled) and score.false_positives <= 1
    assert detector.detect(decode_image(groups / "dogs.jpg").rgb) == []
