"""Issue 27: nothing leaks through the side doors (items 4, 5 and 8).

* item 4: a photo saved in a format outside the image list (PPM, TGA, PCX, SGI, ICO, JPEG 2000, ...) is an
  image, never a side file that ``--copy-other`` copies byte for byte; ``--copy-other`` never follows a link
  out of the input; the audit counts every released file it did not audit;
* item 5: HEIC and AVIF photos are decoded and anonymized, not "skipped: not an image";
* item 8: a huge file (a sparse 40 GB ``.jpg``) is an error row from its size alone, before it is read, and
  a MemoryError on one image is that image's error row.
"""

from __future__ import annotations

import io
import pathlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.io.decode import decode_image
from anonymize.io.manifest import read_rows
from tests.helpers import cli

PORTRAIT = "kit_harington_2.jpg"  # one face, 630 x 374


def portrait(shared_dir: Path, size: int = 256) -> Image.Image:
    image = Image.open(shared_dir / "data" / "portraits" / PORTRAIT).convert("RGB")
    image.thumbnail((size * 2, size))  # ICO holds at most 256 x 256
    return image


def saved(image: Image.Image, pillow_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **options)
    return buffer.getvalue()


def blur_run(source: Path, out: Path, weights: Path, *extra: object):
    return cli("run", source, "--out", out, "--method", "blur", "--detector", "dlib-hog", "--device", "cpu",
               "--weights-dir", weights, "--workers", "1", "-q", *extra)


def rows_by_source(out: Path) -> dict[str, dict]:
    return {row["source_path"]: row for row in read_rows(out / "manifest.parquet")}


# name -> (Pillow format, options): what Pillow writes here, under names the old image list did not know
OTHER_FORMATS = {
    "face.ppm": ("PPM", {}),
    "face_gray.pgm": ("PPM", {"mode": "L"}),
    "face.tga": ("TGA", {}),
    "face.pcx": ("PCX", {}),
    "face.sgi": ("SGI", {}),
    "face.ico": ("ICO", {"sizes": [(256, 256)]}),
    "face.jp2": ("JPEG2000", {}),
    "face.qoi": ("QOI", {}),
    "face.dds": ("DDS", {}),
    "face.im": ("IM", {}),
    "renamed_ppm.dat": ("PPM", {}),  # a photo under a name no list could know: only its content says so
}


def photos_in_other_formats(shared_dir: Path, root: Path) -> dict[str, bytes]:
    image = portrait(shared_dir)
    written = {}
    root.mkdir(parents=True, exist_ok=True)
    for name, (pillow_format, options) in OTHER_FORMATS.items():
        options = dict(options)
        mode = options.pop("mode", None)
        try:
            data = saved(image.convert(mode) if mode else image, pillow_format, **options)
        except (OSError, KeyError, ValueError):  # a format this Pillow cannot write: left out
            continue
        (root / name).write_bytes(data)
        written[name] = data
    (root / "labels.csv").write_text("file,name\nface.ppm,someone\n")
    return written


def test_copy_other_never_copies_a_photo_saved_in_another_format(shared_dir, tmp_path):
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    written = photos_in_other_formats(shared_dir, source)
    assert {"face.ppm", "face.tga", "face.pcx", "face.sgi", "face.ico", "renamed_ppm.dat"} <= set(written)
    ran = blur_run(source, out, weights, "--copy-other", "--allow-errors")
    assert ran.exit_code == 0, ran.output
    rows = rows_by_source(out)
    for name, data in written.items():
        row = rows[name]
        assert row["status"] == "done", (name, row["status"], row["error"], row["note"])
        output = (out / name).read_bytes()
        assert output != data, f"{name} was copied verbatim"
        assert "written as PNG" in row["note"], row["note"]
        original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
        anonymized = decode_image(out / name).rgb.astype(np.int16)
        x0, y0, x1, y1 = (int(v) for v in row["box"])
        assert np.abs(original[y0:y1, x0:x1] - anonymized[y0:y1, x0:x1]).mean() > 5, f"{name}: face unchanged"
    assert rows["labels.csv"]["status"] == "skipped" and (out / "labels.csv").read_text().startswith("file,name")


def test_copy_other_never_follows_a_link_out_of_the_input(shared_dir, tmp_path):
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "portraits" / PORTRAIT, source / "face.jpg")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secrets.txt").write_text("the real names\n")
    (source / "secrets.txt").symlink_to(outside / "secrets.txt")
    (source / "linked").symlink_to(outside)  # a folder linked from outside: its side files are not copied either
    (source / "notes.txt").write_text("inside\n")
    ran = blur_run(source, out, weights, "--copy-other")
    assert ran.exit_code == 0, ran.output
    assert not (out / "secrets.txt").exists() and not (out / "linked" / "secrets.txt").exists()
    assert (out / "notes.txt").read_text() == "inside\n"
    rows = rows_by_source(out)
    for name in ("secrets.txt", "linked/secrets.txt"):
        assert rows[name]["status"] == "skipped" and "link out of the input" in rows[name]["note"], rows[name]


def test_audit_counts_every_released_file_it_did_not_audit(shared_dir, tmp_path):
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "portraits" / PORTRAIT, source / "face.jpg")
    assert blur_run(source, out, weights).exit_code == 0
    common = ("--detector", "dlib-hog", "--device", "cpu", "--weights-dir", weights, "--no-fid", "--no-heads",
              "--attribute-source", "none")
    clean = cli("audit", source, out, *common, "--fail-on-leak")
    assert clean.exit_code == 0, clean.output  # the run's own manifest and .anonymize folder are not leaks
    # Files that reach a release beside the run's outputs: the face as raw bytes under a name and a content the
    # image walk does not take (a raw dump), a side file, a hidden file.
    raw = np.asarray(portrait(shared_dir)).tobytes()
    (out / "dump").mkdir()
    (out / "dump" / "face.raw").write_bytes(raw)
    (out / "labels.csv").write_text("face.jpg,Kit Harington\n")
    (out / ".thumbs").write_bytes(raw[:1000])
    audited = cli("audit", source, out, *common, "--fail-on-leak")
    assert audited.exit_code == 3, audited.output
    printed = " ".join(audited.output.split())
    for name in ("dump/face.raw", "labels.csv", ".thumbs"):
        assert f"not audited: {name}" in printed, printed


@pytest.mark.parametrize("name", ["face.heic", "face.avif"])
def test_heic_and_avif_photos_are_anonymized(shared_dir, tmp_path, name):
    from PIL import features

    if name.endswith(".heic"):
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
        pillow_format = "HEIF"
    else:
        if not features.check("avif"):
            pytest.skip("this Pillow has no AVIF codec")
        pillow_format = "AVIF"
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    source.mkdir()
    data = saved(portrait(shared_dir, 320), pillow_format, quality=90)
    (source / name).write_bytes(data)
    ran = blur_run(source, out, weights)
    assert ran.exit_code == 0, ran.output
    row = rows_by_source(out)[name]
    assert row["status"] == "done", (row["status"], row["error"], row["note"])
    written = Image.open(out / name)
    assert written.format == pillow_format  # a phone photo stays what it was: same name, same format
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    anonymized = decode_image(out / name).rgb.astype(np.int16)
    x0, y0, x1, y1 = (int(v) for v in row["box"])
    assert np.abs(original[y0:y1, x0:x1] - anonymized[y0:y1, x0:x1]).mean() > 5


def test_a_sparse_40_gb_jpg_is_an_error_row_from_its_size(shared_dir, tmp_path):
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "portraits" / PORTRAIT, source / "face.jpg")
    with open(source / "huge.jpg", "wb") as handle:  # sparse: no block is written
        handle.truncate(40 << 30)
    ran = blur_run(source, out, weights)
    assert ran.exit_code == 4, ran.output  # finished, with an error row
    rows = rows_by_source(out)
    assert rows["face.jpg"]["status"] == "done"
    assert rows["huge.jpg"]["status"] == "error" and "--max-bytes" in rows["huge.jpg"]["error"], rows["huge.jpg"]
    again = blur_run(source, out, weights)  # a resume does not stop on it either
    assert again.exit_code == 4, again.output


def test_max_bytes_bounds_the_files_read(shared_dir, tmp_path):
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "portraits" / PORTRAIT, source / "face.jpg")
    small = portrait(shared_dir, 128)
    small.save(source / "small.jpg", quality=80)
    limit = (source / "small.jpg").stat().st_size + 1
    assert (source / "face.jpg").stat().st_size > limit
    (source / "labels.csv").write_bytes(b"x" * (limit + 10))
    ran = blur_run(source, out, weights, "--max-bytes", limit, "--copy-other", "--allow-errors")
    assert ran.exit_code == 0, ran.output
    rows = rows_by_source(out)
    assert rows["small.jpg"]["status"] == "done"
    assert rows["face.jpg"]["status"] == "error" and f"{limit}-byte limit" in rows["face.jpg"]["error"]
    assert rows["labels.csv"]["status"] == "error" and not (out / "labels.csv").exists()


def test_a_memory_error_on_one_image_is_its_error_row(shared_dir, tmp_path, monkeypatch):
    source, out, weights = tmp_path / "in", tmp_path / "out", tmp_path / "weights"
    source.mkdir()
    shutil.copy(shared_dir / "data" / "portraits" / PORTRAIT, source / "face.jpg")
    shutil.copy(shared_dir / "data" / "portraits" / PORTRAIT, source / "boom.jpg")
    read_bytes = pathlib.Path.read_bytes

    def exhausted(path: pathlib.Path) -> bytes:
        if path.name == "boom.jpg":
            raise MemoryError
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", exhausted)
    ran = blur_run(source, out, weights)
    assert ran.exit_code == 4, ran.output
    rows = rows_by_source(out)
    assert rows["face.jpg"]["status"] == "done"
    assert rows["boom.jpg"]["status"] == "error" and "memory" in rows["boom.jpg"]["error"], rows["boom.jpg"]
