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
from anonymize.adversarial.attack import attack_region, shifted_location, apply_universal, footprint
from anonymize.adversarial.evaluate import measure
from anonymize.adversarial.universal import universal_perturbation
from anonymize.cli import app
from anonymize.faces.chips import extract_face_chips, face_chip_location
from anonymize.io.manifest import read_manifest
from anonymize.methods.plan_store import read_plan
from anonymize.metrics.identity import DlibRecognizer

EYES_AND_NOSE = np.array([(140.0, 90.0), (122.0, 91.0), (78.0, 90.0), (96.0, 91.0), (110.0, 125.0)])  # dlib's 5 points


def test_adversarial_options_leave_the_method_its_own():
    own, settings = split_adversarial_options({"sigma": "3", "adversarial": "fgsm", "adv_eps": "8/255", "adv-steps": "4"}, "blur")
    assert own == {"sigma": "3"}
    assert settings == AdversarialSettings("fgsm", 8 / 255, 4)
    assert split_adversarial_options({"sigma": "3"}, "blur") == ({"sigma": "3"}, None)
    assert split_adversarial_options({}, "adversarial")[1] == AdversarialSettings("pgd", 4 / 255, 10)


@pytest.mark.parametrize("options, message", [
    ({"adversarial": "cw"}, "choose one of fgsm, pgd, uap"),
    ({"adv_eps": "4/255"}, "give -p adversarial=fgsm|pgd|uap as well"),
    ({"adversarial": "pgd", "adv_eps": "4/0"}, "adv_eps='4/0'"),
    ({"adversarial": "pgd", "adv_eps": "2"}, "expected 0 < eps <= 1"),
    ({"adversarial": "pgd", "adv_steps": "0"}, "expected at least 1"),
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


@pytest.mark.parametrize("scale", [1.0, 6.0])  # 6: a large face, cut from a shrunk pyramid level
def test_the_attack_reads_only_a_box_around_the_chips(scale):
    """PGD works on the box around the faces' chips (a big photo stays cheap): dlib's chips cut from
    that box, pyramid margins included, equal the chips cut from the whole photo."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (int(300 * scale), int(320 * scale), 3), dtype=np.uint8)
    location = face_chip_location(EYES_AND_NOSE * scale)
    x0, y0, x1, y1 = attack_region([location], photo.shape[:2])
    assert (x1 - x0) * (y1 - y0) < photo.shape[0] * photo.shape[1]
    whole = extract_face_chips(photo, [location])
    boxed = extract_face_chips(np.ascontiguousarray(photo[y0:y1, x0:x1]), [shifted_location(location, x0, y0)])
    assert torch.equal(whole, boxed)


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
    recognizer = DlibRecognizer(tiny_weights.store())
    chips, originals = [], []
    for path in sorted(five_identities.iterdir())[:2]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        box = [(20.0, 40.0, 158.0, 190.0)]  # CelebA's aligned framing: the face fills the middle
        chips.append(extract_face_chips(rgb, [face_chip_location(recognizer.landmarks(rgb, box)[0])]))
        originals.append(torch.from_numpy(recognizer.descriptors(rgb, box)))
    chips_tensor, originals_tensor = torch.cat(chips), torch.cat(originals)
    result = universal_perturbation(recognizer.network, chips_tensor, originals_tensor, eps_levels=8.0, max_passes=1)
    assert np.abs(result.perturbation).max() <= 8.0 + 1e-5
    with torch.no_grad():
        before = (recognizer.network(chips_tensor) - originals_tensor).norm(dim=1)
        after = (recognizer.network(chips_tensor + torch.from_numpy(result.perturbation)) - originals_tensor).norm(dim=1)
    assert float(after.mean()) > float(before.mean()) + 0.1


def test_pgd_on_the_final_image_defeats_dlib_and_survives_jpeg(five_identities, tiny_env, tmp_path):
    """--method adversarial (identity crop + PGD at 4/255, 10 steps) on real photos: dlib matched every
    face to its original before; after, it matches few, in memory and in the written JPEG (quality 95)."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(five_identities), "--out", str(out), "--method", "adversarial", "--aligned",
                                      "--detector", "dlib-hog", "--workers", "0", "--device", "cpu", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.glob("*.jpg")) == sorted(path.name for path in five_identities.iterdir())
    figures = measure(five_identities, out, tiny_env.store())
    print("\n".join(figures.lines()))  # the figures the README reports (pytest -s)
    assert figures.faces == 5
    assert figures.matched_before == 1.0
    assert figures.matched_after <= 0.2
    assert figures.matched_written <= 0.4
    assert figures.psnr_db > 35.0


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
                                      "-p", "adversarial=uap", "-p", "adv_eps=8/255"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = read_plan(out / ".anonymize" / "plan" / "adversarial-uap")
    assert stored is not None
    arrays, info = stored
    assert arrays["perturbation"].shape == (3, 150, 150)
    assert np.abs(arrays["perturbation"]).max() <= 8.0 + 1e-4
    assert info["faces"] == 2
    rows = read_manifest(out / "manifest.parquet")[0].to_pandas()
    assert list(rows.adv_kind) == ["uap", "uap"]
    assert rows.adv_distance_after.mean() > rows.adv_distance_before.mean()
