"""No face left in a crowd (issue 28): the crowded scenes with known faces, and an audit that fails a release
leaving sharp a face only one of its detectors finds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anonymize.audit import AuditConfig, run_audit
from anonymize.audit.mesh_check import MeshCheck, mesh_crop
from benchmarks.crowd import CELEBA_FACE, celeba_photos, paste_face, cut_faces, edge_faces, hidden_share, overlapping_faces, small_faces, visible


def test_a_face_is_labelled_when_half_of_it_is_in_the_frame_with_its_box_clipped():
    assert visible((-10, 0, 30, 40), 100, 100) == (0, 0, 30, 40)
    assert visible((-30, 0, 10, 40), 100, 100) is None  # a quarter inside
    assert visible((90, 90, 110, 110), 100, 100, share=0.25) == (90, 90, 100, 100)


def test_the_crowded_scenes_hold_small_overlapping_and_cut_faces(shared_dir):
    small, small_boxes = small_faces(shared_dir)
    widths = [box[2] - box[0] for box in small_boxes]
    assert len(small_boxes) == 24 and 19.9 <= min(widths) and max(widths) <= 40.1
    behind, pairs = overlapping_faces(shared_dir)
    assert len(pairs) == 16
    cover = np.zeros(behind.shape[:2], np.float32)  # each front face, pasted again, hides a third to a half of the one behind
    for index in range(0, 16, 2):
        cover[:] = 0
        front = pairs[index + 1]
        width = (front[2] - front[0]) / 1.15
        centre = ((front[0] + front[2]) / 2, (front[1] + front[3]) / 2)
        paste_face(behind.copy(), celeba_photos(shared_dir)[31 + index], width * 1.15, centre, cover)
        assert 0.3 <= hidden_share(cover, pairs[index]) <= 0.51
    scenes = cut_faces(shared_dir)
    edge, edge_boxes = scenes[0]
    assert len(edge_boxes) >= 6 and all(box[0] == 0 or box[1] == 0 or box[2] == edge.shape[1] or box[3] == edge.shape[0]
                                        for box in edge_boxes)
    assert sum(len(boxes) for _, boxes in scenes[1:]) >= 40  # the labelled VOC faces the cuts keep at least half of
    assert CELEBA_FACE[2] - CELEBA_FACE[0] > 80


def test_the_face_mesh_fits_real_faces_cut_small_or_covered_but_not_dogs(human_weights, shared_dir):
    mesh = MeshCheck(human_weights.store(), "cpu")
    for scene, boxes in (small_faces(shared_dir), overlapping_faces(shared_dir)):
        assert min(mesh.scores(scene, boxes)) > 0.9
    dogs = cv2.cvtColor(cv2.imread(str(shared_dir / "data" / "groups" / "dogs.jpg")), cv2.COLOR_BGR2RGB)
    # fur and background; a dog's face can score high (0.95 to 0.998): the mesh only ever rules a region out
    assert max(mesh.scores(dogs, [(100, 100, 300, 300), (500, 500, 700, 700), (400, 50, 600, 250)])) < 0.5
    assert mesh_crop(dogs, (0, 0, 10, 10)).shape == (192, 192, 3)


def faint_face(shared_dir: Path, name: str, index: int, darken: float, sigma: float) -> tuple[np.ndarray, list, tuple]:
    """A VOC photo with its ``index``-th labelled face (sorted) blurred and darkened: faint enough for one detector."""
    from anonymize.io.decode import decode_image
    from anonymize.metrics.detection import read_imglab_boxes

    groups = shared_dir / "data" / "groups"
    boxes = sorted((read_imglab_boxes(groups / "training.xml") | read_imglab_boxes(groups / "testing.xml"))[name])
    scene = decode_image(groups / name).rgb.copy()
    x0, y0, x1, y1 = (int(value) for value in boxes[index])
    scene[y0:y1, x0:x1] = (cv2.GaussianBlur(scene[y0:y1, x0:x1], (0, 0), sigma) * darken).astype(np.uint8)
    return scene, boxes, boxes[index]


def test_a_face_left_unchanged_that_only_one_detector_finds_fails_the_audit(human_weights, shared_dir, tmp_path):
    """A face only one of the audit's detectors finds (RetinaFace, MTCNN and dlib's HOG at recall-first thresholds,
    padded and mirrored), and no other confirms on a close-up, is a possible face. One left unchanged used to pass
    with "possible faces: 1 left unchanged, not counted"; it fails unless the face mesh rules it out. Two faint faces
    (measured): one only RetinaFace finds (0.81, under its default 0.9), which the mesh fits (0.97); one only MTCNN
    finds, at 0.95, above its default 0.85, which the mesh scores 0.13 and would have ruled out, so the mesh is not
    asked (the run would have trusted it)."""
    from anonymize.audit.summary import Thresholds
    from anonymize.metrics.detection import iou

    originals, release = tmp_path / "originals", tmp_path / "release"
    for folder in (originals, release):
        folder.mkdir()
    faint = {"retinaface.png": faint_face(shared_dir, "2008_001322.jpg", 2, 0.9, 4.0),
             "mtcnn.png": faint_face(shared_dir, "2008_002470.jpg", 0, 0.8, 3.5)}
    for file_name, (scene, boxes, kept) in faint.items():
        cv2.imwrite(str(originals / file_name), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
        blurred = scene.copy()
        for box in boxes:  # every other labelled face blurred beyond recognition; the faint one left as it was
            if box != kept:
                x0, y0, x1, y1 = int(max(box[0] - 10, 0)), int(max(box[1] - 10, 0)), int(box[2] + 10), int(box[3] + 10)
                blurred[y0:y1, x0:x1] = cv2.GaussianBlur(blurred[y0:y1, x0:x1], (0, 0), 12)
        cv2.imwrite(str(release / file_name), cv2.cvtColor(blurred, cv2.COLOR_RGB2BGR))

    def audit(**limits):
        return run_audit(AuditConfig(originals, release, weights_dir=human_weights.weights_dir, device="cpu", write_files=False,
                                     fid=False, farl_proxy=False, lpips=False, attribute_source=None, heads=False,
                                     thresholds=Thresholds(max_reid_rate=1.0, max_missed_faces=100, **limits)))

    result = audit()
    left = {file_name: [row for row in result.rows if row["source_path"] == file_name and iou(tuple(row["box"]), kept) >= 0.3]
            for file_name, (_, _, kept) in faint.items()}
    (by_retinaface,), (by_mtcnn,) = left["retinaface.png"], left["mtcnn.png"]
    assert by_retinaface["face_status"] == by_mtcnn["face_status"] == "possible face"
    assert by_retinaface["missed"] and by_retinaface["mesh_score"] > 0.5
    assert by_mtcnn["missed"] and by_mtcnn["mesh_score"] is None  # trusted at MTCNN's own default threshold
    assert not result.passed
    assert any("2 possible face(s) left unchanged and not ruled out > max 0" in line for line in result.summary.crossed)
    tolerant = audit(max_possible_faces=2)
    assert not any("possible face" in line for line in tolerant.summary.crossed)


def test_the_default_chain_anonymizes_faces_cut_by_the_frame_and_half_hidden_behind_another(tiny_weights, shared_dir, tmp_path):
    """Faces pasted half outside each edge of the frame, and faces a third to a half hidden behind another: the default
    detector (auto: RetinaFace and MTCNN, the frame padded and the mirror searched) has a blur run change every one of
    them; RetinaFace alone, searching plainly, leaves some sharp (what the padding and the mirror are for)."""
    from anonymize.audit.missed import UNCHANGED_MEAN_ABS_DIFF, region_change
    from anonymize.io.decode import decode_image
    from anonymize.run import run, run_config

    if tiny_weights.store().status("retinaface_mobilenet0.25") != "present":
        pytest.skip("RetinaFace weights are not in ../shared")
    scenes = {"edges.png": cut_faces(shared_dir)[0], "behind.png": overlapping_faces(shared_dir)}
    originals = tmp_path / "originals"
    originals.mkdir()
    for name, (scene, _) in scenes.items():
        cv2.imwrite(str(originals / name), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))

    def unchanged_faces(out: Path, **flags) -> dict[str, list]:
        run(run_config(originals, out, method="blur", device="cpu", weights_dir=tiny_weights.weights_dir, **flags))
        return {name: [box for box in boxes if region_change(scene, decode_image(out / name).rgb, box) <= UNCHANGED_MEAN_ABS_DIFF]
                for name, (scene, boxes) in scenes.items()}

    assert unchanged_faces(tmp_path / "default") == {"edges.png": [], "behind.png": []}
    assert len(unchanged_faces(tmp_path / "plain", detector="retinaface")["edges.png"]) >= 1


# ---- heads from the pose model ---------------------------------------------------------------------------------


def test_a_head_box_is_built_from_the_head_keypoints_the_model_is_sure_of():
    from anonymize.faces.heads import head_box, head_landmarks

    keypoints = np.zeros((17, 3))
    keypoints[0] = (100, 100, 0.9)  # nose
    keypoints[1], keypoints[2] = (90, 90, 0.9), (110, 90, 0.9)  # eyes 20 px apart
    keypoints[3], keypoints[4] = (80, 95, 0.8), (120, 95, 0.8)  # ears 40 px apart
    # widest of 1.4 x 40 (ears), 3 x 20 (eyes), 2.5 x 10 (eye to nose), 1.6 x the widest head keypoint spread (40)
    side = max(1.4 * 40, 3 * 20, 2.5 * 10, 1.6 * 40)
    centre = keypoints[:5, :2].mean(axis=0)
    assert head_box(keypoints) == pytest.approx((centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2))
    landmarks = head_landmarks(keypoints, head_box(keypoints))
    assert landmarks[0].tolist() == [90, 90] and landmarks[1].tolist() == [110, 90] and landmarks[2].tolist() == [100, 100]
    assert landmarks[3, 1] == landmarks[4, 1] == pytest.approx(100 + 10 * 0.9)  # the mouth below the nose
    turned = keypoints.copy()
    turned[:3, 2] = 0.1  # only the ears: still a head (two keypoints), landmarks from the template
    assert head_box(turned) is not None and head_landmarks(turned, head_box(turned)).shape == (5, 2)
    alone = np.zeros((17, 3))
    alone[3] = (80, 95, 0.8)
    assert head_box(alone) is None  # one ear and no shoulders: not enough


@pytest.fixture
def pose_weights(tiny_weights, shared_dir, tmp_path):
    """A weights folder under the real lock with RetinaFace and MoveNet MultiPose."""
    from anonymize.weights import WeightsStore
    from anonymize.weights.human import artefact_names
    from tests.helpers import SHARED_RETINAFACE

    source = shared_dir / "weights" / "human-models"
    if not (source / "movenet-multipose.json").is_file() or not SHARED_RETINAFACE.is_file():
        pytest.skip(f"{source} or RetinaFace's weights are absent (see ../shared/README.md)")
    folder = tmp_path / "weights"
    store = WeightsStore(folder)
    for name in artefact_names("movenet-multipose"):
        target = store.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((source / target.name).read_bytes())
    target = store.path("retinaface_mobilenet0.25")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(SHARED_RETINAFACE.read_bytes())
    return folder


def test_a_person_whose_face_no_detector_finds_has_the_head_anonymized_with_recall_first(pose_weights, shared_dir, tmp_path):
    """2008_001322.jpg with one face blurred and darkened until no face detector finds it: the pose model still
    puts a head there, and --recall-first (heads on when MoveNet is here) masks it; --heads off leaves it."""
    from anonymize.audit.missed import UNCHANGED_MEAN_ABS_DIFF, region_change
    from anonymize.io.decode import decode_image
    from anonymize.metrics.detection import read_imglab_boxes
    from anonymize.run import run, run_config

    groups = shared_dir / "data" / "groups"
    box = sorted(read_imglab_boxes(groups / "testing.xml")["2008_001322.jpg"] if "2008_001322.jpg" in read_imglab_boxes(groups / "testing.xml")
                 else read_imglab_boxes(groups / "training.xml")["2008_001322.jpg"])[0]
    photo = decode_image(groups / "2008_001322.jpg").rgb.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    photo[y0:y1, x0:x1] = (cv2.GaussianBlur(photo[y0:y1, x0:x1], (0, 0), 15) * 0.3).astype(np.uint8)
    originals = tmp_path / "originals"
    originals.mkdir()
    cv2.imwrite(str(originals / "hidden.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))

    def head_region_change(out: Path, **flags) -> float:
        run(run_config(originals, out, method="mask", detector="retinaface", device="cpu", weights_dir=pose_weights, **flags))
        return region_change(photo, decode_image(out / "hidden.png").rgb, box)

    assert head_region_change(tmp_path / "recall-first", recall_first=True) > UNCHANGED_MEAN_ABS_DIFF
    assert head_region_change(tmp_path / "no-heads", recall_first=True, heads="off") <= UNCHANGED_MEAN_ABS_DIFF

    # the audit finds that head too, and a release that left it unchanged does not pass (the face mesh cannot rule a
    # head out: a head shows no face to fit when it is turned away)
    from anonymize.audit.summary import Thresholds

    def audit(release: Path, heads: bool = True):
        return run_audit(AuditConfig(originals, release, weights_dir=pose_weights, device="cpu", write_files=False, fid=False,
                                     farl_proxy=False, lpips=False, attribute_source=None, heads=heads,
                                     thresholds=Thresholds(max_reid_rate=1.0)))

    left = audit(tmp_path / "no-heads")
    heads = [row for row in left.rows if row["found_by"] and row["face_status"] == "possible face" and row["missed"]]
    assert heads and all(row["mesh_score"] is None for row in heads)
    assert not left.passed and any("possible face(s) left unchanged and not ruled out" in line for line in left.summary.crossed)
    assert audit(tmp_path / "recall-first").summary.possible_faces.counted == 0
