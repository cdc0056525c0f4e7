"""`anonymize calibrate`: the recogniser's same-person cosine at a chosen FAR, and the matching angle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import anonymize.cli.calibrate  # noqa: F401  (attaches `calibrate` to the app)
from anonymize.audit.calibrate import CalibrationError, calibrate, identity_folders, threshold_at_far
from tests.helpers import cli, copy_celeba_ids


def test_the_threshold_accepts_at_most_the_far_share_of_different_pairs():
    different = np.array([0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3])
    same = np.array([0.95, 0.6, 0.45, 0.35])
    # by hand: FAR 0.1 of 10 pairs allows one (0.9) above the threshold -> t = 0.5; same pairs above 0.5: 2 of 4
    threshold = threshold_at_far(same, different, 0.1)
    assert (threshold.value, threshold.far, threshold.tar) == (0.5, 0.1, 0.5)
    strict = threshold_at_far(same, different, 0.0)  # nobody accepted: t is the highest different score
    assert (strict.value, strict.far, strict.tar) == (0.9, 0.0, 0.25)
    distance = threshold_at_far(np.array([0.2, 0.85]), np.array([0.5, 0.8, 0.9, 1.0]), 0.25, higher_is_same=False)
    assert (distance.value, distance.far, distance.tar) == (0.8, 0.25, 0.5)  # accept d < 0.8: 0.5 of the different


def test_the_angle_is_the_arccos_of_the_cosine_threshold():
    embeddings = np.array([[1.0, 0.0], [math.cos(0.1), math.sin(0.1)], [0.0, 1.0], [math.cos(1.4), math.sin(1.4)]])
    result = calibrate(embeddings, [0, 0, 1, 1], far=0.0, recogniser="arcface")
    assert result.same_pairs == 2 and result.different_pairs == 4
    assert result.cosine.value == pytest.approx(math.cos(1.4 - 0.1))  # the closest different pair
    assert result.angle_degrees == pytest.approx(math.degrees(1.3)) and result.distance is None


def test_a_set_without_two_identities_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.jpg").write_bytes(b"")
    with pytest.raises(CalibrationError, match="at least 2"):
        identity_folders(tmp_path)
    result = cli("calibrate", tmp_path / "missing", "--json")
    assert result.exit_code == 2 and "not a folder" in json.loads(result.stdout)["error"]


def test_dlib_on_celeba_identities_accepts_most_same_pairs_at_a_strict_far(shared_dir):
    result = cli("calibrate", shared_dir / "data" / "celeba-ids", "--recogniser", "dlib", "--far", "0.001",
                 "--max-per-identity", "3", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert (found["identities"], found["images"], found["same_pairs"], found["different_pairs"]) == (5, 15, 15, 90)
    assert found["cosine"]["far"] == 0.0 and found["cosine"]["tar"] > 0.8  # dlib tells these five people apart
    assert found["angle_degrees"] == pytest.approx(math.degrees(math.acos(found["cosine"]["value"])))
    assert 0.4 < found["distance"]["value"] < 0.8  # near dlib's own same-person distance, 0.6


def test_arcface_calibration_runs_on_the_arcface_weights(tiny_env, shared_dir, tmp_path):
    source = copy_celeba_ids(shared_dir, tmp_path / "ids")
    record = tiny_env.weights_dir / "calibration" / "arcface.json"
    try:
        result = cli("calibrate", source, "--recogniser", "arcface", "--far", "0.25", "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        found = json.loads(result.stdout)
        assert found["recogniser"] == "arcface" and found["same_pairs"] == 2 and found["different_pairs"] == 4
        assert found["cosine"]["far"] <= 0.25 and 0 <= found["angle_degrees"] <= 180
        assert found["record"] == str(record)  # stored where CFA's -p angle=threshold+N reads it
        assert json.loads(record.read_text())["angle_degrees"] == found["angle_degrees"]
    finally:
        record.unlink(missing_ok=True)  # the tiny weights folder is shared: other tests expect no calibration
