"""The audit in the papers' language: their instruments and protocols, and `audit compare` across runs.

The real-data part runs blur, pixelate and mask once each on ten photos of each of the five CelebA
identities in ../shared (skipped where absent) and audits them with the real instruments (dlib,
MTCNN, RetinaFace when its weights are in ../shared); the optional instruments (FaceNet, LPIPS,
FID, the FaRL proxy) are checked as "unavailable" there, and as numbers on random stand-ins pinned
in a test lock. The protocols are checked on small hand-computed examples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anonymize.audit import AuditConfig, AuditError, run_audit
from anonymize.audit.compare import find_summary, load_comparison, privacy_utility_svg
from anonymize.audit.identities import read_identities
from anonymize.audit.protocols import parrot_identification, tpr_at_far, true_identity_ranks
from anonymize.audit.summary import PaperFigure
from anonymize.cli import _register_commands, app
from anonymize.models.checkpoint import CheckpointError
from anonymize.models.legacy.facenet import load_facenet
from anonymize.models.lpips_alex import LpipsDistance
from anonymize.run import run, run_config
from anonymize.weights import WeightsStore, read_lock

PHOTOS_PER_IDENTITY = 10
METHODS = ("blur", "pixelate", "mask")
OPTIONAL_COLUMNS = ("reid.facenet-casia.tpr@0.001", "reid.facenet-vggface2.tpr@0.001", "quality.lpips_face", "quality.fid",
                    "quality.farl_proxy")


def copy_subset(source: Path, destination: Path, per_identity: int, identities: int | None = None) -> Path:
    for identity in sorted(source.iterdir())[:identities]:
        for photo in sorted(identity.glob("*.jpg"))[:per_identity]:
            (destination / identity.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, destination / identity.name / photo.name)
    return destination


@pytest.fixture(scope="module")
def celeba_runs(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Each method run once on 5 x 10 CelebA photos and audited (dlib HOG finds the faces; default audit dir)."""
    root = tmp_path_factory.mktemp("papers")
    weights = root / "weights"
    retinaface = shared_dir / "weights" / "retinaface_mobilenet0.25.pth"
    if retinaface.is_file():
        target = WeightsStore(weights).path("retinaface_mobilenet0.25")
        target.parent.mkdir(parents=True)
        shutil.copyfile(retinaface, target)
    originals = copy_subset(shared_dir / "data" / "celeba-ids", root / "celeba", PHOTOS_PER_IDENTITY)
    audits = {}
    for method in METHODS:
        out = root / method
        run(run_config(originals, out, method=method, aligned=True, device="cpu", weights_dir=weights))
        audits[method] = run_audit(AuditConfig(originals, out, detector="dlib-hog", weights_dir=weights, device="cpu"))
    return {"root": root, "originals": originals, "weights": weights, "audits": audits}


def figure(result, key: str) -> PaperFigure:
    return {item.key: item for item in result.summary.figures}[key]


# ---- real photos, real instruments ------------------------------------------------------------------


def test_every_figure_names_its_instrument_threshold_and_protocol(celeba_runs):
    for result in celeba_runs["audits"].values():
        for item in result.summary.figures:
            assert item.instrument and item.threshold and item.protocol, item.key
            assert (item.value is None) == (item.status != "measured"), item.key
    blur = celeba_runs["audits"]["blur"]
    assert "distance < 0.6" in figure(blur, "reid.dlib.verification").threshold
    assert "MTCNN" in figure(blur, "detection.mtcnn").instrument and "0.85" in figure(blur, "detection.mtcnn").threshold
    tpr = figure(blur, "reid.dlib.tpr@0.01")
    assert "set at FAR 0.01 on 1000 different-person pairs of the originals" in tpr.threshold  # 5 x 10 photos: 50*40/2
    assert "NOT comparable to published FID" in figure(blur, "quality.farl_proxy").instrument


def test_without_their_weights_facenet_lpips_fid_and_the_farl_proxy_are_unavailable(celeba_runs):
    for result in celeba_runs["audits"].values():
        for key in OPTIONAL_COLUMNS:
            assert figure(result, key).value is None
            assert figure(result, key).status.startswith("unavailable ("), key
    assert "--trust-unverified" in figure(celeba_runs["audits"]["mask"], "reid.facenet-vggface2.verification").status


def test_mask_hides_identity_better_than_pixelate_and_pixelate_better_than_blur_at_rank_1(celeba_runs):
    audits = celeba_runs["audits"]
    for result in audits.values():
        assert result.summary.recognisers["dlib"].faces == 50
        assert result.summary.identity_check.separated
    # Measured (README, Audit): rank-1 18 % < 24 % < 36 % against 20 % chance (10 of 50 gallery faces are the
    # person's). TPR at FAR 0.1 runs the other way (mask 60 %, pixelate 56 %, blur 48 %): a grey face region leaves
    # hair, jaw line and background, on which dlib's descriptor of a masked face then rests.
    rank1 = {method: figure(audits[method], "reid.dlib.rank1").value for method in METHODS}
    assert rank1["mask"] < rank1["pixelate"] < rank1["blur"]
    assert all(figure(audits[method], "reid.dlib.verification").value <= 0.02 for method in METHODS)
    ssim = {method: figure(audits[method], "quality.ssim_face").value for method in METHODS}
    assert ssim["mask"] < ssim["blur"]  # a grey mask keeps less of the face than a blur
    ms_ssim = {method: figure(audits[method], "quality.ms_ssim_face").value for method in METHODS}
    assert ms_ssim["mask"] < ms_ssim["blur"] < 1  # AnonymousNet's Table 1 orders them so too (0.82 < 0.88)


def test_compare_prints_one_row_per_run_and_renders_the_table_with_a_plot(celeba_runs):
    _register_commands()
    root = celeba_runs["root"]
    report = root / "compare-report"
    runs = [str(root / method) for method in METHODS]
    result = CliRunner().invoke(app, ["audit", "compare", *runs, "--report", str(report)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "det dlib" in line)
    for column in ("det MTCNN", "dlib verif", "dlib TPR@0.001", "dlib rank-1", "SSIM face", "PSNR face dB",
                   "FaceNet-CASIA TPR@0.001", "LPIPS face", "FID"):
        assert column in header
    rows = {method: next(line for line in lines if line.startswith(f"│ {method} ")) for method in METHODS}
    assert all("unavailable" in row for row in rows.values())
    assert any(line.startswith("dlib TPR@0.01: dlib ResNet") and "threshold: distance <" in line for line in lines)
    page = (report / "compare.html").read_text(encoding="utf-8")
    assert page.count("<tr>") == 1 + 3 and "<svg" in page and "privacy: lower is better" in page
    as_json = CliRunner().invoke(app, ["audit", "compare", *runs, "--json"])
    labels = [entry["label"] for entry in json.loads(as_json.output)["runs"]]
    assert labels == list(METHODS)


def test_the_audit_shorthand_still_audits_a_folder_pair(celeba_runs, tmp_path):
    _register_commands()
    root = celeba_runs["root"]
    result = CliRunner().invoke(app, ["audit", str(celeba_runs["originals"]), str(root / "mask"), "--detector", "dlib-hog",
                                      "--device", "cpu", "--weights-dir", str(celeba_runs["weights"]), "--no-fid",
                                      "--summary", str(tmp_path / "s.json"), "--out-parquet", str(tmp_path / "a.parquet"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["run"]["method"] == "mask"


def test_compare_says_which_run_has_no_audit(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(AuditError, match="no audit found .* run `anonymize audit ORIGINAL_DIR RUN_DIR` first"):
        find_summary(tmp_path / "run")


# ---- stand-ins for the optional instruments -----------------------------------------------------------


def test_with_pinned_stand_ins_facenet_lpips_fid_and_the_farl_proxy_give_numbers(shared_dir, audit_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(audit_weights.lock_path))
    originals = copy_subset(shared_dir / "data" / "celeba-ids", tmp_path / "celeba", per_identity=2, identities=2)
    out = tmp_path / "blur"
    run(run_config(originals, out, method="blur", aligned=True, device="cpu", weights_dir=tmp_path / "run-weights"))
    result = run_audit(AuditConfig(originals, out, detector="dlib-hog", weights_dir=audit_weights.weights_dir, device="cpu",
                                   output_detectors=("dlib-hog",)))
    for key in (*OPTIONAL_COLUMNS, "reid.facenet-casia.rank1", "reid.facenet-vggface2.verification"):
        assert figure(result, key).status == "measured" and np.isfinite(figure(result, key).value), key
    assert figure(result, "quality.lpips_face").value > 0
    assert all(row["facenet_casia_distance"] is not None for row in result.rows if row["face_index"] is not None)
    assert result.summary.recognisers["facenet-vggface2"].threshold == 1.1


def test_lpips_of_a_face_with_itself_is_zero_and_grows_with_the_change(audit_weights):
    store = audit_weights.store()
    lpips = LpipsDistance(store.require("lpips_alex_linear"), store.require("torchvision_alexnet"))
    face = np.random.default_rng(0).integers(0, 256, (80, 70, 3), dtype=np.uint8)
    same, slightly, inverted = lpips.distances([face, face, face], [face, np.clip(face.astype(int) + 20, 0, 255).astype(np.uint8), 255 - face])
    assert same == pytest.approx(0.0, abs=1e-6) and 0 < slightly < inverted


def test_facenet_refuses_a_file_that_is_not_an_inception_resnet_state_dict(tmp_path):
    import torch

    path = tmp_path / "not-facenet.pt"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no 'logits.weight'"):
        load_facenet(path)


def test_the_lock_pins_facenet_by_url_and_says_no_hash_is_published():
    lock = read_lock()
    for name, release in (("facenet_casia_webface", "20180408-102900-casia-webface.pt"), ("facenet_vggface2", "20180402-114759-vggface2.pt")):
        assert lock[name].url == f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{release}"
        assert lock[name].sha256 is None and "no published hash" in lock[name].note
    assert lock["lpips_alex_linear"].sha256 is not None and lock["lpips_alex_linear"].source == "package:lpips"


# ---- the protocols, by hand ---------------------------------------------------------------------------


def test_tpr_at_far_sets_the_threshold_on_different_person_pairs():
    impostor = np.array([0.9, 0.5, 0.7, 0.8, 1.0, 0.6, 1.1, 1.2, 1.3, 1.4])  # sorted: 0.5 0.6 0.7 ... 1.4
    genuine = np.array([0.4, 0.55, 0.65, 0.75, 2.0])
    # FAR 0.1 on 10 pairs: k = 1, threshold 0.6 (one impostor, 0.5, below it): accepts 0.4 and 0.55
    result = tpr_at_far(genuine, impostor, 0.1)
    assert (result.threshold, result.tpr, result.realised_far, result.resolved) == (0.6, 0.4, 0.1, True)
    # FAR 0.3: k = 3, threshold 0.8, three impostors below; accepts 0.4, 0.55, 0.65, 0.75
    assert tpr_at_far(genuine, impostor, 0.3).tpr == 0.8
    # FAR 0.01 needs 100 pairs: k = 0, threshold 0.5 (no impostor below), flagged as not resolved
    small = tpr_at_far(genuine, impostor, 0.01)
    assert (small.threshold, small.tpr, small.realised_far, small.resolved) == (0.5, 0.2, 0.0, False)


def test_the_true_identity_rank_counts_other_people_closer_than_the_nearest_own_photo():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    labels = ["a", "a", "b", "c"]
    probes = np.array([[2.9, 0.0], [0.2, 0.0], [5.0, 0.0]])  # originals 0 (a), 1 (a), 3 (c)
    # probe 0: nearest a is 1 (1.9), b at 0.1 is closer -> rank 2; probe 1: a at 0.2 -> rank 1; probe 2: c at 1.0, b at 2.0 -> 1
    assert true_identity_ranks(probes, gallery, [0, 1, 3], labels).tolist() == [2, 1, 1]
    # without labels only the own original counts: probe 1's own is 1 (0.8), gallery 0 (0.2) is closer -> rank 2
    assert true_identity_ranks(probes, gallery, [0, 1, 3]).tolist() == [3, 2, 1]


def test_parrot_identification_finds_the_nearest_other_anonymized_face_of_the_same_person():
    anonymized = np.array([[0.0], [1.0], [5.0], [5.5], [9.0]])
    labels = ["a", "a", "b", "b", "c"]  # c has no other photo: not a probe
    result = parrot_identification(anonymized, labels)
    assert result.probes == 4 and result.rank1_rate == 1.0 and result.mean_rank == 1.0
    assert result.chance == pytest.approx(1 / 4)
    swapped = parrot_identification(anonymized, ["a", "b", "b", "a", "c"])
    # a@0: own a@5.5 (5.5), b@1 and b@5 closer -> 3; b@1: own b@5 (4), a@0 closer -> 2;
    # b@5: own b@1 (4), a@5.5 closer (c@9, at 4, is a tie, not closer) -> 2; a@5.5: own a@0 (5.5), b@5, b@1, c@9 closer -> 4
    assert swapped.rank1_rate == 0.0 and swapped.mean_rank == 2.75


def test_an_identities_file_labels_originals_and_bad_lines_name_the_file_and_line(tmp_path):
    good = tmp_path / "ids.csv"
    good.write_text("path,identity\n# comment\na.jpg,alice\nsub/b.jpg\tbob\n", encoding="utf-8")
    assert read_identities(good, ["a.jpg", "sub/b.jpg", "c.jpg"]) == {"a.jpg": "alice", "sub/b.jpg": "bob"}
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,alice\nno-identity-here\n", encoding="utf-8")
    with pytest.raises(AuditError, match=r"bad.csv:2: expected '<path>,<identity>'"):
        read_identities(bad, ["a.jpg"])
    with pytest.raises(AuditError, match="names none of the 1 originals"):
        read_identities(good, ["elsewhere.jpg"])


def test_the_privacy_utility_plot_places_one_labelled_point_per_run(tmp_path):
    for name, ssim, rank1 in (("blur", 0.8, 0.6), ("mask", 0.3, 0.1)):
        folder = tmp_path / name
        folder.mkdir()
        figures = [{"key": "quality.ssim_face", "label": "SSIM face", "value": ssim, "kind": "score", "instrument": "i",
                    "threshold": "-", "protocol": "p", "status": "measured"},
                   {"key": "reid.dlib.rank1", "label": "dlib rank-1", "value": rank1, "kind": "rate", "instrument": "i",
                    "threshold": "t", "protocol": "p", "status": "measured"}]
        (folder / "audit-summary.json").write_text(json.dumps({"run": {"method": name, "options": {}}, "figures": figures}))
    svg = privacy_utility_svg(load_comparison([tmp_path / "blur", tmp_path / "mask"]))
    assert svg.count("<circle") == 2 and ">blur<" in svg and ">mask<" in svg
