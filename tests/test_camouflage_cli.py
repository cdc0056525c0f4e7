"""`anonymize run --method camouflage` end to end on the tiny networks, and its audit for the human goal.

Two CelebA identities x two aligned photos from ../shared (skipped where absent); two optimisation
steps and a small fake bank keep each run to seconds. The tiny networks make no real camouflage: the
point here is the plumbing (manifest columns, the recorded privacy goal, one reference per person,
the audit reading the goal and naming the white-box recogniser).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import anonymize.cli.audit  # noqa: F401  (attaches `audit` to the app)
import anonymize.cli.run  # noqa: F401  (attaches `run` to the app)
from anonymize.cli import app
from anonymize.faces.align import ffhq_quad
from anonymize.io.manifest import read_manifest
from tests.helpers import copy_celeba_ids

FAST = ["--method", "camouflage", "--device", "cpu", "--aligned", "-p", "steps=2", "-p", "bank_size=24", "--json"]
CAMO_COLUMNS = ("camo_reference_index", "camo_reference_kind", "camo_id_cos", "camo_psnr_db", "camo_output_kept", "camo_passed")


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture
def celeba_subset(shared_dir: Path, tmp_path: Path) -> Path:
    return copy_celeba_ids(shared_dir, tmp_path / "celeba")


def test_camouflage_runs_records_the_human_goal_and_the_audit_judges_it_with_a_recogniser_outside_its_loss(
        tiny_env, celeba_subset, tmp_path):
    out = tmp_path / "out"
    result = cli("run", celeba_subset, "--out", out, "-p", "outputs=2", *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"] == 4 and json.loads(result.stdout)["errors"] == 0
    table, metadata = read_manifest(out / "manifest.parquet")
    assert metadata["privacy_goal"] == "human" and json.loads(metadata["loss_recognisers"]) == ["arcface-ir-se50"]
    for row in table.to_pylist():
        assert row["status"] == "done" and all(row[column] is not None for column in CAMO_COLUMNS), row
        assert row["camo_reference_kind"] == "bank" and row["camo_output_kept"] in (0, 1)
        source = np.asarray(Image.open(celeba_subset / row["source_path"]), float)
        difference = np.abs(np.asarray(Image.open(out / row["output_path"]), float) - source)
        assert difference.shape == source.shape and difference[60:180, 40:140].mean() > 10  # the face was regenerated
        inside = np.zeros(difference.shape[:2], np.uint8)
        cv2.fillConvexPoly(inside, np.round(ffhq_quad(np.reshape(row["landmarks"], (-1, 2)))).astype(np.int32), 1)
        outside = cv2.dilate(inside, np.ones((5, 5), np.uint8)) == 0
        assert outside.mean() > 0.1 and difference[outside].mean() < 3  # outside the pasted square: JPEG re-encoding only

    audited = cli("audit", celeba_subset, out, "--detector", "dlib-hog", "--no-fid", "--json")
    summary = json.loads(audited.stdout)
    assert summary["privacy_goal"] == "human" and summary["privacy_goal_source"] == "the run's manifest"
    assert summary["recogniser_roles"]["white_box"] == ["arcface-ir-se50"] and summary["recogniser_roles"]["judge"] == "dlib"
    assert summary["human_goal"]["faces"] == 4 and "re-identification rate" not in " ".join(summary["crossed"])


def test_consistency_person_gives_each_identity_folder_one_reference(tiny_env, celeba_subset, tmp_path):
    out = tmp_path / "out"
    result = cli("run", celeba_subset, "--out", out, "-p", "consistency=person", "--identity-from", "folder", *FAST)
    assert result.exit_code == 0, result.output
    rows = read_manifest(out / "manifest.parquet")[0].to_pylist()
    by_identity: dict[str, set[int]] = {}
    for row in rows:
        by_identity.setdefault(row["source_path"].split("/")[0], set()).add(row["camo_reference_index"])
    assert set(by_identity) == {"0", "1"} and all(len(references) == 1 for references in by_identity.values())
