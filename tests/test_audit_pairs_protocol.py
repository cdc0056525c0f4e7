"""CFA-Net's Table 1 protocol (`anonymize audit --pairs`): an LFW pairs file, 10 folds, TPR at a FAR.

The fold arithmetic is checked on hand-made distances; the command on a tiny pairs file over the
CelebA identities in ../shared (skipped where absent), with dlib as the recogniser: an "anonymized"
folder that is a copy of the originals keeps every fold's TPR, one whose second images show other
people loses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anonymize.audit.lfw_pairs import folded_tpr, read_pairs
from anonymize.audit.pairing import AuditError
from tests.helpers import cli

PEOPLE, PHOTOS = 5, 4
# two folds of 4 same-person and 4 different-person pairs, LFW's layout
PAIRS = """2\t4
p0\t1\t2
p1\t1\t2
p2\t1\t2
p3\t1\t2
p0\t3\tp1\t3
p1\t4\tp2\t4
p2\t3\tp3\t3
p3\t4\tp4\t4
p0\t3\t4
p1\t3\t4
p2\t3\t4
p4\t1\t2
p0\t1\tp2\t2
p1\t1\tp3\t2
p2\t1\tp4\t3
p3\t1\tp4\t1
"""


def test_each_folds_threshold_is_set_on_the_other_folds_different_person_pairs():
    different = np.array([0.5, 0.9, 1.0, 1.2, 0.6, 0.8, 1.1, 1.3])
    different_folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    same = np.array([0.3, 0.7, 0.85, 2.0, 0.4, 0.95, 1.5])
    same_folds = np.array([0, 0, 0, 0, 1, 1, 1])
    result = folded_tpr(same, same_folds, different, different_folds, 2, 0.25)
    first, second = result.folds
    # fold 1: fold 2's impostors sorted 0.6 0.8 1.1 1.3, k = floor(0.25 x 4) = 1 -> threshold 0.8;
    # its same pairs under 0.8: 0.3, 0.7 -> 2 / 4; its own impostors under 0.8: 0.5 -> 1 / 4
    assert (first.threshold, first.tpr, first.held_out_far, first.threshold_pairs) == (0.8, 0.5, 0.25, 4)
    # fold 2: fold 1's impostors 0.5 0.9 1.0 1.2 -> threshold 0.9; same 0.4 -> 1 / 3; own impostors 0.6, 0.8 -> 2 / 4
    assert (second.threshold, second.tpr, second.held_out_far) == (0.9, pytest.approx(1 / 3), 0.5)
    assert result.mean == pytest.approx((0.5 + 1 / 3) / 2) and result.std == pytest.approx((0.5 - 1 / 3) / 2)
    assert result.resolved
    # FAR 0.1 on 4 pairs: k = 0, the smallest other-fold impostor is the threshold, and it is flagged
    tight = folded_tpr(same, same_folds, different, different_folds, 2, 0.1)
    assert [fold.threshold for fold in tight.folds] == [0.6, 0.5] and not tight.resolved
    # one fold: its threshold is set on its own different-person pairs
    alone = folded_tpr(same[:4], same_folds[:4], different[:4], different_folds[:4], 1, 0.25)
    assert alone.folds[0].threshold == 0.9 and alone.mean == 0.75 and alone.std == 0.0


def test_a_pairs_file_reads_as_lfw_writes_it_and_a_wrong_one_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(PAIRS, encoding="utf-8")
    pairs = read_pairs(path)
    assert (pairs.folds, pairs.per_fold, len(pairs.pairs)) == (2, 4, 16)
    assert (pairs.pairs[0].first, pairs.pairs[0].second, pairs.pairs[0].same) == ("p0/p0_0001", "p0/p0_0002", True)
    assert (pairs.pairs[4].first, pairs.pairs[4].second, pairs.pairs[4].same) == ("p0/p0_0003", "p1/p1_0003", False)
    assert [pair.fold for pair in pairs.pairs] == [0] * 8 + [1] * 8
    path.write_text(PAIRS.replace("p2\t3\t4\n", "p2\tthree\t4\n"), encoding="utf-8")
    with pytest.raises(AuditError, match=r"pairs.txt:12: expected 'name n1 n2'"):
        read_pairs(path)
    path.write_text(PAIRS.replace("2\t4\n", "2\t5\n"), encoding="utf-8")
    with pytest.raises(AuditError, match=r"promises 2 fold.*\(20 lines\), the file has 16"):
        read_pairs(path)
    path.write_text(PAIRS.replace("p4\t1\t2\n", "p4\t1\tp0\t2\n"), encoding="utf-8")
    with pytest.raises(AuditError, match="fold 2 holds 3 same-person and 5 different-person"):
        read_pairs(path)


@pytest.fixture(scope="module")
def lfw_style(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Five CelebA people named as LFW names them (p<i>/p<i>_000<n>.jpg), a copy of them as the "anonymized" folder,
    and a folder whose every image shows the next person instead (photos the originals do not use)."""
    root = tmp_path_factory.mktemp("lfw-style")
    source = sorted((shared_dir / "data" / "celeba-ids").iterdir())[:PEOPLE]
    for index, folder in enumerate(source):
        photos = sorted(folder.glob("*.jpg"))
        others = sorted(source[(index + 1) % PEOPLE].glob("*.jpg"))[PHOTOS:2 * PHOTOS]
        for number in range(PHOTOS):
            name = f"p{index}/p{index}_{number + 1:04d}.jpg"
            for folder_name, photo in (("originals", photos[number]), ("copy", photos[number]), ("swapped", others[number])):
                (root / folder_name / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(photo, root / folder_name / name)
    (root / "pairs.txt").write_text(PAIRS, encoding="utf-8")
    return {"root": root, "originals": root / "originals", "pairs": root / "pairs.txt", "weights": root / "weights"}


def pairs_audit(lfw_style: dict[str, Path], anonymized: str, *extra: object) -> dict:
    root = lfw_style["root"]
    result = cli("audit", lfw_style["originals"], root / anonymized, "--pairs", lfw_style["pairs"], "--far", "0.25",
                 "--aligned", "--detector", "dlib-hog", "--device", "cpu", "--weights-dir", lfw_style["weights"], "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_an_anonymized_copy_keeps_every_folds_tpr_and_other_faces_lose_it(lfw_style):
    copied = pairs_audit(lfw_style, "copy")
    assert (copied["folds"], copied["same_pairs"], copied["different_pairs"], copied["left_out"]) == (2, 8, 8, [])
    dlib = copied["recognisers"]["dlib"]
    assert dlib["judge"] and dlib["after"] == dlib["before"]
    assert "--trust-unverified" in copied["unavailable"]["facenet-vggface2"]  # CFA-Net's FaceNet: said why it is absent
    assert dlib["before"]["mean"] >= 0.75  # dlib tells these five people apart
    assert json.loads(Path(copied["path"]).read_text())["recognisers"]["dlib"]["after"]["mean"] == dlib["after"]["mean"]
    assert Path(copied["path"]).parent.name == "copy-audit"
    swapped = pairs_audit(lfw_style, "swapped")["recognisers"]["dlib"]
    assert swapped["before"] == dlib["before"]  # the originals' pairs and thresholds do not depend on the release
    assert swapped["after"]["mean"] <= 0.5 < dlib["after"]["mean"] == 1.0  # measured: 0.5 +- 0.25 against 1.0
    assert [fold["threshold"] for fold in swapped["after"]["folds"]] == [fold["threshold"] for fold in dlib["before"]["folds"]]


def test_a_missing_anonymized_second_image_stops_the_protocol_naming_the_line(lfw_style, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(lfw_style["root"] / "copy", partial)
    (partial / "p4" / "p4_0002.jpg").unlink()
    result = cli("audit", lfw_style["originals"], partial, "--pairs", lfw_style["pairs"], "--aligned", "--detector", "dlib-hog",
                 "--weights-dir", lfw_style["weights"], "--device", "cpu")
    assert result.exit_code == 2
    assert "pairs.txt:13: no anonymized output p4/p4_0002.* in" in result.output
