"""Train on anonymized, test on real (`anonymize audit utility`, FALCO Tables 3, 5, 6).

On hand-made features the answer is known: a release that keeps the feature an attribute lies on trains
heads as good as the real images do, one that scrambles it trains heads no better than chance. The
command runs once on tiny images whose colour carries the label, with the tiny FaRL of the test weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anonymize.audit.pairing import AuditError
from anonymize.audit.utility import random_split, read_partition, utility_figures
from tests.helpers import cli


def test_heads_trained_on_a_release_that_keeps_the_attribute_match_the_real_ones_and_a_scrambled_one_falls_to_chance():
    rng = np.random.default_rng(0)
    count = 400
    smiling = rng.random(count) < 0.5
    real = np.stack([np.where(smiling, 1.0, -1.0) + 0.3 * rng.standard_normal(count), rng.standard_normal(count)], 1)
    kept = real + 0.05 * rng.standard_normal(real.shape)  # the attribute's direction survives
    scrambled = np.stack([rng.standard_normal(count), rng.standard_normal(count)], 1)  # nothing of it survives
    labels = np.stack([smiling.astype(np.float32), np.ones(count, np.float32)], 1)  # the second: one class only
    labels[:5, 0] = np.nan  # unknown labels are left out
    train, test = np.arange(300), np.arange(300, 400)
    names = ("Smiling", "Young")
    good = utility_figures(real[train], kept[train], real[test], labels[train], labels[test], names)
    bad = utility_figures(real[train], scrambled[train], real[test], labels[train], labels[test], names)
    assert good["Smiling"].trained_on_real == 1.0 and good["Smiling"].trained_on_anonymized == 1.0
    assert bad["Smiling"].trained_on_real == 1.0 and 0.3 < bad["Smiling"].trained_on_anonymized < 0.7
    assert (good["Smiling"].train_images, good["Smiling"].test_images) == (295, 100)
    assert good["Smiling"].test_positives == int(smiling[test].sum())
    commoner = smiling[train[5:]].mean() >= 0.5  # the training split's commoner class, answered for every test image
    assert good["Smiling"].majority == pytest.approx((smiling[test] == commoner).mean())
    assert good["Young"].status == "not measured (one class only in the training split)" and good["Young"].majority == 1.0


def test_the_split_is_seeded_and_disjoint_and_celebas_partition_file_is_read_by_file_name(tmp_path):
    train, test = random_split(10, 0.2, seed=3)
    assert len(test) == 2 and sorted([*train, *test]) == list(range(10))
    assert (random_split(10, 0.2, seed=3)[1] == test).all()
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("a.jpg 0\nb.jpg 1\nc.jpg 2\nd.jpg 0\n", encoding="utf-8")
    train, test = read_partition(partition, ["x/a.jpg", "x/c.jpg", "y/d.jpg", "b.jpg"])
    assert train.tolist() == [0, 2] and test.tolist() == [1]
    with pytest.raises(AuditError, match="no split for e.jpg"):
        read_partition(partition, ["a.jpg", "e.jpg"])
    partition.write_text("a.jpg train\n", encoding="utf-8")
    with pytest.raises(AuditError, match=r"list_eval_partition.txt:1: expected '<file name> <0\|1\|2>'"):
        read_partition(partition, ["a.jpg"])


def coloured(folder, names_and_labels, swap: bool = False) -> None:
    """Images red-ish when smiling (blue-ish when ``swap``), blue-ish otherwise, with noise."""
    rng = np.random.default_rng(len(str(folder)))
    for name, smiling in names_and_labels:
        red = smiling != swap
        image = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        image[..., 0 if red else 2] += 180
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)


def test_the_utility_command_reports_real_against_anonymized_accuracy_per_attribute(tiny_env, tmp_path):
    names_and_labels = [(f"p{index}/img{index:02d}.png", index % 2 == 0) for index in range(20)]
    for folder, swap in (("originals", False), ("copy", False), ("swapped", True)):
        coloured(tmp_path / folder, names_and_labels, swap)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,Smiling\n" + "".join(f"{name},{1 if smiling else -1}\n" for name, smiling in names_and_labels))
    results = {}
    for folder in ("copy", "swapped"):
        result = cli("audit", "utility", tmp_path / "originals", tmp_path / folder, "--labels", labels, "--test-share", "0.3",
                     "--backbone", "farl", "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        results[folder] = json.loads(result.output)
    copy, swapped = results["copy"], results["swapped"]
    assert (copy["train_images"], copy["test_images"], copy["unlabelled_images"]) == (14, 6, 0)
    smiling = copy["attributes"]["Smiling"]
    assert smiling["status"] == "measured" and smiling["trained_on_anonymized"] == smiling["trained_on_real"]
    assert swapped["attributes"]["Smiling"]["trained_on_real"] == smiling["trained_on_real"]
    assert swapped["attributes"]["Smiling"]["trained_on_anonymized"] < smiling["trained_on_real"]
    assert "LogisticRegression" in copy["classifier"] and "FaRL" in copy["classifier"]
    assert json.loads((tmp_path / "copy-audit" / "utility.json").read_text())["combined_real"] == copy["combined_real"]
    table = cli("audit", "utility", tmp_path / "originals", tmp_path / "copy", "--labels", labels, "--backbone", "farl", "--device", "cpu")
    assert table.exit_code == 0 and "Smiling" in table.output and "combined" in table.output
    assert "classifier: linear probe" in table.output
    pseudo = cli("audit", "utility", tmp_path / "originals", tmp_path / "copy", "--labels-from", "zero-shot", "--backbone", "farl",
                 "--device", "cpu", "--out", tmp_path / "pseudo.json", "--json")
    assert pseudo.exit_code == 0, pseudo.output
    pseudo_result = json.loads(pseudo.output)
    assert pseudo_result["labels"] == "pseudo-labels: attribute source zero-shot on the original images"
    measured = [item for item in pseudo_result["attributes"].values() if item["status"] == "measured"]
    assert measured and all(item["trained_on_anonymized"] == item["trained_on_real"] for item in measured)
    neither = cli("audit", "utility", tmp_path / "originals", tmp_path / "copy", "--device", "cpu")
    assert neither.exit_code == 2 and "--labels FILE or --labels-from SOURCE" in neither.output


MALE_BY_IDENTITY = {"0": 1, "1": 1, "2": 1, "3": -1, "4": 1}  # celeba-ids, labelled by eye: identity 3 is a woman


def test_the_default_dlib_backbone_reads_real_faces_and_a_release_without_faces_teaches_nothing(tiny_env, shared_dir, tmp_path):
    """On real CelebA photos with dlib's descriptor (every install has it): heads trained on an identical copy are the
    real heads; a release whose faces are all blacked out trains heads no better than the majority class."""
    from tests.helpers import copy_celeba_ids

    identities = tuple(MALE_BY_IDENTITY)
    originals = copy_celeba_ids(shared_dir, tmp_path / "originals", identities, per_identity=4)
    copy = copy_celeba_ids(shared_dir, tmp_path / "copy", identities, per_identity=4)
    blacked = copy_celeba_ids(shared_dir, tmp_path / "blacked", identities, per_identity=4)
    for photo in blacked.glob("*/*.jpg"):
        Image.new("RGB", Image.open(photo).size).save(photo)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,Male\n" + "".join(f"{photo.relative_to(originals)},{MALE_BY_IDENTITY[photo.parent.name]}\n"
                                                  for photo in sorted(originals.glob("*/*.jpg"))))
    results = {}
    for release in (copy, blacked):
        result = cli("audit", "utility", originals, release, "--labels", labels, "--test-share", "0.34", "--json")
        assert result.exit_code == 0, result.output
        results[release.name] = json.loads(result.output)
    male = results["copy"]["attributes"]["Male"]
    assert "dlib ResNet" in results["copy"]["classifier"]
    assert male["trained_on_real"] == male["trained_on_anonymized"] >= 0.9 > male["majority"]
    blind = results["blacked"]["attributes"]["Male"]
    assert blind["trained_on_real"] == male["trained_on_real"]
    assert blind["trained_on_anonymized"] <= blind["majority"] + 1e-9
