"""The end-to-end run on real photos: outputs, metadata, paste-back, bad input, resume, safety."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anonymize.io.decode import decode_image
from anonymize.io.metadata import metadata_beyond_icc, metadata_of
from anonymize.run import RunError, run, run_config
from tests.helpers import PORTRAITS_WITH_ONE_FACE, SHARED, cli


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def blur_config(source: Path, out: Path, **overrides) -> RunConfig:
    return run_config(source, out, **{"method": "blur", "detector": "dlib-hog", **overrides})


@pytest.fixture
def portraits(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "portraits"
    shutil.copytree(shared_dir / "data" / "portraits", source)
    return source


@pytest.fixture
def png_portraits(shared_dir: Path, tmp_path: Path) -> Path:
    """A few portraits re-saved as PNG, so that untouched pixels can be compared bit for bit."""
    source = tmp_path / "png"
    source.mkdir()
    for name in PORTRAITS_WITH_ONE_FACE:
        Image.fromarray(decode_image(shared_dir / "data" / "portraits" / name).rgb).save(source / name.replace(".jpg", ".png"))
    return source


def test_a_run_over_the_portraits_writes_every_image_with_faces_changed_and_metadata_gone(portraits, tmp_path):
    before = tree_digest(portraits)
    out = tmp_path / "out"
    summary = run(blur_config(portraits, out))
    sources = sorted(p.relative_to(portraits) for p in portraits.rglob("*") if p.is_file())
    assert summary.errors == 0 and summary.images == len(sources)
    assert summary.faces >= len(sources)
    for relative in sources:
        output = out / relative
        assert output.is_file()
        assert Image.open(output).format == Image.open(portraits / relative).format
        assert metadata_beyond_icc(metadata_of(output)) == [], relative
    # The photos did carry metadata (camera models, captions), so stripping was really exercised.
    assert any(metadata_beyond_icc(metadata_of(portraits / relative)) for relative in sources)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {row["source_path"] for row in rows} == {str(s) for s in sources}
    assert all(row["status"] == "done" and row["output_path"] == row["source_path"] for row in rows)
    assert sum(1 for row in rows if row["face_index"] is not None) == summary.faces
    # The input tree is byte-identical after the run.
    assert tree_digest(portraits) == before


def test_exif_orientation_is_applied_to_the_written_pixels(tmp_path, shared_dir):
    source = tmp_path / "in"
    source.mkdir()
    photo = Image.open(shared_dir / "data" / "portraits" / "obama_1.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise to show it upright
    photo.rotate(90, expand=True).save(source / "rotated.jpg", exif=exif.tobytes())
    out = tmp_path / "out"
    summary = run(blur_config(source, out))
    written = Image.open(out / "rotated.jpg")
    assert written.size == photo.size
    assert 0x0112 not in written.getexif()
    assert summary.faces == 1  # the face is found because the rotation was applied before detection


def test_pixels_outside_the_face_regions_are_unchanged(png_portraits, tmp_path):
    out = tmp_path / "out"
    run(blur_config(png_portraits, out))
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    for row in rows:
        original = np.asarray(Image.open(png_portraits / row["source_path"]).convert("RGB"))
        result = np.asarray(Image.open(out / row["output_path"]).convert("RGB"))
        changed = np.any(original != result, axis=2)
        x0, y0, x1, y1 = row["box"]
        ys, xs = np.nonzero(changed)
        assert changed.sum() > 0.3 * (x1 - x0) * (y1 - y0), "the face region was anonymized"
        # Every changed pixel lies near the detected face: the rest of the photo is bit-identical.
        margin = 1.2 * max(x1 - x0, y1 - y0)
        assert xs.min() >= x0 - margin and xs.max() <= x1 + margin
        assert ys.min() >= y0 - margin and ys.max() <= y1 + margin


def write_bad_inputs(folder: Path, good: Path) -> dict[str, str]:
    """A corrupt JPEG, a zero-byte file, a text file named .jpg, a PNG header claiming 100000 x 100000."""
    data = good.read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return {"corrupt.jpg": "truncated", "empty.jpg": "empty", "notes.jpg": "not an image", "huge.png": "too large"}


def test_bad_files_become_error_rows_and_every_good_image_is_done(shared_dir, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    good = [shared_dir / "data" / "portraits" / name for name in PORTRAITS_WITH_ONE_FACE[:2]]
    for path in good:
        shutil.copy(path, source / path.name)
    expected = write_bad_inputs(source, good[0])
    out = tmp_path / "out"
    result = cli("run", str(source), "--out", str(out), "--method", "blur", "--detector", "dlib-hog", "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 4 and summary["exit_code"] == 4  # CI reads exit codes: error rows are not a clean run
    assert summary["errors"] == len(expected) and summary["images"] == len(good)
    rows = {row["source_path"]: row for row in pq.read_table(out / "manifest.parquet").to_pylist()}
    for name, cause in expected.items():
        assert rows[name]["status"] == "error"
        assert rows[name]["error"].startswith(name) and cause in rows[name]["error"].lower()
        assert "\n" not in rows[name]["error"]
        assert not (out / name).exists()
    for path in good:
        assert rows[path.name]["status"] == "done" and (out / path.name).is_file()
    # --allow-errors accepts them (the rerun resumes the good images and meets the same bad files)
    again = cli("run", str(source), "--out", str(out), "--method", "blur", "--detector", "dlib-hog", "--json", "--allow-errors")
    assert again.exit_code == 0 and json.loads(again.stdout)["errors"] == len(expected)
    clean = cli("run", str(good[0].parent), "--out", str(tmp_path / "clean"), "--method", "blur", "--detector", "dlib-hog",
                "--limit", "1", "--json")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["exit_code"] == 0


def test_a_rerun_resumes_and_the_result_equals_a_clean_run(portraits, tmp_path):
    clean = tmp_path / "clean"
    run(blur_config(portraits, clean))
    resumed = tmp_path / "resumed"
    first = run(blur_config(portraits, resumed, limit=5))  # a run stopped part way
    assert first.images == 5
    second = run(blur_config(portraits, resumed))
    assert second.resumed == 5 and second.images == len(list(portraits.iterdir())) - 5
    assert tree_digest(clean) .keys() == tree_digest(resumed).keys()
    for name, digest in tree_digest(clean).items():
        if name != "manifest.parquet":
            assert tree_digest(resumed)[name] == digest, name
    rows = pq.read_table(resumed / "manifest.parquet").to_pylist()
    assert len(rows) == len(pq.read_table(clean / "manifest.parquet").to_pylist())
    assert len({row["run_id"] for row in rows}) == 2


def test_a_run_killed_mid_way_loses_at_most_one_batch_and_the_rerun_completes(png_portraits, tmp_path, monkeypatch):
    import anonymize.run.finish as stages

    out = tmp_path / "out"
    real_write = stages.write_image
    calls = {"n": 0}

    def write_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process is killed while writing the third image
        return real_write(*args, **kwargs)

    monkeypatch.setattr(stages, "write_image", write_then_die)
    with pytest.raises(KeyboardInterrupt):  # serial: "the third write" is the third image's
        run(blur_config(png_portraits, out, batch_size=1, workers=1))
    monkeypatch.setattr(stages, "write_image", real_write)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    summary = run(blur_config(png_portraits, out, batch_size=1))
    assert summary.resumed == 2 and summary.images == len(PORTRAITS_WITH_ONE_FACE) - 2
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(row["source_path"] for row in rows) == sorted(p.name for p in png_portraits.iterdir())
    assert not (out / ".anonymize" / "parts").exists()


def test_a_changed_source_is_redone_on_resume(png_portraits, tmp_path):
    out = tmp_path / "out"
    run(blur_config(png_portraits, out))
    changed = png_portraits / PORTRAITS_WITH_ONE_FACE[0].replace(".jpg", ".png")
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    summary = run(blur_config(png_portraits, out))
    assert summary.images == 1 and summary.resumed == len(PORTRAITS_WITH_ONE_FACE) - 1


def test_an_output_folder_inside_the_input_is_refused_with_one_line(portraits):
    before = tree_digest(portraits)
    result = cli("run", str(portraits), "--out", str(portraits / "anon"), "--method", "blur", "--detector", "dlib-hog")
    assert result.exit_code == 2
    assert "inside the input folder" in result.output and result.output.strip().count("\n") == 0
    with pytest.raises(RunError, match="must differ"):
        run(blur_config(portraits, portraits))
    assert tree_digest(portraits) == before


def test_a_missing_or_empty_input_is_refused(tmp_path):
    assert cli("run", str(tmp_path / "nope"), "--method", "blur").exit_code == 2
    (tmp_path / "empty").mkdir()
    result = cli("run", str(tmp_path / "empty"), "--method", "blur", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "no image found" in result.output


def test_a_dry_run_detects_and_reports_but_writes_nothing(portraits, tmp_path):
    out = tmp_path / "out"
    result = cli("run", str(portraits), "--out", str(out), "--method", "blur", "--detector", "dlib-hog", "--dry-run", "--json", "--limit", "3")
    summary = json.loads(result.stdout)
    assert summary["dry_run"] and summary["images"] == 3 and summary["faces"] >= 3
    assert not out.exists()


@pytest.mark.parametrize("policy", ["copy", "skip", "fail"])
def test_images_without_a_face_follow_the_no_face_policy(shared_dir, tmp_path, policy):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "groups" / "dogs.jpg", source / "dogs.jpg")
    out = tmp_path / "out"
    summary = run(blur_config(source, out, on_no_face=policy))
    row = pq.read_table(out / "manifest.parquet").to_pylist()[0]
    if policy == "fail":
        assert summary.errors == 1 and row["status"] == "error" and "no face" in row["error"]
    else:
        assert summary.no_face_images == 1 and row["status"] == "no_face"
        assert (out / "dogs.jpg").is_file() == (policy == "copy")
    if policy == "copy":
        assert metadata_beyond_icc(metadata_of(out / "dogs.jpg")) == []


def test_the_manifest_command_summarises_a_run(png_portraits, tmp_path):
    out = tmp_path / "out"
    run(blur_config(png_portraits, out, identity_metric=True))
    result = cli("manifest", str(out), "--json")
    summary = json.loads(result.stdout)
    assert summary["images"] == len(PORTRAITS_WITH_ONE_FACE) and summary["faces"] >= len(PORTRAITS_WITH_ONE_FACE)
    assert summary["methods"] == ["blur"] and "dlib_shape_predictor_68" in summary["weights_sha256"]
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert all(row["identity_distance_dlib"] is not None for row in rows)
    params = json.loads(rows[0]["method_params"])
    assert params["sigma"] == pytest.approx(0.08)


def test_the_manifest_reads_with_pandas_and_carries_run_metadata(png_portraits, tmp_path):
    pandas = pytest.importorskip("pandas")
    out = tmp_path / "out"
    (png_portraits / "labels.txt").write_text("a side file: its row has no face index")
    run(blur_config(png_portraits, out, seed=7))
    frame = pandas.read_parquet(out / "manifest.parquet")
    assert len(frame) >= len(PORTRAITS_WITH_ONE_FACE) + 1
    # face_index stays an integer with nulls (pandas' nullable Int32), not float64 with NaN; so do width and height
    for column in ("face_index", "width", "height"):
        assert pandas.api.types.is_integer_dtype(frame[column]), frame[column].dtype
    assert str(frame["face_index"].dtype) == "Int32"
    skipped = frame[frame["status"] == "skipped"]
    assert len(skipped) == 1 and skipped["face_index"].isna().all()
    assert set(frame.loc[frame["status"] == "done", "face_index"].tolist()) == {0}
    from anonymize.io.manifest import read_manifest

    assert "pandas" not in read_manifest(out / "manifest.parquet")[1]  # the run's metadata only
    # a blur run records blur's options, not FALCO's margin, and has only the columns it declares
    params = json.loads(frame.loc[frame["status"] == "done", "method_params"].iloc[0])
    settings = json.loads(read_manifest(out / "manifest.parquet")[1]["settings"])
    assert "margin" not in json.dumps(params) and "margin" not in settings["method_options"]
    assert not any(column.startswith(("id_", "attr_", "fake_")) for column in frame.columns)
    metadata = pq.read_schema(out / "manifest.parquet").metadata
    assert metadata[b"seed"] == b"7"
    assert json.loads(metadata[b"arguments"])["method"] == "blur"


def test_falco_without_its_weights_fails_at_once_and_writes_nothing(png_portraits, tmp_path):
    out = tmp_path / "out"
    result = cli("run", str(png_portraits), "--out", str(out), "--weights-dir", str(tmp_path / "no-weights"),
                 "--detector", "dlib-hog")
    assert result.exit_code == 2
    assert "anonymize weights fetch" in result.output
    assert not out.exists()


def test_method_options_are_checked_before_anything_is_written(png_portraits, tmp_path):
    out = tmp_path / "out"
    result = cli("run", str(png_portraits), "--out", str(out), "--method", "blur", "-p", "sigma=-1")
    assert result.exit_code == 2 and "sigma" in result.output
    result = cli("run", str(png_portraits), "--out", str(out), "--method", "pixelate", "-p", "nope=1")
    assert result.exit_code == 2 and "no option 'nope'" in result.output
    assert not out.exists()


def test_run_with_audit_reports_the_audit_and_passes_for_blur(png_portraits, tmp_path, monkeypatch):
    # the face mesh (a second model) rules out what one detector alone took for a face in these portraits;
    # without it such a possible face, left unchanged, would fail the gate
    mesh = SHARED / "weights" / "human-models"
    if not (mesh / "facemesh.json").is_file():
        pytest.skip(f"{mesh} is absent: the face mesh lives there (see ../shared/README.md)")
    home = tmp_path / "home"
    (home / "human-models").mkdir(parents=True)
    for name in ("facemesh.json", "facemesh.bin"):
        shutil.copyfile(mesh / name, home / "human-models" / name)
    monkeypatch.setenv("ANONYMIZE_HOME", str(home))
    out = tmp_path / "out"
    result = cli("run", str(png_portraits), "--out", str(out), "--method", "blur", "--detector", "dlib-hog", "--audit", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["audit"]["passed"] and report["audit"]["reid"]["reidentified"] == 0
    assert report["audit"]["metadata"]["leaks"] == 0
    assert (tmp_path / "out-audit").is_dir()
