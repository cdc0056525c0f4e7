"""``--aligned``: one centred face per image, cropped FFHQ-style (never stretched) and pasted back in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.faces.align import (
    CELEBA_SIZE,
    FFHQ_TEMPLATE,
    align_face,
    align_single_face,
    celeba_template_landmarks,
    is_ffhq_framed,
    transform_points,
)
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.faces.types import eye_and_mouth_points
from anonymize.io.decode import decode_image
from anonymize.methods.classical import MaskMethod
from anonymize.run import run, run_config

PHOTOS_PER_IDENTITY = 3


def template_points(size: int) -> np.ndarray:
    """Eye centres and mouth centre of the FFHQ template, in pixels of a ``size`` crop (3 x 2)."""
    return np.stack([FFHQ_TEMPLATE[0], FFHQ_TEMPLATE[1], FFHQ_TEMPLATE[3:].mean(axis=0)]) * size


def eyes_and_mouth(landmarks: np.ndarray) -> np.ndarray:
    eye_left, eye_right, mouth_left, mouth_right = eye_and_mouth_points(landmarks)
    return np.stack([eye_left, eye_right, (mouth_left + mouth_right) / 2])


@pytest.fixture
def celeba(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "celeba"
    for identity in sorted((shared_dir / "data" / "celeba-ids").iterdir()):
        (source / identity.name).mkdir(parents=True)
        for photo in sorted(identity.glob("*.jpg"))[:PHOTOS_PER_IDENTITY]:
            shutil.copy(photo, source / identity.name / photo.name)
    return source


def test_celeba_faces_reach_the_method_at_the_ffhq_template_positions_and_come_back_at_the_input_size(
        celeba, tiny_weights, tmp_path, monkeypatch):
    handed = []
    original = MaskMethod.anonymize
    monkeypatch.setattr(MaskMethod, "anonymize", lambda self, faces: handed.extend(f.image for f in faces) or original(self, faces))
    out = tmp_path / "out"
    summary = run(run_config(celeba, out, method="mask", aligned=True, device="cpu", weights_dir=tiny_weights.weights_dir))
    assert summary.images == summary.faces == 5 * PHOTOS_PER_IDENTITY and summary.errors == 0
    # an independent landmark model (dlib's 68 points) on the crops the method received
    dlib = create_detector("dlib-hog", tiny_weights.store(), DetectorSettings())
    offsets = np.stack([eyes_and_mouth(dlib.detect(crop)[0].landmarks) - template_points(256) for crop in handed])
    assert np.abs(offsets.mean(axis=0)).max() < 3.0  # on average within 3 px of the template, at 256 px
    # FFHQ's recipe scales by the eye distance, so faces with a long or short eye-to-mouth distance
    # sit a few px higher or lower than the average face the template describes
    assert np.percentile(np.abs(offsets), 90) < 7.0 and np.abs(offsets).max() < 14.0
    for photo in sorted(celeba.rglob("*.jpg")):
        source = decode_image(photo).rgb
        written = decode_image(out / photo.relative_to(celeba)).rgb
        assert written.shape == source.shape == (218, 178, 3)


def test_a_celeba_image_is_not_ffhq_framed_but_an_ffhq_crop_is(shared_dir, tiny_weights):
    detector = create_detector("dlib-hog", tiny_weights.store(), DetectorSettings())
    celeba = decode_image(next((shared_dir / "data" / "celeba-ids" / "0").glob("*.jpg"))).rgb
    assert not is_ffhq_framed(celeba.shape, detector.detect(celeba)[0].landmarks)
    portrait = decode_image(shared_dir / "data" / "portraits" / "obama_1.jpg").rgb
    ffhq_crop = align_face(portrait, detector.detect(portrait)[0].landmarks, 512).crop
    landmarks = detector.detect(ffhq_crop)[0].landmarks
    assert is_ffhq_framed(ffhq_crop.shape, landmarks)
    assert align_single_face(ffhq_crop, landmarks, 256).whole_image
    assert not align_single_face(celeba, detector.detect(celeba)[0].landmarks, 256).whole_image


def test_without_landmarks_the_celeba_template_puts_the_face_at_the_ffhq_positions():
    image = np.zeros((CELEBA_SIZE[1], CELEBA_SIZE[0], 3), np.uint8)
    aligned = align_single_face(image, None, 256)
    in_crop = eyes_and_mouth(transform_points(celeba_template_landmarks(*CELEBA_SIZE), aligned.matrix))
    assert np.abs(in_crop - template_points(256)).max() < 3.0
    assert not aligned.whole_image
    doubled = align_single_face(np.zeros((436, 356, 3), np.uint8), None, 256)  # CelebA framing at twice the size
    assert np.allclose(doubled.matrix[:, :2] * 2, aligned.matrix[:, :2])


def test_aligned_ffhq_uses_square_images_whole_and_refuses_other_shapes(celeba, tiny_weights, tmp_path):
    square = tmp_path / "square"
    square.mkdir()
    rgb = decode_image(next(celeba.rglob("*.jpg"))).rgb[20:198]  # 178 x 178
    Image.fromarray(rgb).save(square / "ffhq.png")
    Image.fromarray(decode_image(next(celeba.rglob("*.jpg"))).rgb).save(square / "tall.png")
    out = tmp_path / "out"
    summary = run(run_config(square, out, method="mask", aligned=True, aligned_framing="ffhq", region="crop",
                            device="cpu", weights_dir=tiny_weights.weights_dir))
    assert summary.images == 1 and summary.errors == 1
    assert "tall.png" in summary.error_messages[0] and "--aligned ffhq expects square" in summary.error_messages[0]
    written = decode_image(out / "ffhq.png").rgb
    assert written.shape == rgb.shape and np.all(written[89, 89] == 0)  # the whole square went through the method
