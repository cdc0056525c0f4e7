"""The classical methods defeat dlib's recogniser on CelebA identities (and the check itself can fail)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.io.decode import decode_image
from anonymize.metrics.identity import SAME_PERSON_DISTANCE, DlibRecogniser, distance
from anonymize.run import run, run_config

PHOTOS_PER_IDENTITY = 2


@pytest.fixture(scope="module")
def celeba_subset(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba") / "in"
    for identity in sorted((shared_dir / "data" / "celeba-ids").iterdir()):
        (root / identity.name).mkdir(parents=True)
        for photo in sorted(identity.iterdir())[:PHOTOS_PER_IDENTITY]:
            shutil.copy(photo, root / identity.name / photo.name)
    return root


@pytest.fixture(scope="module")
def recognise(tiny_weights):
    """How an attacker re-identifies: find the face with dlib, then describe it with dlib's ResNet."""
    store = tiny_weights.store()
    detector = create_detector("dlib-hog", store, DetectorSettings())
    recogniser = DlibRecogniser(store)

    def descriptors(rgb: np.ndarray) -> np.ndarray:
        return recogniser.descriptors(rgb, [face.box for face in detector.detect(rgb)])

    return descriptors


def matches_to_original(source, out, recognise) -> tuple[int, int]:
    """(faces still matching their original within dlib's 0.6, originals with a face)."""
    matched = total = 0
    for photo in sorted(source.rglob("*.jpg")):
        original = recognise(decode_image(photo).rgb)
        if len(original) == 0:
            continue
        total += 1
        anonymized = recognise(decode_image(out / photo.relative_to(source)).rgb)
        if len(anonymized) and distance(original[0][None], anonymized).min() < SAME_PERSON_DISTANCE:
            matched += 1
    return matched, total


def test_an_unmodified_face_matches_its_original(celeba_subset, recognise, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(celeba_subset, copy)
    matched, total = matches_to_original(celeba_subset, copy, recognise)
    assert total >= 8 and matched == total


def test_a_weak_blur_is_still_recognised(celeba_subset, recognise, tmp_path):
    out = tmp_path / "weak"
    run(run_config(celeba_subset, out, method="blur", method_options={"sigma": "0.01", "passes": "1"}, detector="dlib-hog"))
    matched, total = matches_to_original(celeba_subset, out, recognise)
    assert matched > total // 2


@pytest.mark.parametrize("method", ["blur", "pixelate", "mask"])
@pytest.mark.parametrize("aligned", [False, True], ids=["detected", "aligned"])
def test_default_classical_methods_are_not_recognised(method, aligned, celeba_subset, recognise, tmp_path):
    out = tmp_path / "out"
    summary = run(run_config(celeba_subset, out, method=method, detector="dlib-hog", aligned=aligned))
    assert summary.faces >= 8
    matched, total = matches_to_original(celeba_subset, out, recognise)
    assert total >= 8 and matched == 0
