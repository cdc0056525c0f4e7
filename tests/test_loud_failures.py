"""Issue 23, part 1: privacy failures are loud (real photos, the CLI's exit codes and messages).

--aligned on group photos, k-Same with fewer people than its groups need, and methods whose output
people still recognise must each say so and, where faces were left unanonymized, exit non-zero.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from anonymize.methods import method_class
from anonymize.run.pipeline import Pipeline
from tests.helpers import cli

GROUP_PHOTOS = ["2008_001322.jpg", "bald_guys.jpg"]  # several people each, none of them aligned


def rows_by_source(out: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in pq.read_table(out / "manifest.parquet").to_pylist():
        rows.setdefault(row["source_path"], []).append(row)
    return rows


@pytest.fixture
def groups(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "groups"
    source.mkdir()
    for name in GROUP_PHOTOS:
        shutil.copy(shared_dir / "data" / "groups" / name, source / name)
    return source


def test_aligned_on_group_photos_is_an_error_row_naming_the_count_and_a_non_zero_exit(groups, tiny_weights, tmp_path):
    out = tmp_path / "out"
    result = cli("run", groups, "--out", out, "--method", "blur", "--aligned", "--device", "cpu",
                 "--weights-dir", tiny_weights.weights_dir, "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 4 and summary["errors"] == len(GROUP_PHOTOS) and summary["images"] == 0
    for name, rows in rows_by_source(out).items():
        (row,) = rows
        assert row["status"] == "error" and row["error"].startswith(f"{name}: ")
        count = int(row["error"].split(": ")[1].split()[0])
        assert count > 1 and "--aligned-lenient" in row["error"]
        assert not (out / name).exists()  # never half anonymized


def test_aligned_lenient_warns_and_anonymizes_every_face(groups, tiny_weights, tmp_path):
    strict = tmp_path / "strict"
    cli("run", groups, "--out", strict, "--method", "blur", "--aligned", "--device", "cpu", "--weights-dir", tiny_weights.weights_dir)
    counts = {name: int(rows[0]["error"].split(": ")[1].split()[0]) for name, rows in rows_by_source(strict).items()}
    out = tmp_path / "lenient"
    result = cli("run", groups, "--out", out, "--method", "blur", "--aligned", "--aligned-lenient", "--device", "cpu",
                 "--weights-dir", tiny_weights.weights_dir)
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())
    for name, rows in rows_by_source(out).items():
        assert [row["status"] for row in rows] == ["done"] * counts[name]  # every face found got a row and was blurred
        assert f"{name}: {counts[name]} faces found" in stderr and (out / name).is_file()
    assert cli("run", groups, "--out", tmp_path / "x", "--method", "blur", "--aligned-lenient").exit_code == 2


def test_ksame_with_a_person_in_every_group_exits_non_zero_and_prints_each_cause_once(shared_dir, tiny_weights, tmp_path):
    source = tmp_path / "portraits"
    source.mkdir()
    names = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "partial_obama_1.jpg", "partial_obama_2.jpg",
             "biden_1.jpg", "kit_harington_2.jpg", "rose_leslie_1.jpg"]
    for name in names:
        shutil.copy(shared_dir / "data" / "portraits" / name, source / name)
    out = tmp_path / "out"
    # RetinaFace alone: the default chain also finds background faces at the frame's edges, other people to group with
    result = cli("run", source, "--out", out, "--method", "ksame", "-p", "k=3", "--device", "cpu", "--detector", "retinaface",
                 "--weights-dir", tiny_weights.weights_dir, "--workers", "1")
    errors = [rows[0] for rows in rows_by_source(out).values() if rows[0]["status"] == "error"]
    assert len(errors) >= 2, result.output  # Obama has more photos than the faces make groups of 3 people
    assert result.exit_code == 4
    assert all("FaceNotGrouped" in row["error"] and "lower -p k" in row["error"] for row in errors)
    stderr = " ".join(result.stderr.split())
    cause = errors[0]["error"].split("no k-Same group: ")[1][:80]
    assert stderr.count(cause) == 2, stderr  # once when first met, once with its count at the end
    assert f"{len(errors)} images: ksame failed (FaceNotGrouped: face #N: no k-Same group: {cause}" in stderr
    for row in errors:
        assert not (out / row["source_path"]).exists()


@pytest.mark.parametrize("name", ["parts", "camouflage", "adversarial"])
def test_methods_people_still_recognise_say_so_in_the_summary(name):
    note = Pipeline.privacy_note(method_class(name))
    assert note is not None and note.startswith("privacy goal:") and "not anonymized" in note and "\n" not in note


@pytest.mark.parametrize("name", ["blur", "falco", "ksame"])
def test_methods_anonymizing_for_people_have_no_such_note(name):
    assert Pipeline.privacy_note(method_class(name)) is None


def test_a_parts_run_prints_its_privacy_goal_in_the_summary(tiny_env, shared_dir, tmp_path):
    source = tmp_path / "celeba"
    source.mkdir()
    for identity in ("0", "1"):
        shutil.copy(sorted((shared_dir / "data" / "celeba-ids" / identity).glob("*.jpg"))[0], source / f"{identity}.jpg")
    result = cli("run", source, "--out", tmp_path / "out", "--aligned", "--method", "parts", "--device", "cpu",
                 "-p", "backend=warp", "-p", "pgd_steps=2")
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    assert shown.count("privacy goal: people. parts keeps every face matchable by face recognition") == 1
    assert "not anonymized against machines" in shown


def test_aligned_ffhq_counts_the_faces_too(shared_dir, tiny_weights, tmp_path):
    from PIL import Image

    source = tmp_path / "squares"
    source.mkdir()
    for name in GROUP_PHOTOS:
        image = Image.open(shared_dir / "data" / "groups" / name).convert("RGB")
        side = min(image.size)
        left = (image.size[0] - side) // 2
        image.crop((left, 0, left + side, side)).save(source / name.replace(".jpg", ".png"))
    out = tmp_path / "out"
    result = cli("run", source, "--out", out, "--method", "blur", "--aligned-ffhq", "--device", "cpu",
                 "--weights-dir", tiny_weights.weights_dir, "--json")
    rows = [rows[0] for rows in rows_by_source(out).values()]
    assert result.exit_code == 4 and rows and all(row["status"] == "error" and "faces found" in row["error"] for row in rows)
