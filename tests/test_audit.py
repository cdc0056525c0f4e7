"""The release audit: re-identification, missed faces, metadata leaks, quality and the gate, on real photos.

Real photos come from ../shared (skipped with the reason where absent). Every audit here uses dlib's
HOG detector and small subsets, so the file runs in well under three minutes on two CPU cores.
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from anonymize.audit import AuditConfig, AuditError, Thresholds, default_audit_dir, run_audit
from anonymize.audit.format import rank1_sentence
from anonymize.audit.report import AFTER_SERIES, POSSIBLE_COLOUR, POSSIBLE_SERIES, render_report, whole_with_box_jpeg
from anonymize.audit.summary import AuditSummary
from anonymize.audit.faces import match_boxes
from anonymize.audit.fid import FID_ARTEFACT, feature_statistics, fid_from_features, frechet_distance
from anonymize.audit.missed import region_change
from anonymize.metrics.quality import PSNR_IDENTICAL_DB, outside_faces_mask, psnr, ssim
from anonymize.audit.reid import identify, identity_separation
from anonymize.cli import _register_commands, app
from anonymize.faces.choose import choose_audit_detector
from anonymize.io.decode import decode_image
from anonymize.io.manifest import read_manifest
from anonymize.io.metadata import metadata_beyond_icc, metadata_of
from anonymize.io.write import write_image
from anonymize.models.inception import FidInceptionV3
from anonymize.run import run, run_config
from anonymize.weights import WeightsStore

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PORTRAITS = SHARED / "data" / "portraits"
CELEBA = SHARED / "data" / "celeba-ids"
# Eight portraits, ten faces: two with two people, several with EXIF/GPS/XMP/IPTC, a PNG, clean ones.
PORTRAIT_SUBSET = [
    "alex_lacamoire_2.jpg", "biden_2.jpg", "kit_harington_2.jpg", "lin_manuel_miranda.png",
    "multi_kit_with_rose.jpg", "multi_two_people.jpg", "obama_1.jpg", "rose_leslie_2.jpg",
]  # fmt: skip
DETECTOR = "dlib-hog"


def require_shared() -> None:
    if not (PORTRAITS.is_dir() and CELEBA.is_dir()):
        pytest.skip(f"{SHARED / 'data'} is absent: the audit tests need the real photos (portraits, celeba-ids)")


def page_text(page: str) -> str:
    """What a reader sees of a report: no style, no markup, entities decoded."""
    text = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def assert_the_report_agrees_with_itself(page: str, summary: AuditSummary) -> None:
    """The page's histogram counts the faces the cards count, it prints no Python value, its unavailable
    instruments are one line without --trust-unverified, and its rank-1 sentence is the summary's."""
    text = page_text(page)
    assert not re.search(r"\b(None|True|False)\b", text), re.search(r".{60}\b(None|True|False)\b.{20}", text)
    assert f"{AFTER_SERIES} (n = {summary.faces})" in text
    assert f'<div class="label">Faces audited</div><div class="value">{summary.faces}</div>' in page
    assert "--trust-unverified" not in page
    unavailable = re.findall(r'<p class="muted" id="unavailable">([^<]*)</p>', page)
    assert len(unavailable) == 1 and "<td>unavailable (no " not in page
    if summary.instruments_unavailable:
        assert "figures unavailable, their instruments are not installed: missing" in unavailable[0]
        assert "`anonymize weights fetch " in unavailable[0]
    assert html.escape(summary.reid.rank1_meaning) in page


def copy_files(sources: list[Path], destination: Path, relative_to: Path) -> Path:
    """Byte-for-byte copies (shutil.copy), keeping the relative layout."""
    for source in sources:
        target = destination / source.relative_to(relative_to)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return destination


def audit(original: Path, anonymized: Path, tmp: Path, **overrides) -> object:
    settings = {"detector": DETECTOR, "weights_dir": tmp / "weights", "device": "cpu", "report_dir": None, **overrides}
    return run_audit(AuditConfig(original, anonymized, **settings))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_shared()
    root = tmp_path_factory.mktemp("audit")
    (root / "weights").mkdir()
    return root


@pytest.fixture(scope="module")
def portraits(workspace: Path) -> Path:
    return copy_files([PORTRAITS / name for name in PORTRAIT_SUBSET], workspace / "portraits", PORTRAITS)


@pytest.fixture(scope="module")
def blurred(workspace: Path, portraits: Path) -> Path:
    out = workspace / "blurred"
    # sigma 0.12: with the face region that covers the whole face (ellipse + box down to the chin), the
    # default 0.08 leaves alex_lacamoire_2 at dlib distance 0.582 (his hair and head outline stay), just
    # under the 0.6 threshold; 0.12 gives 0.614 and every other face >= 0.66.
    run(run_config(portraits, out, method="blur", method_options={"sigma": "0.12"}, detector=DETECTOR, device="cpu",
                  weights_dir=workspace / "weights"))
    return out


@pytest.fixture(scope="module")
def celeba(workspace: Path) -> Path:
    """Three photos of each of the five CelebA identities, in identity folders."""
    photos = [photo for identity in sorted(CELEBA.iterdir()) for photo in sorted(identity.glob("*.jpg"))[:3]]
    return copy_files(photos, workspace / "celeba", CELEBA)


# ---- real photos ----------------------------------------------------------------------------------


def test_identity_distances_of_celeba_ids_separate_same_and_different_people(workspace, celeba):
    out = workspace / "celeba-blurred"
    run(run_config(celeba, out, method="blur", aligned=True, device="cpu", weights_dir=workspace / "weights"))
    result = audit(celeba, out, workspace)
    check = result.summary.identity_check
    assert result.summary.identity_labels == "folders" and result.summary.aligned is True  # from the manifest
    assert check.available and check.identities == 5 and check.faces == 15
    assert check.same_pairs == 15 and check.different_pairs == 90
    assert check.mean_same < 0.6 <= check.mean_different
    assert check.roc_auc > 0.95 and check.separated
    assert result.summary.reid.rank1_chance == pytest.approx(3 / 15)
    # With identity labels the JSON holds the separation and the labelled protocols (keys as the audit always wrote them).
    written = result.summary.to_json()
    assert list(written["identity_check"]) == [
        "available", "identities", "faces", "same_pairs", "different_pairs", "mean_same", "mean_different", "roc_auc",
        "same_below_threshold", "different_above_threshold", "threshold", "separated"]
    assert list(written["recognisers"]["dlib"]) == [
        "instrument", "threshold", "faces", "verification_rate", "rank1_rate", "mean_rank", "gallery", "different_person_pairs",
        "tpr_at_far", "parrot"]
    assert list(written["recognisers"]["dlib"]["tpr_at_far"]) == ["0.001", "0.01", "0.1"]
    assert list(written["recognisers"]["dlib"]["tpr_at_far"]["0.1"]) == ["far", "threshold", "tpr", "realised_far", "resolved"]
    assert list(written["recognisers"]["dlib"]["parrot"]) == ["probes", "rank1_rate", "mean_rank", "chance"]
    assert AuditSummary.from_json(written).to_json() == written
    assert {row["identity"] for row in result.rows} == {"0", "1", "2", "3", "4"}


def test_an_unmodified_copy_of_portraits_fails_the_gate(workspace, portraits):
    copy = copy_files(sorted(portraits.iterdir()), workspace / "copy", portraits)
    result = audit(portraits, copy, workspace)
    summary = result.summary
    with_metadata = {name for name in PORTRAIT_SUBSET if metadata_beyond_icc(metadata_of(portraits / name))}
    assert summary.faces == 10 and summary.identical_copies == len(PORTRAIT_SUBSET)
    assert summary.reid.verification_rate == 1.0 and summary.reid.rank1_rate == 1.0
    assert summary.missed_faces.count == 10
    assert set(summary.metadata.files) == with_metadata and len(with_metadata) >= 5
    assert "GPS" in summary.metadata.files["alex_lacamoire_2.jpg"]
    assert not result.passed
    assert [text.split(" ")[0] for text in result.crossed] == ["re-identification", "10", f"{len(with_metadata)}"]
    attributes = summary.attributes  # the same pixels give the same estimates: everything preserved, nothing gained
    assert attributes.available and attributes.source == "landmarks" and attributes.faces == 10
    assert set(attributes.preservation.per_attribute.values()) == {1.0}
    assert attributes.release == attributes.originals and attributes.release.faces == 10
    assert attributes.unique_share == attributes.unique_share_originals
    page = render_report(result, AuditConfig(portraits, copy), None)
    assert_the_report_agrees_with_itself(page, summary)
    assert "det RetinaFace" in page_text(page).split("figures unavailable")[1]  # no RetinaFace weights in this store


def test_a_blurred_run_passes_the_reid_threshold_and_the_metadata_check(workspace, portraits, blurred):
    result = audit(portraits, blurred, workspace)
    summary = result.summary
    manifest_faces = [row for row in read_manifest(blurred / "manifest.parquet")[0].to_pylist() if row["face_index"] is not None]
    assert summary.pairing == "manifest" and summary.faces == len(manifest_faces) == 10
    assert summary.reid.verification_rate <= 0.05 and summary.reid.min_distance > 0.6
    assert summary.metadata.leaks == 0 and summary.missed_faces.count == 0
    assert summary.unaudited.count == 0 and result.passed and result.crossed == []
    assert summary.quality.psnr_outside_db > 40 and summary.quality.ssim_outside > 0.98
    assert summary.attributes.release.faces == 10  # k / l / t of the release, from the blurred faces
    assert summary.attributes.release.quasi_identifiers == ["Arched_Eyebrows", "Big_Lips", "Big_Nose", "Narrow_Eyes"]
    assert summary.quality.fid is None
    assert summary.quality.fid_status.startswith(
        "unavailable (no Inception weights: put pt_inception-2015-12-05-6726825d.pth from https://github.com/mseitzer/pytorch-fid/"
    )
    assert str(workspace / "weights" / "inception") in summary.quality.fid_status


def test_a_face_restored_from_the_original_is_reported_as_missed(workspace, portraits, blurred):
    skipped = workspace / "skipped-face"
    shutil.copytree(blurred, skipped)
    rows = [row for row in read_manifest(skipped / "manifest.parquet")[0].to_pylist() if row["source_path"] == "multi_two_people.jpg"]
    box = rows[1]["box"]
    original = decode_image(portraits / "multi_two_people.jpg")
    output = decode_image(skipped / "multi_two_people.jpg").rgb.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    grow_x, grow_y = (x1 - x0) // 2, (y1 - y0) // 2
    region = (slice(max(y0 - grow_y, 0), y1 + grow_y), slice(max(x0 - grow_x, 0), x1 + grow_x))
    output[region] = original.rgb[region]  # as if the run had not seen this face
    write_image(original, output, skipped / "multi_two_people.jpg")

    result = audit(portraits, skipped, workspace)
    missed = [row for row in result.rows if row["missed"]]
    assert [(row["source_path"], row["box"]) for row in missed] == [("multi_two_people.jpg", pytest.approx(box, abs=1))]
    assert missed[0]["reidentified"] and missed[0]["region_change"] < 4.0
    assert result.summary.missed_faces.faces == [f"multi_two_people.jpg#{missed[0]['face_index']}"]
    assert result.summary.metadata.leaks == 0
    assert not result.passed and "1 missed face(s) left unchanged > max 0" in result.crossed


def test_the_cli_is_a_gate_that_exits_3_on_fail_and_writes_its_files_beside_the_anonymized_folder(workspace, portraits):
    copy = copy_files([portraits / "obama_1.jpg", portraits / "biden_2.jpg"], workspace / "cli-copy", portraits)
    _register_commands()
    args = ["audit", str(portraits), str(copy), "--detector", DETECTOR, "--weights-dir", str(workspace / "weights"), "--device", "cpu"]
    failed = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)  # no flag: a FAIL stops the job
    assert failed.exit_code == 3
    summary = json.loads(failed.stdout)  # the whole summary, still
    assert summary["passed"] is False and summary["faces"] == 2 and summary["metadata"]["leaks"] == 1
    audit_dir = default_audit_dir(copy)
    assert audit_dir == workspace / "cli-copy-audit"
    table = pq.read_table(audit_dir / "audit.parquet")
    assert table.num_rows == 2 and set(table.column("source_path").to_pylist()) == {"obama_1.jpg", "biden_2.jpg"}
    assert json.loads((audit_dir / "audit-summary.json").read_text())["crossed"] == summary["crossed"]
    assert not (portraits / "audit.parquet").exists() and not list(copy.glob("audit*"))

    printed = CliRunner().invoke(app, [*args, "--report-only"], catch_exceptions=False)  # the old behaviour, on request
    assert printed.exit_code == 0 and "FAIL" in printed.stdout
    # The table names the method and shows the figure the verdict gates on, with its limit.
    words = " ".join(printed.stdout.replace("│", " ").split())  # the table wraps its cells at the terminal's width
    assert "method audited unknown (no run manifest" in words and "(gated, max" in words and "100.0% by dlib" in words
    old_script = CliRunner().invoke(app, [*args, "--quiet", "--fail-on-leak", "--report-only"], catch_exceptions=False)
    assert old_script.exit_code == 3  # --fail-on-leak is still accepted (and wins)

    lenient = CliRunner().invoke(app, [*args, "--quiet", "--max-reid-rate", "1", "--max-missed-faces", "5", "--max-metadata-leaks", "1"],
                                 catch_exceptions=False)
    assert lenient.exit_code == 0

    broken = CliRunner().invoke(app, ["audit", str(portraits), str(workspace / "no-such-folder"), "--json"], catch_exceptions=False)
    assert broken.exit_code == 2
    error = json.loads(broken.stdout)
    assert set(error) == {"error", "exit_code"} and error["exit_code"] == 2 and "no-such-folder" in error["error"]


def test_readmes_first_screen_and_ci_recipe_show_the_gate():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    first_run = readme.split("## First run", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^anonymize audit \S+ \S+.* && publish", first_run, flags=re.M)
    assert "exits 0 on PASS, 3 on FAIL" in first_run and "--report-only" in first_run
    recipe = readme.split("### CI recipe", 1)[1].split("\n### ", 1)[0]
    assert "set -e" in recipe and re.search(r"^anonymize audit .*--json", recipe, flags=re.M)
    assert re.search(r"^publish ", recipe, flags=re.M) and '{"error": "...", "exit_code": 2}' in recipe
    assert "--fail-on-leak" not in first_run + recipe  # the gate needs no flag


def test_the_table_names_the_run_method_and_its_options(workspace, portraits, blurred):
    from anonymize.cli.audit import gated_row, method_audited

    summary = audit(portraits, blurred, workspace, write_files=False, attribute_source=None).summary
    assert method_audited(summary) == "blur (sigma=0.12)"
    label, value = gated_row(summary)
    assert label == "re-identification rate (gated, max 5%)" and value.startswith("0.0% by dlib, the worst judge (0 of 10 faces")


def test_audit_files_are_never_written_inside_the_original_or_anonymized_folder(workspace, portraits, blurred):
    with pytest.raises(AuditError, match="must not be the anonymized folder"):
        audit(portraits, portraits, workspace)
    for report in (portraits / "report", blurred / "report"):
        with pytest.raises(AuditError, match="must not be written inside"):
            audit(portraits, blurred, workspace, report_dir=report)
    _register_commands()
    result = CliRunner().invoke(app, ["audit", str(portraits), str(blurred), "--report", str(portraits / "r")])
    assert result.exit_code == 2 and "must not be written inside the original folder" in result.output
    assert not (portraits / "report").exists() and not (blurred / "report").exists()


def test_outputs_without_an_original_or_unreadable_fail_the_gate(workspace, portraits):
    anonymized = workspace / "strays"
    anonymized.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(anonymized / "not_in_the_originals.png")
    (anonymized / "biden_2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = audit(portraits, anonymized, workspace)
    assert result.summary.unaudited.count == 2 and result.summary.faces == 0
    assert result.summary.not_released == len(PORTRAIT_SUBSET) - 1
    assert result.crossed == ["2 released image(s) could not be audited (unreadable, or no original to compare with)"]


def test_fid_uses_the_inception_weights_only_once_they_are_trusted(workspace):
    originals = copy_files([photo for identity in ("0", "1") for photo in sorted((CELEBA / identity).glob("*.jpg"))[:2]],
                           workspace / "fid-originals", CELEBA)
    outputs = workspace / "fid-outputs"
    run(run_config(originals, outputs, method="blur", aligned=True, device="cpu", weights_dir=workspace / "fid-weights"))
    store = WeightsStore(workspace / "fid-weights")
    target = store.path(FID_ARTEFACT)
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FidInceptionV3().state_dict(), target)  # random weights: not the pinned file

    refused = audit(originals, outputs, workspace, weights_dir=workspace / "fid-weights")
    assert refused.summary.quality.fid is None
    assert refused.summary.quality.fid_status.startswith("unavailable (Inception weights not usable: inception_fid:")
    assert "corrupt" in refused.summary.quality.fid_status

    trusted = audit(originals, outputs, workspace, weights_dir=workspace / "fid-weights", trust_unverified=True)
    assert trusted.summary.quality.fid_status == "computed on 4 + 4 images"
    assert np.isfinite(trusted.summary.quality.fid) and trusted.summary.quality.fid > 0


def test_the_automatic_detector_is_the_strongest_ensemble_and_stronger_than_the_runs(workspace):
    if not (SHARED / "weights" / "retinaface_mobilenet0.25.pth").is_file():
        pytest.skip(f"{SHARED / 'weights'} holds no RetinaFace weights")
    store = WeightsStore(workspace / "detector-weights")
    without_retinaface = choose_audit_detector("auto", store, "mtcnn")
    assert (without_retinaface.name, without_retinaface.members) == ("ensemble", ("mtcnn", "dlib-hog"))
    target = store.path("retinaface_mobilenet0.25")
    target.parent.mkdir(parents=True)
    shutil.copyfile(SHARED / "weights" / "retinaface_mobilenet0.25.pth", target)
    for run_detector in ("retinaface", "ensemble(retinaface+mtcnn)", "dlib-hog"):
        choice = choose_audit_detector("auto", store, run_detector)
        assert (choice.name, choice.members, choice.recall_first) == ("ensemble", ("retinaface", "mtcnn", "dlib-hog"), True)
        assert f"stronger than the run's {run_detector}" in choice.reason
    assert "unknown" in choose_audit_detector("auto", store, None).reason
    named = choose_audit_detector("dlib-cnn", store, "retinaface")
    assert (named.name, named.reason) == ("dlib-cnn", "chosen by the user")
    with pytest.raises(ValueError, match="unknown detector 'haar': choose auto or one of"):
        choose_audit_detector("haar", store, None)


def test_faces_seen_by_one_detector_only_are_possible_faces_kept_out_of_reidentification(workspace, tiny_weights):
    # dogs.jpg: RetinaFace at its recall-first threshold takes dog heads for faces; MTCNN and dlib mostly do not
    # (dlib agrees on one dog, which then counts as a face: two detectors and no way to tell).
    if tiny_weights.store().status("retinaface_mobilenet0.25") != "present":
        pytest.skip("RetinaFace weights are not in ../shared")
    groups = SHARED / "data" / "groups"
    originals = copy_files([groups / "dogs.jpg", groups / "2008_002506.jpg"], workspace / "dogs-and-people", groups)
    copy = copy_files(sorted(originals.iterdir()), workspace / "dogs-and-people-copy", originals)
    report = workspace / "dogs-report"
    result = audit(originals, copy, workspace, detector="auto", weights_dir=tiny_weights.weights_dir, report_dir=report)
    summary = result.summary
    assert summary.detector == "ensemble(retinaface+mtcnn+dlib-hog)"
    faces = [row for row in result.rows if row["face_index"] is not None]
    possible = [row for row in faces if row["face_status"] == "possible face"]
    confirmed = [row for row in faces if row["face_status"] == "face"]
    people = [row for row in confirmed if row["source_path"] == "2008_002506.jpg"]
    assert len(possible) >= 2 and {row["source_path"] for row in possible} == {"dogs.jpg"}
    assert all(row["reidentified"] is None and row["confirmed_by"] is None for row in possible)
    assert len(people) >= 3 and all(row["confirmed_by"] == "retinaface+mtcnn+dlib-hog" for row in people)
    # An unchanged copy: every confirmed face is missed and re-identified; possible faces are listed apart.
    assert summary.faces == len(confirmed) and summary.missed_faces.count == len(confirmed)
    assert summary.reid.reidentified == len(confirmed)
    listed = summary.possible_faces
    assert (listed.count, listed.unchanged, listed.faces) == (len(possible), len(possible), [f"dogs.jpg#{row['face_index']}" for row in possible])
    # without the face mesh (not in these weights) nothing rules them out: left unchanged, they fail the gate
    assert (listed.ruled_out, listed.counted) == (0, len(possible)) and listed.mesh.startswith("none: ")
    assert any(line.startswith(f"{len(possible)} possible face(s) left unchanged and not ruled out") for line in summary.crossed)
    page = (report / "index.html").read_text()
    assert "Possible faces" in page and page.count("whole original, face boxed") == min(len(confirmed), 8) + min(len(possible), 8)
    assert_the_report_agrees_with_itself(page, summary)
    # Possible faces: their own series in their own colour, and never badged "missed" (they are not gated).
    shown = [row for row in possible if row["identity_distance"] is not None]
    if shown:
        assert f"{POSSIBLE_SERIES} (n = {len(shown)})" in page_text(page) and f'stroke="{POSSIBLE_COLOUR}"' in page
    cases = re.findall(r'<div class="case">.*?</div></div>', page, flags=re.S)
    possible_cases = [case for case in cases if "possible face</span>" in case]
    assert len(possible_cases) == min(len(possible), 8)
    assert all("missed</span>" not in case and "left unchanged</span>" in case for case in possible_cases)
    assert sum("missed</span>" in case for case in cases) >= min(len(confirmed), 8)  # the missed section, at least
    assert "above chance" in summary.reid.rank1_meaning


def test_rank1_is_read_against_chance_in_a_plain_sentence():
    # 150 faces at 20 % chance: two binomial standard deviations are 2 * sqrt(0.2 * 0.8 / 150) = 6.5 points.
    above = rank1_sentence(0.327, 0.2, 150)
    assert above.startswith("32.7% of the anonymized faces") and "20.0% for a blind guess" in above and "above chance" in above
    assert "about chance (a blind guess reaches up to 26.5% on 150 faces)" in rank1_sentence(0.26, 0.2, 150)
    assert "not measured" in rank1_sentence(None, None, 0)
    # The sentence agrees with the figures beside it: 3 of 4 faces at 50 % chance is not "cannot tell", and
    # "even where no face passes the verification threshold" is said only when none does.
    few = rank1_sentence(0.75, 0.5, 4, identities=True, verified=1)
    assert "too few faces to tell rank-1 from chance" in few and "cannot tell" not in few
    assert "even where no face passes" in rank1_sentence(0.327, 0.2, 150, verified=0)
    assert "even where no face passes" not in rank1_sentence(0.327, 0.2, 150, verified=3)


def test_whole_image_thumbnails_show_the_face_boxed():
    image = np.full((1000, 2000, 3), 200, np.uint8)
    thumbnail = np.asarray(Image.open(io.BytesIO(whole_with_box_jpeg(image, (500, 400, 700, 600)))))
    assert thumbnail.shape[:2] == (240, 480)
    red = (thumbnail[..., 0] > 180) & (thumbnail[..., 1] < 100)
    assert red[96, 130:160].all() and not red[120, 140]  # the box's top edge is drawn, its inside is not


# ---- the measurements ---------------------------------------------------------------------------


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    mean_a, mean_b = np.zeros(3), np.array([1.0, 2.0, 2.0])
    cov_a, cov_b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    expected = 9.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0  # |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    full = rotation @ np.diag([1.0, 2.0, 3.0]) @ rotation.T
    assert frechet_distance(mean_a, full, mean_a, full) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_few_features_equals_the_covariance_route():
    rng = np.random.default_rng(0)
    few_a, few_b = rng.normal(size=(6, 40)), rng.normal(0.5, 2.0, size=(5, 40))  # fewer images than dimensions
    expected = frechet_distance(*feature_statistics(few_a), *feature_statistics(few_b))
    assert fid_from_features(few_a, few_b) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(few_a, few_a) == pytest.approx(0.0, abs=1e-9)


def test_psnr_and_ssim_outside_faces_ignore_what_changed_inside_them():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:120, 0:160]
    original = np.stack([x * 1.5, y * 2.0, (x + y) * 0.9], axis=2).astype(np.uint8)  # smooth, like a background
    output = original.copy()
    output[40:80, 60:100] = 0  # the "face" is repainted
    box = (60.0, 40.0, 100.0, 80.0)
    outside = outside_faces_mask(original.shape, [box])
    assert not outside[30:90, 40:120].any() and outside[:20].all()  # the box grown by half its size each side
    assert psnr(original, output, outside) == PSNR_IDENTICAL_DB
    assert ssim(original, output, outside) > 0.99
    noisy = np.clip(original.astype(int) + rng.integers(-20, 21, original.shape), 0, 255).astype(np.uint8)
    assert 20 < psnr(original, noisy, outside) < 30 and ssim(original, noisy, outside) < 0.9
    assert region_change(original, output, box) > 50 and region_change(original, original, box) == 0


def test_output_faces_are_matched_one_to_one_by_overlap():
    source = [(0, 0, 10, 10), (20, 0, 30, 10), (50, 50, 60, 60)]
    found = [(1, 1, 11, 11), (0, 0, 10, 10), (21, 0, 31, 10)]
    matched = match_boxes(source, found)
    assert matched[0] == pytest.approx(1.0) and matched[1] == pytest.approx(9 * 10 / (2 * 100 - 90)) and matched[2] is None


def test_rank1_counts_another_photo_of_the_same_person_only_when_identities_are_known():
    gallery = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    probes = np.array([[0.11, 0.0], [4.0, 4.0], [0.0, 0.2]])  # nearest: 1, 2, 0
    plain = identify(probes, gallery, own=[0, 1, 2])
    assert plain.nearest.tolist() == [1, 2, 0] and plain.hits.tolist() == [False, False, False]
    labelled = identify(probes, gallery, own=[0, 1, 2], labels=["a", "a", "b"])
    assert labelled.hits.tolist() == [True, False, False] and labelled.chance == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    separation = identity_separation(gallery, ["a", "a", "b"], threshold=0.6)
    assert separation.same_pairs == 1 and separation.roc_auc == 1.0 and separation.separated


def test_thresholds_default_to_a_strict_release_gate():
    assert Thresholds() == Thresholds(max_reid_rate=0.05, max_rank1_rate=None, min_detection_rate=0.0,
                                      max_missed_faces=0, max_metadata_leaks=0)


# ---- the summary's JSON ---------------------------------------------------------------------------


def _leaves(names: str) -> dict:
    return dict.fromkeys(names.split())


ANY_MAP = {"*": None}  # a map whose keys are data (file names, attribute names, ...)
RELEASE_KEYS = {**_leaves("faces quasi_identifiers sensitive k classes"), "class_sizes": ANY_MAP,
                **_leaves("requested_k share_below_k unique_share distinct_l entropy_l"), "t": ANY_MAP}
# The key tree of audit-summary.json for a machine-goal audit without identity labels, written by hand from what
# the audit wrote before its summary was typed (anonymize 0.1.0): same keys, same order. None: a value;
# {"*": shape}: a map keyed by data, each entry of that shape; [shape]: a list of entries of that shape.
SUMMARY_KEYS = {
    **_leaves("anonymize_version created_at original_dir anonymized_dir manifest_path pairing"),
    "run": {"method": None, "options": ANY_MAP, "region": None},
    **_leaves("detector detector_reason aligned identity_labels distance_threshold unchanged_threshold"),
    "thresholds": _leaves("max_reid_rate max_rank1_rate min_detection_rate max_missed_faces max_metadata_leaks min_match_rate "
                          "max_face_psnr_db max_face_ssim max_possible_faces"),
    **_leaves("not_released missing_outputs outputs"),
    "metadata": {"leaks": None, "files": ANY_MAP},
    **_leaves("identical_copies size_mismatches"),
    "quality": _leaves("psnr_outside_db ssim_outside images_measured fid fid_status farl_frechet_proxy farl_frechet_proxy_status"),
    "unaudited": {"count": None, "files": ANY_MAP},
    "faces": None,
    "detection": _leaves("detected rate"),
    "reid": _leaves("reidentified verification_rate rank1_hits rank1_rate mean_distance median_distance min_distance rank1_chance "
                    "rank1_meaning"),
    "face_quality": _leaves("psnr_face_db ssim_face lpips_face ms_ssim_face"),
    "missed_faces": _leaves("count faces"),
    "possible_faces": _leaves("count unchanged faces ruled_out counted mesh"),
    "identity_check": _leaves("available reason"),
    "warnings": None,
    "recognisers": {"dlib": _leaves("instrument threshold faces verification_rate rank1_rate mean_rank gallery")},
    "judges": {**_leaves("names reason white_box"),
               "per_judge": {"dlib": _leaves("verification_rate faces matched threshold instrument")}, "worst": None},
    **_leaves("privacy_goal privacy_goal_source"),
    "recogniser_roles": _leaves("white_box judges judge judge_reason"),
    "look_alike": _leaves("count faces max_psnr_db max_ssim"),
    "instruments_unavailable": {"*": _leaves("instrument status")},
    "detection_by_detector": {"*": _leaves("detected faces rate")},
    "attributes": {**_leaves("available source heuristic faces estimated requested_k"), "release": RELEASE_KEYS,
                   "originals": RELEASE_KEYS, "preservation": {"per_attribute": ANY_MAP, "mean": None},
                   **_leaves("unique_share unique_share_originals")},
    "figures": [_leaves("key label value kind instrument threshold protocol status")],
    "content_copies": _leaves("outputs originals measures copies count unread"),  # issue 27: by content, not the manifest
    **_leaves("passed crossed parquet_path report_path"),
}


def assert_key_tree(value: object, expected: object, where: str = "summary") -> None:
    """``value`` has exactly the keys of ``expected``, in its order, all the way down."""
    if isinstance(expected, dict) and list(expected) == ["*"]:
        assert isinstance(value, dict), where
        for key, item in value.items():
            assert_key_tree(item, expected["*"], f"{where}.{key}")
    elif isinstance(expected, dict):
        assert isinstance(value, dict) and list(value) == list(expected), (where, list(value) if isinstance(value, dict) else value)
        for key, item in expected.items():
            assert_key_tree(value[key], item, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(value, list) and value, where
        for item in value:
            assert_key_tree(item, expected[0], f"{where}[]")


def test_the_summary_on_disk_keeps_its_keys_and_reads_back_exactly(workspace, portraits, blurred):
    report = workspace / "summary-report"
    result = audit(portraits, blurred, workspace, report_dir=report)
    on_disk = json.loads((report / "audit-summary.json").read_text(encoding="utf-8"))
    assert_key_tree(on_disk, SUMMARY_KEYS)
    assert on_disk == result.summary.to_json()
    assert on_disk["parquet_path"] == str(report / "audit.parquet") and on_disk["report_path"] == str(report / "index.html")
    read_back = AuditSummary.from_json(on_disk)
    assert read_back == result.summary and read_back.to_json() == on_disk
    assert AuditSummary.from_json(result.summary.to_json()).to_json() == result.summary.to_json()
    # The Parquet's copy was written before the files, so it never held their paths.
    embedded = json.loads(pq.read_schema(report / "audit.parquet").metadata[b"audit_summary"])
    assert embedded == {key: value for key, value in on_disk.items() if key not in ("parquet_path", "report_path")}
    # Nothing written: no paths in the summary either.
    unwritten = audit(portraits, blurred, workspace, write_files=False).summary.to_json()
    assert list(unwritten)[-2:] == ["passed", "crossed"] and AuditSummary.from_json(unwritten).to_json() == unwritten


def test_an_unknown_audit_detector_is_the_audits_one_line_error(workspace, portraits):
    copy = copy_files([portraits / "obama_1.jpg"], workspace / "haar-copy", portraits)
    with pytest.raises(AuditError, match="unknown detector 'haar': choose auto or one of"):
        audit(portraits, copy, workspace, detector="haar")
