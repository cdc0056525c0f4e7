"""The audit's human-goal mode (camouflage): machine matching is the utility, a visual-change floor the leak.

Real photos: two aligned CelebA photos of each of the five identities in ../shared (skipped where
absent), judged by dlib. "Outputs that are the inputs themselves" is a byte copy of the originals
audited with ``privacy_goal="human"`` (``--privacy-goal human``): the audit can judge any folder for
either goal, and the override is how a curator audits a folder whose run recorded no goal. It must
pass the match gate (and fail the visual floor: viewers see the original faces); a blurred run must
fail the match gate (dlib no longer matches the blurred faces) and clear the visual floor.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anonymize.audit import AuditConfig, run_audit
from anonymize.audit.human import resolve_goal, too_similar
from anonymize.audit.judges import choose_judges
from anonymize.audit.report import render_report
from anonymize.audit.study import ANSWER_KEY, STUDY_DIR, STUDY_PAGE, study_pairs
from anonymize.audit.summary import AuditSummary
from anonymize.cli import _register_commands, app
from anonymize.run import run, run_config
from tests.helpers import cli

PHOTOS_PER_IDENTITY = 2


@pytest.fixture(scope="module")
def celeba(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("human-goal")
    originals = root / "celeba"
    for identity in sorted((shared_dir / "data" / "celeba-ids").iterdir()):
        (originals / identity.name).mkdir(parents=True)
        for photo in sorted(identity.glob("*.jpg"))[:PHOTOS_PER_IDENTITY]:
            shutil.copy(photo, originals / identity.name / photo.name)
    copy = root / "copy"
    shutil.copytree(originals, copy)
    blurred = root / "blurred"
    run(run_config(originals, blurred, method="blur", aligned=True, device="cpu", weights_dir=root / "weights"))
    return {"root": root, "originals": originals, "copy": copy, "blurred": blurred, "weights": root / "weights"}


def human_audit(celeba: dict[str, Path], anonymized: Path, **overrides):
    settings = {"detector": "dlib-hog", "weights_dir": celeba["weights"], "device": "cpu", "aligned": True,
                "privacy_goal": "human", "write_files": False, **overrides}
    return run_audit(AuditConfig(celeba["originals"], anonymized, **settings))


@pytest.fixture(scope="module")
def audits(celeba: dict[str, Path]) -> dict[str, object]:
    """The copy audited without files; the blurred run with the HTML report and a study kit of 8 + 4 control pairs."""
    return {"copy": human_audit(celeba, celeba["copy"]),
            "blurred": human_audit(celeba, celeba["blurred"], write_files=True, report_dir=celeba["root"] / "report", study_pairs=8,
                                   study_control_pairs=4)}


def test_outputs_that_are_the_inputs_pass_the_match_gate_and_fail_the_visual_floor(audits):
    result = audits["copy"]
    human = result.summary.human_goal
    assert result.summary.privacy_goal == "human" and result.summary.privacy_goal_source == "--privacy-goal"
    assert human.judge == "dlib" and human.white_box == [] and human.faces == 10
    assert human.match_rate == 1.0 and human.rank1_rate == 1.0
    assert human.tar_at_far["0.1"].tar == 1.0 and human.tar_at_far["0.1"].resolved  # 40 different-person pairs
    assert not human.tar_at_far["0.01"].resolved  # FAR 0.01 needs 100 pairs
    assert human.visual_change.too_similar == 10 and human.visual_change.ssim_face == 1.0
    written = result.summary.to_json()  # the human goal's entry sits after the recognisers' roles, as always
    assert list(written)[list(written).index("recogniser_roles") + 1] == "human_goal"
    assert AuditSummary.from_json(written).to_json() == written
    assert not any(text.startswith("match rate") for text in result.crossed)
    assert result.crossed == ["10 face(s) still look like their original (face-box PSNR > 25 dB or SSIM > 0.8) > max 0"]


def test_a_blurred_run_fails_the_match_gate_and_clears_the_visual_floor(audits):
    result = audits["blurred"]
    human = result.summary.human_goal
    assert human.match_rate <= 0.1 and human.visual_change.too_similar == 0
    assert human.visual_change.psnr_face_db < 25 and human.visual_change.ssim_face < 0.8
    assert not result.passed
    assert [text.split(" (")[0] for text in result.crossed] == [f"match rate {human.match_rate:.1%} < min 90.0%"]
    assert "re-identification rate" not in " ".join(result.crossed)  # the machine gate does not apply


def card_state(page: str, label: str) -> tuple[str, str]:
    """A summary card's colour class and value, by its label."""
    found = re.search(rf'<div class="card (\w*)"><div class="label">{re.escape(label)}</div><div class="value">([^<]*)</div>', page)
    assert found, f"no card {label!r}"
    return found.group(1), found.group(2)


def test_a_human_goal_report_shows_its_cards_in_its_own_terms(celeba, audits):
    # The copy: every face still matched (the utility, green) yet every face still looks like its original (red).
    page = render_report(audits["copy"], AuditConfig(celeba["originals"], celeba["copy"], privacy_goal="human"), None)
    assert card_state(page, "Match rate (utility)") == ("good", "100.0%")
    assert card_state(page, "Still look like the original") == ("bad", "10")
    assert card_state(page, "Rank-1 among originals")[0] == ""  # linkability is no leak here: never red
    assert "Re-identification rate" not in page and "Missed faces</div>" not in page
    assert 'tag red">re-identified' not in page and "matched by machine" in page
    assert "Machine linkability, the utility of a human-goal release (not a leak): 100.0% of the anonymized faces" in page
    assert "still carry identity" not in page  # the machine goal's reading of the same figure
    blurred = render_report(audits["blurred"], AuditConfig(celeba["originals"], celeba["blurred"], privacy_goal="human"), None)
    assert card_state(blurred, "Match rate (utility)")[0] == "bad"  # below the 90 % minimum
    assert card_state(blurred, "Still look like the original") == ("good", "0")


def test_the_cli_gates_on_the_match_rate_with_fail_on_leak(celeba):
    _register_commands()
    args = ["audit", str(celeba["originals"]), str(celeba["blurred"]), "--detector", "dlib-hog", "--weights-dir",
            str(celeba["weights"]), "--device", "cpu", "--no-fid", "--json", "--fail-on-leak"]
    failed = CliRunner().invoke(app, [*args, "--privacy-goal", "human"], catch_exceptions=False)
    assert failed.exit_code == 3
    summary = json.loads(failed.stdout)
    assert summary["privacy_goal"] == "human" and summary["recogniser_roles"]["judge"] == "dlib"
    assert summary["crossed"] == [text for text in summary["crossed"] if text.startswith("match rate")] != []
    assert summary["thresholds"]["min_match_rate"] == 0.9


def test_the_goal_comes_from_the_option_then_the_manifest_then_defaults_to_machine():
    assert resolve_goal("human", "machine") == ("human", "--privacy-goal")
    assert resolve_goal("auto", "human") == ("human", "the run's manifest")
    assert resolve_goal("auto", None)[0] == "machine"
    with pytest.raises(ValueError, match="unknown privacy goal 'people'"):
        resolve_goal("people", None)


def test_the_judge_is_the_first_recogniser_outside_the_methods_loss():
    assert choose_judges(["dlib", "facenet-vggface2"], ["arcface-ir-se50"])[0][0] == "dlib"
    assert choose_judges(["dlib", "facenet-vggface2"], ["dlib"])[0][0] == "facenet-vggface2"
    judges, reason = choose_judges(["dlib"], ["dlib"])
    assert judges == [] and "nothing can judge it" in reason


def test_a_face_box_above_either_ceiling_still_looks_like_its_original():
    assert too_similar({"psnr_face_db": 26.0, "ssim_face": 0.5}, 25.0, 0.8)
    assert too_similar({"psnr_face_db": 20.0, "ssim_face": 0.85}, 25.0, 0.8)
    assert not too_similar({"psnr_face_db": 25.0, "ssim_face": 0.8}, 25.0, 0.8)
    assert not too_similar({"psnr_face_db": None, "ssim_face": None}, 25.0, 0.8)


def test_the_study_kit_shows_volunteers_shuffled_pairs_and_keeps_the_answers_in_a_separate_file(celeba, audits):
    report = celeba["root"] / "report"
    page = (report / STUDY_PAGE).read_text()
    everything = list(csv.DictReader((report / ANSWER_KEY).open()))
    assert [int(row["pair"]) for row in everything] == list(range(1, 13))
    assert sorted(row["kind"] for row in everything) == ["anonymized"] * 8 + ["control"] * 4
    assert [row["kind"] for row in everything] != ["anonymized"] * 8 + ["control"] * 4  # controls shuffled in
    key = [row for row in everything if row["kind"] == "anonymized"]
    assert sorted(row["answer"] for row in key) == ["different"] * 4 + ["same"] * 4
    assert [row["answer"] for row in key] != ["same"] * 4 + ["different"] * 4  # shuffled
    for row in key:
        same_face = row["left_original"] == row["right_face"]
        assert same_face == (row["answer"] == "same")
        assert (row["left_identity"] == row["right_identity"]) == (row["answer"] == "same")  # another identity, never another photo
    controls = [row for row in everything if row["kind"] == "control"]
    assert sorted(row["answer"] for row in controls) == ["different"] * 2 + ["same"] * 2
    for row in controls:  # two originals: same person = two different photos of one identity
        assert row["left_original"] != row["right_face"]
        assert (row["left_identity"] == row["right_identity"]) == (row["answer"] == "same")
    numbers = {int(row["pair"]) for row in controls}
    for number in numbers:  # a control's right-hand thumbnail is the original, not the blurred output
        right = (report / STUDY_DIR / f"{number:03d}-b.jpg").read_bytes()
        assert right != (report / STUDY_DIR / f"{number:03d}-a.jpg").read_bytes()
    assert sorted(path.name for path in (report / STUDY_DIR).iterdir()) == [f"{n:03d}-{side}.jpg" for n in range(1, 13) for side in "ab"]
    assert "different" not in page.lower() and "anonymiz" not in page.lower() and "control" not in page.lower()
    assert page.count('type="radio"') == 24
    for row in everything:  # no file name gives a pair away
        assert row["left_original"].split("#")[0].split("/")[-1] not in page
        assert row["right_face"].split("#")[0].split("/")[-1] not in page
    index = (report / "index.html").read_text()
    assert STUDY_PAGE in index and ANSWER_KEY in index and "Privacy goal" in index


def test_study_pairs_are_half_same_half_another_person_and_follow_the_seed():
    rows = [{"source_path": f"{person}/{photo}.jpg", "face_index": 0, "box": [0, 0, 10, 10], "identity": str(person)}
            for person in range(3) for photo in range(2)]
    pairs = study_pairs(rows, 4, seed=1)
    assert sorted(pair.answer for pair in pairs) == ["different", "different", "same", "same"]
    for pair in pairs:
        assert (pair.original is pair.anonymized) == (pair.answer == "same")
        assert (pair.original["identity"] == pair.anonymized["identity"]) == (pair.answer == "same")
    again = study_pairs(rows, 4, seed=1)
    assert [(p.answer, p.original["source_path"], p.anonymized["source_path"]) for p in again] == \
        [(p.answer, p.original["source_path"], p.anonymized["source_path"]) for p in pairs]
    alone = [{**rows[0], "identity": None}]
    assert [pair.answer for pair in study_pairs(alone, 4)] == ["same"]  # nobody else: same-person pairs only


def test_control_pairs_are_two_originals_and_need_identities():
    rows = [{"source_path": f"{person}/{photo}.jpg", "face_index": 0, "box": [0, 0, 10, 10], "identity": str(person)}
            for person in range(3) for photo in range(3)]
    pairs = study_pairs(rows, 4, seed=3, controls=6)
    controls = [pair for pair in pairs if pair.kind == "control"]
    assert len(pairs) == 10 and sorted(pair.answer for pair in controls) == ["different"] * 3 + ["same"] * 3
    for pair in controls:
        assert pair.right_side == "original" and pair.original["source_path"] != pair.anonymized["source_path"]
        assert (pair.original["identity"] == pair.anonymized["identity"]) == (pair.answer == "same")
    assert all(pair.right_side == "anonymized" for pair in pairs if pair.kind == "anonymized")
    unlabelled = [{**row, "identity": None} for row in rows]
    assert all(pair.kind == "anonymized" for pair in study_pairs(unlabelled, 4, controls=6))  # no identities: no control


STUDY_KEY = """pair,kind,answer,left_original,right_face,left_identity,right_identity
1,anonymized,same,a#0,a#0,1,1
2,anonymized,different,a#0,b#0,1,2
3,anonymized,same,c#0,c#0,3,3
4,anonymized,different,c#0,d#0,3,4
5,control,same,a#0,e#0,1,1
6,control,different,b#0,c#0,2,3
7,control,same,c#0,f#0,3,3
8,control,different,d#0,a#0,4,1
"""
# v1: anonymized 1 right, 2 wrong, 3 wrong, 4 right; control all right.
# v2: anonymized 1, 2, 4 right, 3 empty; control 5, 6 right, 7 wrong, 8 missing.
ANSWERS = """volunteer,pair,answer
v1,1,yes
v1,2,yes
v1,3,no
v1,4,no
v1,5,yes
v1,6,no
v1,7,yes
v1,8,no
v2,1,Yes
v2,2,no
v2,3,
v2,4,n
v2,5,same
v2,6,no
v2,7,no
"""


def test_study_score_reads_answers_against_the_key_with_wilson_intervals(tmp_path):
    """Hand-scored: anonymized 5 of 7 answered right, control 6 of 7, 2 cells unanswered. Wilson 95%:
    5/7 -> 0.3589 .. 0.9178; 6/7 -> 0.4869 .. 0.9743 (z = 1.96)."""
    (tmp_path / ANSWER_KEY).write_text(STUDY_KEY)
    (tmp_path / "answers.csv").write_text(ANSWERS)
    result = cli("audit", "study-score", tmp_path / "answers.csv", "--json")
    assert result.exit_code == 0, result.output
    score = json.loads(result.output)
    assert (score["volunteers"], score["unanswered"]) == (2, 2)
    assert (score["anonymized"]["right"], score["anonymized"]["answered"]) == (5, 7)
    assert (score["control"]["right"], score["control"]["answered"]) == (6, 7)
    assert score["anonymized"]["ci95"] == pytest.approx([0.3589, 0.9178], abs=1e-4)
    assert score["control"]["ci95"] == pytest.approx([0.4869, 0.9743], abs=1e-4)
    (tmp_path / "bad.csv").write_text("pair,answer\n9,yes\n")
    bad = cli("audit", "study-score", tmp_path / "bad.csv", "--key", tmp_path / ANSWER_KEY)
    assert bad.exit_code != 0 and "bad.csv" in bad.output and "not in the answer key" in bad.output
    (tmp_path / "maybe.csv").write_text("pair,answer\n1,maybe\n")
    maybe = cli("audit", "study-score", tmp_path / "maybe.csv", "--key", tmp_path / ANSWER_KEY)
    assert maybe.exit_code != 0 and "line 2" in maybe.output and "neither yes nor no" in maybe.output
