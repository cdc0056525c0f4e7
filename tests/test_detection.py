"""Real detectors on the hand-labelled PASCAL VOC group photos (43 faces) and a photo of dogs."""

from __future__ import annotations

import pytest

from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.io.decode import decode_image
from anonymize.metrics.detection import DetectionScore, iou, read_imglab_boxes

# Measured figures are in README (Detection); these floors catch regressions.
EXPECTED = {"dlib-hog": (0.95, 1), "retinaface": (0.97, 1), "dlib-cnn": (0.85, 1)}


def labelled_faces(groups, xml_names=("training.xml", "testing.xml")):
    boxes = {}
    for name in xml_names:
        boxes.update(read_imglab_boxes(groups / name))
    return boxes


@pytest.mark.parametrize("detector_name", ["dlib-hog", "retinaface", "dlib-cnn"])
def test_detectors_find_the_labelled_faces_with_few_false_positives(detector_name, shared_dir, tiny_weights):
    groups = shared_dir / "data" / "groups"
    # dlib-cnn is slow on two cores: it is checked on the test split only.
    labelled = labelled_faces(groups, ("testing.xml",) if detector_name == "dlib-cnn" else ("training.xml", "testing.xml"))
    detector = create_detector(detector_name, tiny_weights.store(), DetectorSettings())
    score = DetectionScore()
    for name, boxes in sorted(labelled.items()):
        faces = detector.detect(decode_image(groups / name).rgb)
        assert all(face.landmarks.shape in ((68, 2), (5, 2)) for face in faces)
        score.add([face.box for face in faces], boxes)
    min_recall, max_false_positives = EXPECTED[detector_name]
    assert score.recall >= min_recall, f"{detector_name}: {score.found}/{score.labelled} faces found"
    assert score.false_positives <= max_false_positives


def test_landmarks_lie_inside_their_face_box(shared_dir, tiny_weights):
    image = decode_image(shared_dir / "data" / "groups" / "2008_002506.jpg").rgb
    for name in ("dlib-hog", "retinaface"):
        for face in create_detector(name, tiny_weights.store(), DetectorSettings()).detect(image):
            x0, y0, x1, y1 = face.box
            pad = 0.25 * (x1 - x0)
            assert ((face.landmarks[:, 0] > x0 - pad) & (face.landmarks[:, 0] < x1 + pad)).all()
            assert ((face.landmarks[:, 1] > y0 - pad) & (face.landmarks[:, 1] < y1 + pad)).all()


def test_min_face_and_threshold_drop_small_and_weak_detections(shared_dir, tiny_weights):
    image = decode_image(shared_dir / "data" / "groups" / "2008_004176.jpg").rgb  # seven faces of about 37 px
    store = tiny_weights.store()
    assert len(create_detector("retinaface", store, DetectorSettings()).detect(image)) >= 6
    assert create_detector("retinaface", store, DetectorSettings(min_face=60)).detect(image) == []
    assert create_detector("retinaface", store, DetectorSettings(threshold=0.99999)).detect(image) == []


def test_an_unknown_detector_is_refused(tiny_weights):
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("viola-jones", tiny_weights.store())


def test_iou_matching_counts_each_face_once():
    score = DetectionScore()
    score.add([(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60)], [(0, 0, 10, 10)])
    assert (score.found, score.false_positives, score.labelled) == (1, 2, 1)
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
