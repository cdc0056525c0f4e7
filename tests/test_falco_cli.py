"""`anonymize run --method falco` and `anonymize bank build` end to end, on the tiny networks.

Aligned CelebA photos (cropped FFHQ-style from the landmarks, the generated square pasted back
into the 178 x 218 frame) and web portraits (the generated face pasted back) from ../shared; few
optimisation steps and a small fake bank keep each run to seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import anonymize.cli.bank  # noqa: F401  (attaches `bank` to the app)
import anonymize.cli.run  # noqa: F401  (attaches `run` to the app)
from anonymize.faces.align import align_face, ffhq_quad
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.io.manifest import read_manifest
from anonymize.methods.latent.bank import bank_dir
from anonymize.weights import WeightsStore
from tests.helpers import cli, copy_celeba_ids

FAST = ["--method", "falco", "--device", "cpu", "-p", "steps=3", "-p", "bank_size=40", "--json"]
FALCO_COLUMNS = ("fake_index", "pairing_similarity", "id_cos_before", "id_cos_after", "id_margin_gap",
                 "attr_loss_start", "attr_loss_end", "steps", "seed", "latent_path")
PORTRAITS = ("obama_1.jpg", "biden_1.jpg")


@pytest.fixture
def celeba_subset(shared_dir: Path, tmp_path: Path) -> Path:
    """Two identities x three aligned photos, in their identity folders."""
    return copy_celeba_ids(shared_dir, tmp_path / "celeba", per_identity=3)


def test_falco_on_aligned_celeba_pastes_the_square_back_fills_the_manifest_and_resumes(tiny_env, celeba_subset, tmp_path):
    out = tmp_path / "out"
    result = cli("run", celeba_subset, "--out", out, "--aligned", "--margin", "0.2", "--save-latents", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 6 and summary["faces"] == 6 and summary["errors"] == 0
    table, metadata = read_manifest(out / "manifest.parquet")
    rows = table.to_pylist()
    assert len(rows) == 6 and all(row["status"] == "done" for row in rows)
    for row in rows:
        assert all(row[column] is not None for column in FALCO_COLUMNS), row
        assert row["steps"] == 3 and row["id_margin_gap"] == pytest.approx(abs(row["id_cos_after"] - 0.2), abs=1e-6)
        assert (out / row["latent_path"]).is_file()
        source = Image.open(celeba_subset / row["source_path"])
        written = Image.open(out / row["output_path"])
        assert written.size == source.size  # the generated square, pasted back into the photo's frame
        difference = np.abs(np.asarray(written, float) - np.asarray(source, float))
        assert difference[60:180, 40:140].mean() > 10  # the face was regenerated
        square = ffhq_quad(np.reshape(row["landmarks"], (-1, 2)))  # from the face's landmarks, recorded
        inside = np.zeros(difference.shape[:2], np.uint8)
        cv2.fillConvexPoly(inside, np.round(square).astype(np.int32), 1)
        outside = cv2.dilate(inside, np.ones((5, 5), np.uint8)) == 0
        assert outside.mean() > 0.1 and difference[outside].mean() < 3  # outside the square: only JPEG re-encoding
    assert set(json.loads(metadata["weights_sha256"])) >= {"e4e_ffhq_encode", "arcface_ir_se50", "farl_ep64", "stylegan2_ffhq1024_genforce"}
    assert json.loads(metadata["method_params"])["bank"]["size"] == 40

    again = cli("run", celeba_subset, "--out", out, "--aligned", "--margin", "0.2", "--save-latents", *FAST)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["resumed"] == 6 and json.loads(again.stdout)["faces"] == 0
    assert len(pq.read_table(out / "manifest.parquet")) == 6


def test_falco_on_portraits_pastes_the_generated_face_back(tiny_env, shared_dir, tmp_path):
    source = tmp_path / "portraits"
    source.mkdir()
    for name in PORTRAITS:
        shutil.copy(shared_dir / "data" / "portraits" / name, source / name)
    out = tmp_path / "out"
    result = cli("run", source, "--out", out, "--detector", "dlib-hog", "--unique-pairs", *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"] >= len(PORTRAITS)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {row["source_path"] for row in rows} == set(PORTRAITS)
    assert all(row["status"] == "done" and row["fake_index"] is not None and row["latent_path"] is None for row in rows)
    assert len({row["fake_index"] for row in rows}) == len(rows)  # --unique-pairs
    for name in PORTRAITS:
        original = np.asarray(Image.open(source / name).convert("RGB"), float)
        written = np.asarray(Image.open(out / name).convert("RGB"), float)
        assert written.shape == original.shape
        changed = np.abs(written - original).max(axis=2) > 40
        assert 0.005 < changed.mean() < 0.5  # the face region changed, most of the photo did not


def test_a_run_without_the_weights_fails_at_once_and_writes_nothing(tiny_env, celeba_subset, tmp_path, monkeypatch):
    empty = tmp_path / "no-weights"
    monkeypatch.setenv("ANONYMIZE_HOME", str(empty))
    out = tmp_path / "out"
    result = cli("run", celeba_subset, "--out", out, "--aligned", *FAST)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "error:" in message and "anonymize weights fetch e4e_ffhq_encode" in message and "farl_ep64" in message
    assert not out.exists() and not empty.exists()


def test_falco_flags_are_refused_for_other_methods(tiny_env, celeba_subset, tmp_path):
    result = cli("run", celeba_subset, "--out", tmp_path / "out", "--method", "blur", "--aligned", "--save-latents")
    assert result.exit_code == 2 and "--save-latents only applies to --method falco" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_bank_build_renders_the_bank_once_and_then_reuses_it(tiny_env):
    first = cli("bank", "build", "--size", 30, "--seed", 11, "--device", "cpu", "--json")
    assert first.exit_code == 0, first.output
    built = json.loads(first.stdout)
    path = Path(built["path"])
    assert built["built"] and built["size"] == 30 and built["seed"] == 11 and built["psi"] == 0.7
    assert path.parent == bank_dir(tiny_env.weights_dir) and path.is_file()
    stamp = path.stat().st_mtime_ns
    second = json.loads(cli("bank", "build", "--size", 30, "--seed", 11, "--device", "cpu", "--json").stdout)
    assert not second["built"] and second["path"] == str(path) and path.stat().st_mtime_ns == stamp


def test_the_bank_command_offers_the_registrys_generators_and_falcos_psi():
    from anonymize.cli.bank import DEFAULT_PSI, Generator
    from anonymize.methods.latent.bank import DEFAULT_PSI as BANK_PSI
    from anonymize.models.registry import GENERATORS

    assert tuple(choice.value for choice in Generator) == GENERATORS and DEFAULT_PSI == BANK_PSI


def test_falco_on_ffhq_framed_squares_replaces_the_whole_image(tiny_env, shared_dir, tmp_path):
    source = tmp_path / "ffhq"
    source.mkdir()
    photo = np.asarray(Image.open(shared_dir / "data" / "portraits" / "obama_1.jpg").convert("RGB"))
    detector = create_detector("dlib-hog", WeightsStore(tiny_env.weights_dir), DetectorSettings())
    Image.fromarray(align_face(photo, detector.detect(photo)[0].landmarks, 300).crop).save(source / "ffhq.png")
    out = tmp_path / "out"
    result = cli("run", source, "--out", out, "--aligned", "--detector", "dlib-hog", *FAST)
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(source / "ffhq.png"), float)
    written = np.asarray(Image.open(out / "ffhq.png"), float)
    assert written.shape == original.shape
    assert np.abs(written - original).max(axis=2)[:20].mean() > 10  # even the corners are generated


def test_region_and_deterministic_options_reach_the_run(tiny_env, celeba_subset, tmp_path):
    out = tmp_path / "out"
    result = cli("run", celeba_subset, "--out", out, "--aligned-ffhq", "--region", "ellipse", "--deterministic", "--limit", "1",
                 "--allow-errors", *FAST)
    assert result.exit_code == 0, result.output  # the error row below is expected here: --allow-errors (else exit 4)
    summary = json.loads(result.stdout)
    assert summary["errors"] == 1 and "--aligned ffhq expects square" in summary["error_messages"][0]  # CelebA is not square
    arguments = json.loads(read_manifest(out / "manifest.parquet")[1]["arguments"])
    assert arguments["region"] == "ellipse" and arguments["deterministic"] is True
    assert arguments["aligned"] is True and arguments["aligned_framing"] == "ffhq"
