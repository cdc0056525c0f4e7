"""No face left in a crowd (issue 28): the crowded scenes with known faces, and an audit that fails a release
leaving sharp a face only one of its detectors finds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anonymize.audit import AuditConfig, run_audit
from anonymize.audit.mesh_check import MeshCheck, mesh_crop
from benchmarks.crowd import CELEBA_FACE, cut_faces, overlapping_faces, small_faces, visible


def test_a_face_is_labelled_when_half_of_it_is_in_the_frame_with_its_box_clipped():
    assert visible((-10, 0, 30, 40), 100, 100) == (0, 0, 30, 40)
    assert visible((-30, 0, 10, 40), 100, 100) is None  # a quarter inside
    assert visible((90, 90, 110, 110), 100, 100, share=0.25) == (90, 90, 100, 100)


def test_the_crowded_scenes_hold_small_overlapping_and_cut_faces(shared_dir):
    small, small_boxes = small_faces(shared_dir)
    widths = [box[2] - box[0] for box in small_boxes]
    assert len(small_boxes) == 24 and 19.9 <= min(widths) and max(widths) <= 40.1
    _, pairs = overlapping_faces(shared_dir)
    assert len(pairs) == 16
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


def test_a_sharp_face_that_only_one_detector_finds_fails_the_audit(human_weights, shared_dir, tmp_path):
    """Faces cut by the frame: only RetinaFace among the audit's detectors finds them (possible faces). One left
    sharp used to pass with "possible faces: 1 left unchanged, not counted"; it must fail unless the face mesh
    rules it out, and the mesh fits a real half face."""
    scene, boxes = cut_faces(shared_dir)[0]
    originals, release = tmp_path / "originals", tmp_path / "release"
    originals.mkdir()
    release.mkdir()
    cv2.imwrite(str(originals / "edges.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    blurred = scene.copy()
    sharp = boxes[0]
    for x0, y0, x1, y1 in boxes[1:]:  # every other face blurred beyond recognition
        x0, y0, x1, y1 = int(max(x0 - 10, 0)), int(max(y0 - 10, 0)), int(x1 + 10), int(y1 + 10)
        blurred[y0:y1, x0:x1] = cv2.GaussianBlur(blurred[y0:y1, x0:x1], (0, 0), 12)
    cv2.imwrite(str(release / "edges.png"), cv2.cvtColor(blurred, cv2.COLOR_RGB2BGR))

    def audit(**limits):
        from anonymize.audit.summary import Thresholds

        return run_audit(AuditConfig(originals, release, weights_dir=human_weights.weights_dir, device="cpu", write_files=False,
                                     fid=False, farl_proxy=False, lpips=False, attribute_source=None,
                                     thresholds=Thresholds(max_reid_rate=1.0, max_missed_faces=100, **limits)))

    result = audit()
    rows = [row for row in result.rows if row["face_status"] == "possible face" and row["missed"]]
    assert any(abs(row["box"][1] - sharp[1]) < 20 and row["mesh_score"] > 0.5 for row in rows)
    assert not result.passed
    assert any("possible face(s) left unchanged and not ruled out > max 0" in line for line in result.summary.crossed)
    tolerant = audit(max_possible_faces=len(rows))
    assert not any("possible face" in line for line in tolerant.summary.crossed)
    assert np.array_equal(cv2.imread(str(originals / "edges.png")), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
