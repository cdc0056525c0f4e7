"""`anonymize run --method cfa` end to end on the tiny networks, on aligned CelebA photos from ../shared.

A sweep of two angles and two variants writes, per photo, the main output (first angle, first
variant) and three renders beside it, and one manifest row per face listing them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anonymize.audit.pairing import pair_images
from tests.helpers import CFA_COLUMNS, cli, copy_celeba_ids


@pytest.fixture
def two_people(shared_dir: Path, tmp_path: Path) -> Path:
    """Two identities x two aligned photos, in their identity folders."""
    return copy_celeba_ids(shared_dir, tmp_path / "celeba")


def test_a_cfa_sweep_with_variants_writes_every_render_and_lists_them_in_the_manifest(tiny_env, two_people, tmp_path):
    out = tmp_path / "out"
    args = ["run", two_people, "--out", out, "--aligned", "--method", "cfa", "--device", "cpu", "--json",
            "--identity-from", "folder", "-p", "angles=40,70", "-p", "variants=2", "-p", "steps=2", "-p", "bank_size=40",
            "-p", "consistency=person"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["faces"] == 4 and summary["errors"] == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    for row in rows:
        assert all(row[column] is not None for column in CFA_COLUMNS), row
        assert row["cfa_target_angle"] == 40.0 and row["cfa_variant"] == 0
        assert row["cfa_person"] == int(row["source_path"].split("/")[0])  # one folder = one person
        renders = json.loads(row["cfa_renders"])
        assert [render["label"] for render in renders] == ["a70-v0", "a40-v1", "a70-v1"]
        original = np.asarray(Image.open(two_people / row["source_path"]), float)
        main = np.asarray(Image.open(out / row["output_path"]), float)
        assert main.shape == original.shape
        for render in renders:
            written = np.asarray(Image.open(out / render["path"]), float)
            assert written.shape == original.shape and np.abs(written - main).mean() > 0.5
    by_person = {}
    for row in rows:  # consistency=person: both photos of a person aimed at the same target
        by_person.setdefault(row["cfa_person"], set()).add((row["cfa_leak_cos"], row["cfa_leak_tries"], row["fake_index"]))
    assert all(len(targets) == 1 for targets in by_person.values())
    assert (out / ".anonymize" / "plan" / "cfa" / "plan.npz").is_file()
    pairing = pair_images(two_people, out)  # the audit pairs every render with its source, through the manifest
    assert len(pairing.pairs) == 16 and not pairing.unpaired and not pairing.missing_outputs

    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["resumed"] == 4 and len(pq.read_table(out / "manifest.parquet")) == 4


def test_an_angle_below_the_e4e_start_warns_once_with_the_count_and_the_manifest_records_the_start(tiny_env, two_people, tmp_path):
    out = tmp_path / "out"
    result = cli("run", two_people, "--out", out, "--aligned", "--method", "cfa", "--device", "cpu", "--json",
                 "--identity-from", "folder", "-p", "angle=0.01", "-p", "steps=1")
    assert result.exit_code == 0, result.output
    assert result.output.count("e4e reconstruction alone is already farther") == 1  # once per run, not per face
    assert "for 4 of 4 faces" in result.output
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert all(row["cfa_e4e_angle"] > 0.01 for row in rows)
