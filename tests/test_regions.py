"""What is pasted back, and at what resolution: regions that cover the face, the generated face at full detail."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from anonymize.io.storage import work_storage
from anonymize.faces.align import align_face
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.faces.paste import Region, face_cover_polygon, paste_face, region_mask
from anonymize.io.decode import decode_image
from anonymize.methods import create_method
from anonymize.methods.base import MethodContext
from anonymize.run import run, run_config
from tests.helpers import five_points, textured_image

THREE_QUARTER = "multi_obama_and_biden.jpg"  # the man at the bottom right turns his head by about 60 degrees


def dlib_landmarks(rgb: np.ndarray, store) -> list[np.ndarray]:
    return [face.landmarks for face in create_detector("dlib-hog", store, DetectorSettings()).detect(rgb)]


def test_every_landmark_of_a_three_quarter_face_lies_in_the_changed_region(shared_dir, tiny_weights, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "portraits" / THREE_QUARTER, source / THREE_QUARTER)
    out = tmp_path / "out"
    summary = run(run_config(source, out, method="mask", detector="dlib-hog", device="cpu", weights_dir=tiny_weights.weights_dir))
    assert summary.faces == 3 and summary.errors == 0
    original = decode_image(source / THREE_QUARTER).rgb
    changed = np.any(decode_image(out / THREE_QUARTER).rgb != original, axis=2)
    landmarks = dlib_landmarks(original, tiny_weights.store())
    turned = min(landmarks, key=lambda lm: (lm[30, 0] - lm[0, 0]) / (lm[16, 0] - lm[0, 0]))  # nose nearest one jaw end
    assert (turned[30, 0] - turned[0, 0]) / (turned[16, 0] - turned[0, 0]) < 0.2, "the test photo must hold a turned face"
    for face in landmarks:
        x, y = np.round(face).astype(int).T
        outside = np.nonzero(~changed[y, x])[0]
        assert outside.size == 0, f"landmarks {outside.tolist()} (68-point numbering) were left unchanged"


def test_the_face_ellipse_alone_would_leave_the_jaw_of_the_turned_face(shared_dir, tiny_weights):
    rgb = decode_image(shared_dir / "data" / "portraits" / THREE_QUARTER).rgb
    faces = create_detector("dlib-hog", tiny_weights.store(), DetectorSettings()).detect(rgb)
    turned = min(faces, key=lambda f: (f.landmarks[30, 0] - f.landmarks[0, 0]) / (f.landmarks[16, 0] - f.landmarks[0, 0]))
    aligned = align_face(rgb, turned.landmarks, 256)
    fill = np.full_like(aligned.crop, 255)
    covered = {}
    for name, box in (("ellipse alone", None), ("ellipse + box to the chin", turned.box)):
        changed = np.any(paste_face(rgb, fill, aligned, Region("ellipse"), box) != rgb, axis=2)
        x, y = np.round(turned.landmarks).astype(int).T
        covered[name] = int(changed[y, x].sum())
    assert covered == {"ellipse alone": pytest.approx(63, abs=3), "ellipse + box to the chin": 68}


def test_the_cover_polygon_is_the_box_stretched_down_to_the_chin():
    landmarks = five_points((100, 100), (140, 100), (105, 140), (135, 140))  # level face, crop = image
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    polygon = face_cover_polygon((90, 80, 150, 150), identity, landmarks)
    # chin: 0.8 eye-to-mouth distances (40 px) below the mouth, at y = 172, below the box's bottom (150)
    assert polygon[:, 1].max() == pytest.approx(172)
    assert polygon[:, 0].min() == 90 and polygon[:, 0].max() == 150
    mask = region_mask(256, "ellipse", cover=polygon, feather=0.0)
    assert mask[170, 100] == 1 and mask[170, 145] == 1


def test_crop_region_is_the_whole_aligned_square_feathered_at_its_edges():
    mask = region_mask(256, "crop", feather=0.04)
    assert mask[128, 128] == pytest.approx(1.0, abs=1e-3) and mask[45, 45] == pytest.approx(1.0, abs=1e-3)
    assert mask[0, 128] < 0.5 and mask[128, 255] < 0.5
    image = textured_image(300, 300)
    aligned = align_face(image, five_points((-20, 60), (40, 60), (-15, 120), (35, 120)), 128)  # square leaves the photo
    result = paste_face(image, np.zeros_like(aligned.crop), aligned, Region("crop"))
    assert result.shape == image.shape
    assert np.all(result[90, 10] == 0)  # inside the square and the photo: replaced


def test_generative_methods_paste_the_whole_square_and_classical_ones_the_face_ellipse(tiny_weights, tmp_path):
    context = MethodContext(tiny_weights.store(), work=work_storage(tmp_path))
    assert create_method("falco", context, {"steps": "0"}).default_region == "crop"
    assert {create_method(name, context, {}).default_region for name in ("blur", "pixelate", "mask")} == {"ellipse"}


def high_frequency_energy(rgb: np.ndarray) -> float:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def test_a_large_face_keeps_the_detail_of_a_1024_output_that_a_256_bottleneck_loses():
    photo = np.full((900, 900, 3), 128, np.uint8)
    landmarks = five_points((362, 380), (537, 380), (372, 560), (527, 560))  # FFHQ square of 4 x 175 = 700 px
    aligned = align_face(photo, landmarks, 256)
    side_in_photo = 256 / np.sqrt(abs(np.linalg.det(aligned.matrix[:, :2])))
    assert side_in_photo == pytest.approx(700, abs=1)
    generated = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # all detail
    generated = cv2.GaussianBlur(generated, (0, 0), 1.0)  # detail at the scale of a few output pixels
    through_256 = cv2.resize(generated, (256, 256), interpolation=cv2.INTER_AREA)
    full = paste_face(photo, generated, aligned, Region("full"))
    bottleneck = paste_face(photo, through_256, aligned, Region("full"))
    inner = (slice(300, 600), slice(300, 600))
    assert high_frequency_energy(full[inner]) > 4 * high_frequency_energy(bottleneck[inner])


def test_a_small_face_is_downscaled_with_area_averaging_not_aliased():
    photo = np.full((200, 200, 3), 128, np.uint8)
    aligned = align_face(photo, five_points((85, 90), (110, 90), (87, 115), (108, 115)), 256)  # a 100 px square
    stripes = np.zeros((1024, 1024, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: they must average to grey, not alias into bands
    pasted = paste_face(photo, stripes, aligned, Region("full"))[70:130, 70:130].astype(float)
    assert abs(pasted.mean() - 127.5) < 3 and pasted.std() < 10
