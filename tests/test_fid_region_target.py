"""What FID compares: whole images or face crops (`--fid-region`, CFA-Net Table 3), the originals or a target set
(`--fid-target`, FALCO Table 2's FID against CelebA-HQ).

A tiny stand-in network (each channel's mean and spread) makes the difference exact: a change outside the face
box moves the whole-image FID and leaves the face-crop FID at zero; a target set equal to the outputs gives zero.
The command line is checked once with the pinned random Inception stand-in.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anonymize.audit.fid import FidFeatures, FidTargetError, add_target_folder, fid_from_features
from anonymize.models.images import CanonicalImages
from tests.helpers import cli, copy_celeba_ids

BOX = (8.0, 8.0, 40.0, 40.0)


class ChannelStatistics(torch.nn.Module):
    """Six features per image: each channel's mean and standard deviation."""

    def forward(self, images: CanonicalImages) -> torch.Tensor:
        pixels = images.tensor
        return torch.cat([pixels.mean((2, 3)), pixels.std((2, 3))], 1)


def pairs_changed_outside_the_box(count: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(count):
        original = rng.integers(0, 256, (56, 48, 3), dtype=np.uint8)
        output = rng.integers(0, 256, (56, 48, 3), dtype=np.uint8) // 3  # darker everywhere ...
        output[8:40, 8:40] = original[8:40, 8:40]  # ... but the face box
        pairs.append((original, output))
    return pairs


def test_face_region_fid_reads_only_the_face_boxes_and_image_fid_the_whole_image():
    whole, faces = FidFeatures(ChannelStatistics(), "cpu"), FidFeatures(ChannelStatistics(), "cpu", region="face")
    for original, output in pairs_changed_outside_the_box():
        whole.add(original, output, [BOX])
        faces.add(original, output, [BOX])
    assert faces.result().value == pytest.approx(0.0, abs=1e-9) and faces.result().status == "computed on 4 + 4 face crops"
    assert whole.result().value > 0.1 and whole.result().status == "computed on 4 + 4 images"
    expected = fid_from_features(np.stack(whole.originals), np.stack(whole.outputs))
    assert whole.result().value == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown FID region 'mouth'"):
        FidFeatures(ChannelStatistics(), "cpu", region="mouth")


def test_a_target_set_replaces_the_originals_as_the_reference(tmp_path):
    pairs = pairs_changed_outside_the_box()
    target = tmp_path / "target"
    target.mkdir()
    for index, (_, output) in enumerate(pairs[:3]):
        Image.fromarray(output).save(target / f"{index}.png")
    collector, plain = FidFeatures(ChannelStatistics(), "cpu"), FidFeatures(ChannelStatistics(), "cpu")
    add_target_folder([collector], target, 10**7)
    for original, output in pairs:
        collector.add(original, output)
        plain.add(original, output)
    assert collector.originals == []  # not the reference: never computed
    expected = fid_from_features(np.stack(collector.target), np.stack(collector.outputs))
    result = collector.result()
    assert result.value == pytest.approx(max(expected, 0.0)) and result.status == f"computed on 4 anonymized images against 3 images of {target}"
    assert result.value < plain.result().value  # the outputs are nearer their own kind
    (tmp_path / "empty").mkdir()
    with pytest.raises(FidTargetError, match="empty: no image found for --fid-target"):
        add_target_folder([FidFeatures(ChannelStatistics(), "cpu")], tmp_path / "empty", 10**7)
    with pytest.raises(FidTargetError, match="absent: --fid-target is not a folder"):
        add_target_folder([FidFeatures(ChannelStatistics(), "cpu")], tmp_path / "absent", 10**7)


def test_the_audit_command_takes_the_region_and_the_target(shared_dir, audit_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(audit_weights.lock_path))
    originals = copy_celeba_ids(shared_dir, tmp_path / "originals")
    anonymized = tmp_path / "blurred"
    for photo in sorted(originals.rglob("*.jpg")):
        target = anonymized / photo.relative_to(originals)
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.GaussianBlur(cv2.imread(str(photo)), (0, 0), 6))
    reference = tmp_path / "reference"
    shutil.copytree(originals / "0", reference)
    weights = tmp_path / "weights"  # only the Inception stand-in: the other instruments read "unavailable", and load nothing
    inception = audit_weights.store().path("inception_fid")
    (weights / inception.relative_to(audit_weights.weights_dir)).parent.mkdir(parents=True)
    shutil.copyfile(inception, weights / inception.relative_to(audit_weights.weights_dir))
    summary = tmp_path / "summary.json"
    result = cli("audit", originals, anonymized, "--fid-region", "face", "--fid-target", reference, "--aligned",
                 "--detector", "dlib-hog", "--device", "cpu", "--weights-dir", weights, "--no-heads",
                 "--attribute-source", "none", "--summary", summary, "--out-parquet", tmp_path / "a.parquet", "--report-only", "-q")
    assert result.exit_code == 0, result.output
    quality = json.loads(summary.read_text())["quality"]
    assert quality["fid_status"] == f"computed on 4 anonymized face crops against 2 images of {reference}"
    assert np.isfinite(quality["fid"])
    missing = cli("audit", originals, anonymized, "--fid-target", tmp_path / "nowhere", "--aligned", "--detector", "dlib-hog",
                  "--device", "cpu", "--weights-dir", weights, "-q")
    assert missing.exit_code == 2 and "nowhere: --fid-target is not a folder" in missing.output
