"""Stage IV, adversarial perturbation: options, the chip-space warp of a universal perturbation, and
the real-photo test: PGD against dlib's recogniser (PyTorch) on CelebA photos, through the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import anonymize.cli.run  # noqa: F401  (attaches `run` to the app)
from anonymize.adversarial import AdversarialError, AdversarialSettings, split_adversarial_options
from anonymize.adversarial.attack import EnsembleAttack, apply_universal, attack_region, footprint
from anonymize.adversarial.evaluate import measure
from anonymize.adversarial.members import Geometry, chip_matrix, open_members, sample_crops
from anonymize.adversarial.transforms import Sample, jitter
from anonymize.adversarial.universal import survey_faces, universal_perturbation
from anonymize.cli import app
from anonymize.faces.chips import extract_face_chips, face_chip_location
from anonymize.io.manifest import read_manifest
from anonymize.io.storage import plan_storage
from anonymize.metrics.identity import DlibRecogniser

EYES_AND_NOSE = np.array([(140.0, 90.0), (122.0, 91.0), (78.0, 90.0), (96.0, 91.0), (110.0, 125.0)])  # dlib's 5 points


def test_adversarial_options_leave_the_method_its_own():
    own, settings = split_adversarial_options({"sigma": "3", "adversarial": "fgsm", "adv_eps": "8/255", "adv-steps": "4"}, "blur")
    assert own == {"sigma": "3"}
    assert settings == AdversarialSettings("fgsm", 8 / 255, 4)
    assert split_adversarial_options({"sigma": "3"}, "blur") == ({"sigma": "3"}, None)
    defaults = split_adversarial_options({}, "adversarial")[1]
    assert defaults == AdversarialSettings("pgd", 8 / 255, 10, ("dlib", "mobileface"), 4, 0.9)
    assert split_adversarial_options({"adversarial": "pgd", "adv_ensemble": "faceres, dlib", "adv_samples": "2", "adv_ssim": "0"},
                                     "blur")[1] == AdversarialSettings("pgd", 8 / 255, 10, ("faceres", "dlib"), 2, 0.0)


@pytest.mark.parametrize("options, message", [
    ({"adversarial": "cw"}, "choose one of fgsm, pgd, uap"),
    ({"adv_eps": "4/255"}, "give -p adversarial=fgsm|pgd|uap as well"),
    ({"adversarial": "pgd", "adv_eps": "4/0"}, "adv_eps='4/0'"),
    ({"adversarial": "pgd", "adv_eps": "2"}, "expected 0 < eps <= 1"),
    ({"adversarial": "pgd", "adv_steps": "0"}, "expected at least 1"),
    ({"adversarial": "pgd", "adv_ensemble": "dlib,arcface"}, "choose distinct names from dlib, mobileface, faceres"),
    ({"adversarial": "pgd", "adv_samples": "0"}, "adv_samples=0: expected at least 1"),
    ({"adversarial": "pgd", "adv_ssim": "1.5"}, "adv_ssim=1.5"),
])
def test_bad_adversarial_options_are_one_line_errors(options, message):
    with pytest.raises(AdversarialError, match=message.replace("|", r"\|").replace("(", r"\(")):
        split_adversarial_options(options, "blur")


def test_a_universal_perturbation_reaches_the_chip_through_the_inverse_warp():
    """Warped into the photo and cut out again by dlib's chip sampling, a smooth chip-space
    perturbation comes back as itself (up to the 8-bit rounding), and no pixel outside the chip moves."""
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(128, 20, (240, 220, 3)), 0, 255).astype(np.uint8)
    location = face_chip_location(EYES_AND_NOSE)
    ramp = np.linspace(-3.0, 3.0, 150, dtype=np.float32)
    universal = np.stack([np.broadcast_to(ramp, (150, 150)), np.broadcast_to(ramp[:, None], (150, 150)),
                          np.full((150, 150), 2.0, np.float32)])
    settings = AdversarialSettings("uap", 4 / 255)
    perturbed = apply_universal(photo, [location], universal, settings)
    change = extract_face_chips(perturbed, [location])[0] - extract_face_chips(photo, [location])[0]
    inner = (slice(None), slice(5, -5), slice(5, -5))
    assert float((change - torch.from_numpy(universal))[inner].abs().mean()) < 0.5
    x0, y0, x1, y1 = footprint(location, photo.shape[:2])
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(perturbed[outside], photo[outside])
    assert np.abs(perturbed.astype(int) - photo.astype(int)).max() <= 4


@pytest.mark.parametrize("scale", [1.0, 6.0])  # 6: a large face, read from a blurred copy
def test_the_attack_reads_only_a_box_around_the_crops(scale):
    """PGD works on the box around the faces' crops, jittered ones included (a big photo stays cheap): a
    crop cut from that box, moved as far as the transformations move it, equals the crop cut from the photo."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (int(300 * scale), int(320 * scale), 3), dtype=np.uint8)
    matrix = chip_matrix(face_chip_location(EYES_AND_NOSE * scale))
    x0, y0, x1, y1 = attack_region([(matrix, 150)], photo.shape[:2])
    assert (x1 - x0) * (y1 - y0) < photo.shape[0] * photo.shape[1]
    worst = jitter(matrix, Sample(shift=(0.15, -0.15), scale=1.15, rotation=np.radians(10)), 150)
    whole = sample_crops(torch.from_numpy(photo).permute(2, 0, 1).float(), [worst], 150)
    region = torch.from_numpy(np.ascontiguousarray(photo[y0:y1, x0:x1])).permute(2, 0, 1).float()
    moved = worst.copy()
    moved[:, 2] -= (x0, y0)
    boxed = sample_crops(region, [moved], 150)
    assert torch.allclose(whole, boxed, atol=0.01)  # float32 sampling grids


def test_a_crop_cut_by_the_attack_equals_dlibs_own_chip(five_identities, tiny_weights):
    """The differentiable crop under dlib's chip matrix is dlib's chip (same sampling grid)."""
    photo = np.asarray(Image.open(sorted(five_identities.iterdir())[0]).convert("RGB"))
    location = face_chip_location(DlibRecogniser(tiny_weights.store()).landmarks(photo, [(20.0, 40.0, 158.0, 190.0)])[0])
    ours = sample_crops(torch.from_numpy(photo.copy()).permute(2, 0, 1).float(), [chip_matrix(location)], 150)
    assert float((ours - extract_face_chips(photo, [location])).abs().max()) < 0.01


@pytest.fixture(scope="module")
def five_identities(shared_dir, tmp_path_factory):
    """One CelebA photo of each of the five people."""
    root = tmp_path_factory.mktemp("adversarial") / "in"
    root.mkdir()
    for identity in sorted((shared_dir / "data" / "celeba-ids").iterdir()):
        photo = sorted(identity.iterdir())[0]
        shutil.copy(photo, root / f"{identity.name}_{photo.name}")
    return root


def test_universal_perturbation_stays_in_the_ball_and_pushes_faces_away(five_identities, tiny_weights):
    store = tiny_weights.store()
    settings = AdversarialSettings("uap", 8 / 255, ensemble=("dlib",), samples=2)
    attack = EnsembleAttack(open_members(settings.ensemble, store, "cpu"), Geometry(store), settings, 95)
    faces = []
    for path in sorted(five_identities.iterdir())[:2]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces += survey_faces(attack, rgb, [(20.0, 40.0, 158.0, 190.0)], aligned=True)  # CelebA's framing
    result = universal_perturbation(attack, faces, eps_levels=8.0, passes=4)
    assert result.perturbation.shape == (3, 150, 150)
    assert np.abs(result.perturbation).max() <= 8.0 + 1e-5
    with torch.no_grad():
        zero = torch.zeros(3, 150, 150)
        before = [float(attack.loss(torch.from_numpy(face.region).permute(2, 0, 1).float(), (0, 0), [face.target], [Sample()]))
                  for face in faces]
        from anonymize.adversarial.universal import _loss

        after = [float(_loss(attack, face, torch.from_numpy(result.perturbation), 8.0, [Sample()])) for face in faces]
        assert float(_loss(attack, faces[0], zero, 8.0, [Sample()])) == pytest.approx(before[0], abs=1e-4)
    assert np.mean(after) < np.mean(before) - 0.03  # the faces' dlib features moved away from the originals'


def test_pgd_on_the_final_image_defeats_dlib_and_survives_jpeg(five_identities, tiny_env, tmp_path):
    """--method adversarial against dlib alone (PGD at 8/255, 10 steps, its alignments sampled) on real photos:
    dlib matched every face to its original before; after, it matches few, in memory and in the written JPEG."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(five_identities), "--out", str(out), "--method", "adversarial", "--aligned",
                                      "--detector", "dlib-hog", "--workers", "0", "--device", "cpu",
                                      "-p", "adv_ensemble=dlib", "-p", "adv_eps=8/255"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "privacy goal: machines only" in " ".join(result.output.split())  # one line says whom it does not fool
    assert sorted(path.name for path in out.glob("*.jpg")) == sorted(path.name for path in five_identities.iterdir())
    figures = measure(five_identities, out, tiny_env.store())
    print("\n".join(figures.lines()))  # pytest -s
    assert figures.faces == 5 and figures.ensemble == ("dlib",)
    assert figures.matched_before == 1.0
    assert figures.matched_after <= 0.2
    assert figures.judge("dlib").matched <= 0.4 and figures.judge("dlib").in_ensemble  # written JPEG, q95
    assert figures.judge("dlib-68").matched <= 0.4  # another alignment the ensemble attacks
    assert figures.judge("dlib-box").matched < 1.0  # the whole image as the box: harder (README's curve)
    assert 29.0 < figures.psnr_db < 34.0 and figures.ssim < 1.0  # +-8 grey levels: about 30 dB


def test_adversarial_options_on_another_method_from_the_cli(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "in"), "--method", "blur", "-p", "adversarial=cw"])
    assert result.exit_code != 0
    assert "adversarial='cw': choose one of fgsm, pgd, uap" in result.output


def test_uap_from_the_cli_stores_one_perturbation_and_applies_it(five_identities, tiny_env, tmp_path):
    """-p adversarial=uap after blur: pass 1 stores one chip-space perturbation within eps, pass 2
    warps it into every written face, which moves further from its original on average."""
    source = tmp_path / "in"
    source.mkdir()
    for photo in sorted(five_identities.iterdir())[:2]:
        shutil.copy(photo, source / photo.name)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(source), "--out", str(out), "--method", "pixelate", "--aligned",
                                      "--detector", "dlib-hog", "--workers", "0", "--device", "cpu", "--quiet",
                                      "-p", "adversarial=uap", "-p", "adv_eps=8/255", "-p", "adv_ensemble=dlib"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = plan_storage(out, "adversarial-uap").read_plan()
    assert stored is not None
    arrays, info = stored
    assert arrays["perturbation"].shape == (3, 150, 150)
    assert np.abs(arrays["perturbation"]).max() <= 8.0 + 1e-4
    assert info["faces"] == 2
    rows = read_manifest(out / "manifest.parquet")[0].to_pandas()
    assert list(rows.adv_kind) == ["uap", "uap"]
    assert rows.adv_distance_after.mean() > rows.adv_distance_before.mean()


def test_the_ensemble_moves_a_recogniser_it_never_saw(five_identities, human_weights, tmp_path, monkeypatch):
    """The default ensemble (dlib + mobileface, 8/255) on real photos: the manifest names both as in the loss;
    faceres, held out, sees every written face move away from its original (its cosine falls), though at this
    bound it still matches most of them (the README's curve)."""
    from anonymize.metrics.graph_recognisers import GraphRecogniser

    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(human_weights.lock_path))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(five_identities), "--out", str(out), "--method", "adversarial", "--aligned",
                                      "--detector", "dlib-hog", "--workers", "0", "--device", "cpu", "--quiet",
                                      "--weights-dir", str(human_weights.weights_dir), "-p", "adv_eps=8/255"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table, metadata = read_manifest(out / "manifest.parquet")
    assert metadata["loss_recognisers"] == '["dlib", "mobileface"]'
    rows = table.to_pylist()
    assert {row["adv_ensemble"] for row in rows} == {"dlib,mobileface"}
    assert all(row["adv_ssim"] is not None and row["adv_ssim"] < 1.0 for row in rows)
    faceres = GraphRecogniser(human_weights.store(), "faceres")
    cosines = []
    for row in rows:
        original = np.asarray(Image.open(five_identities / row["source_path"]).convert("RGB"))
        written = np.asarray(Image.open(out / row["output_path"]).convert("RGB"))
        box = [list(row["box"])]
        cosines.append(float((faceres.descriptors(original, box) * faceres.descriptors(written, box)).sum()))
    assert np.mean(cosines) < 0.93  # an untouched face scores about 1.0


def test_a_missing_ensemble_member_stops_the_run_before_anything_is_written(five_identities, tiny_env, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(five_identities), "--out", str(out), "--method", "adversarial", "--aligned",
                                      "--detector", "dlib-hog", "--quiet"])
    assert result.exit_code == 2
    assert "adv_ensemble=dlib,mobileface" in result.output and "-p adv_ensemble=dlib" in result.output
    assert not out.exists() or not any(out.glob("*.jpg"))



def test_the_crop_jitter_moves_scales_and_turns_about_the_crop_centre():
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # crop pixel = photo pixel, 3 x 3 crop, centre (1, 1)
    assert np.array_equal(jitter(identity, Sample(), 3), identity)
    doubled = jitter(identity, Sample(scale=2.0), 3)
    assert doubled @ np.array([0.0, 0.0, 1.0]) == pytest.approx([-1.0, -1.0])  # the corner moves twice as far out
    turned = jitter(identity, Sample(rotation=np.pi / 2), 3)
    assert turned @ np.array([2.0, 1.0, 1.0]) == pytest.approx([1.0, 2.0])  # right of centre -> below it
    shifted = jitter(identity, Sample(shift=(0.5, 0.0)), 3)
    assert shifted @ np.array([1.0, 1.0, 1.0]) == pytest.approx([2.5, 1.0])  # half the crop size to the right


def test_the_ssim_floor_scales_the_perturbation_down_until_it_holds():
    from anonymize.adversarial.attack import meet_ssim_floor
    from anonymize.metrics.quality import face_box_mask, ssim

    rng = np.random.default_rng(0)
    smooth = np.clip(np.linspace(60, 200, 120)[None, :, None] + np.zeros((100, 120, 3)), 0, 255).astype(np.uint8)
    noisy = np.clip(smooth.astype(int) + rng.choice([-16, 16], smooth.shape), 0, 255).astype(np.uint8)
    box = [(10.0, 10.0, 110.0, 90.0)]
    mask = face_box_mask(smooth.shape, box[0])
    assert ssim(smooth, noisy, mask) < 0.9
    assert np.array_equal(meet_ssim_floor(smooth, noisy, box, 0.0), noisy)  # no floor: untouched
    held = meet_ssim_floor(smooth, noisy, box, 0.9)
    assert ssim(smooth, held, mask) >= 0.9
    change = np.abs(held.astype(int) - smooth.astype(int))
    assert 0 < change.max() < 16  # the same perturbation, scaled down, not removed
