"""`anonymize run --method attributes` end to end on the tiny weights and two real aligned CelebA photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import EDIT_COLUMNS, cli, copy_celeba_ids


@pytest.fixture
def two_photos(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "celeba"
    source.mkdir()
    for photo in sorted((shared_dir / "data" / "celeba-ids" / "0").glob("*.jpg"))[:2]:
        shutil.copy(photo, source / photo.name)
    return source


def test_an_eyeglasses_edit_runs_end_to_end_and_records_targets_and_achieved_probabilities(tiny_env, two_photos, tmp_path):
    out = tmp_path / "out"
    result = cli("run", two_photos, "--out", out, "--aligned", "--method", "attributes", "--device", "cpu", "--json",
                 "-p", "set=Eyeglasses:1", "-p", "flip=Smiling", "-p", "steps=2", "-p", "bank_size=24", "-p", "identity=cfa")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"] == 2
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 2 and all(row["status"] == "done" for row in rows)
    for row in rows:
        assert all(row[column] is not None for column in EDIT_COLUMNS), row
        targets, start = json.loads(row["attr_edit_targets"]), json.loads(row["attr_edit_start"])
        assert targets["Eyeglasses"] == 1.0 and targets["Smiling"] == float(start["Smiling"] < 0.5)
        assert set(json.loads(row["attr_edit_achieved"])) == {"Eyeglasses", "Smiling"}
        assert row["attr_edit_identity"] == "cfa" and row["steps"] == 2
        original = np.asarray(Image.open(two_photos / row["source_path"]), float)
        written = np.asarray(Image.open(out / row["output_path"]), float)
        assert written.shape == original.shape and np.abs(written - original).mean() > 1.0
    assert json.loads(rows[0]["method_params"])["bank"]["size"] == 24


def test_a_run_without_a_target_stops_before_writing(tiny_env, two_photos, tmp_path):
    result = cli("run", two_photos, "--out", tmp_path / "out", "--aligned", "--method", "attributes", "--device", "cpu")
    assert result.exit_code != 0 and "no target attribute" in result.output
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_stage_two_then_stage_three_from_the_cli_gives_every_class_of_quasi_identifiers_k_faces(tiny_env, shared_dir, tmp_path):
    source = copy_celeba_ids(shared_dir, tmp_path / "four")
    out = tmp_path / "out"
    result = cli("run", source, "--out", out, "--aligned", "--method", "attributes", "--device", "cpu", "--json",
                 "-p", "select=k", "-p", "qi=Male,Young,Smiling", "-p", "k=2", "-p", "steps=1", "-p", "bank_size=24")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    classes: dict[tuple, int] = {}
    for row in rows:
        targets = json.loads(row["attr_edit_targets"])
        pattern = tuple(targets[name] for name in ("Male", "Young", "Smiling"))
        classes[pattern] = classes.get(pattern, 0) + 1
    assert min(classes.values()) >= 2
    assert (out / ".anonymize" / "plan" / "attributes" / "plan.npz").is_file()


def test_margin_reaches_the_attribute_edit_s_identity_loss(tiny_env, two_photos, tmp_path):
    """--margin used to be refused for --method attributes while the method read a margin that was always 0:
    it is now the method's own option, recorded with its parameters and checked against its identity loss."""
    out = tmp_path / "out"
    result = cli("run", two_photos, "--out", out, "--aligned", "--method", "attributes", "--device", "cpu", "--json",
                 "--margin", "0.4", "-p", "identity=falco", "-p", "set=Eyeglasses:1", "-p", "steps=1", "-p", "bank_size=24")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {json.loads(row["method_params"])["margin"] for row in rows} == {0.4}
    assert {row["attr_edit_identity"] for row in rows} == {"falco"}
    # The paper's stage III (StarGAN: adversarial, classification, reconstruction terms) has no identity loss: none by default.
    refused = cli("run", two_photos, "--out", tmp_path / "other", "--aligned", "--method", "attributes", "--device", "cpu",
                  "--margin", "0.4", "-p", "set=Eyeglasses:1")
    assert refused.exit_code != 0 and "margin is the target of identity=falco (got identity=none): add -p identity=falco" in " ".join(
        refused.output.split())


def test_algorithm_one_then_stage_three_from_the_cli(tiny_env, shared_dir, tmp_path):
    """select=closeness (Algorithm 1, its default reading, then line 11 at epsilon) runs end to end: each face's
    quasi-identifier targets are the 0/1 values the plan chose."""
    source = copy_celeba_ids(shared_dir, tmp_path / "four")
    out = tmp_path / "out"
    result = cli("run", source, "--out", out, "--aligned", "--method", "attributes", "--device", "cpu", "--json",
                 "-p", "select=closeness", "-p", "qi=Male,Young", "-p", "t=0.1", "-p", "epsilon=2",
                 "-p", "steps=1", "-p", "bank_size=24")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    for row in rows:
        targets = json.loads(row["attr_edit_targets"])
        assert {targets["Male"], targets["Young"]} <= {0.0, 1.0}
        assert json.loads(row["method_params"])["select"] == "closeness"
