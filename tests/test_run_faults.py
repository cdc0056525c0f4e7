"""Faults injected into a run, and what the user then gets: a row per failing file, one-line errors, nothing lost.

Most runs use small synthetic PNG crops with ``--aligned`` blur (no detection, a fraction of a
second each); the no-face cases use dlib's HOG detector on noise, which finds no face.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anonymize.cli import main
from anonymize.io.decode import decode_image
from anonymize.io.manifest import read_rows
from anonymize.run import RunConfig, RunError, run, run_config
from tests.helpers import cli, crops

REPO = Path(__file__).resolve().parents[1]


def blur(source: Path, out: Path, **overrides) -> RunConfig:
    return run_config(source, out, **{"method": "blur", "aligned": True, "device": "cpu", **overrides})


def no_face(source: Path, out: Path, **overrides) -> RunConfig:
    return run_config(source, out, **{"method": "blur", "detector": "dlib-hog", "device": "cpu", **overrides})


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rows_by_source(out: Path) -> dict[str, dict]:
    return {row["source_path"]: row for row in read_rows(out / "manifest.parquet")}


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


# ---- runs that used to crash on one file ---------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_processed_and_recorded_losslessly(tmp_path):
    source = crops(tmp_path / "in", ["plain.png"])
    raw_name = b"caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8
    Image.open(source / "plain.png").save(os.path.join(os.fsencode(source), raw_name), format="PNG")
    out = tmp_path / "out"
    summary = run(blur(source, out))
    assert summary.errors == 0 and summary.images == 2
    assert os.path.exists(os.path.join(os.fsencode(out), raw_name))
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    row = next(r for r in table if r["source_path_bytes"] == raw_name)
    assert row["status"] == "done" and row["source_path"] == "caf\\xe9-\\xff.png"
    assert os.fsdecode(raw_name) in rows_by_source(out)  # read back exactly
    again = run(blur(source, out))
    assert again.resumed == 2 and again.images == 0


def test_a_name_that_fits_the_file_system_fits_with_the_temporary_suffix(tmp_path):
    long_name = "n" * 240 + ".png"  # 244 bytes: fits NAME_MAX (255); a "." + name + ".XXXXXXXX.tmp" temp name does not
    source = crops(tmp_path / "in", [long_name], size=(64, 64))
    out = tmp_path / "out"
    summary = run(no_face(source, out))  # noise: no face, so the image is copied (the no-face path)
    assert summary.errors == 0 and summary.no_face_images == 1
    assert (out / long_name).is_file()
    summary = run(blur(source, tmp_path / "out2"))  # and the face path
    assert summary.errors == 0 and (tmp_path / "out2" / long_name).is_file()


@pytest.mark.parametrize("config", [no_face, blur], ids=["no-face copy", "anonymized"])
def test_an_output_that_cannot_be_written_is_that_image_s_error_row_and_the_run_goes_on(tmp_path, monkeypatch, config):
    import anonymize.run.finish as stages

    source = crops(tmp_path / "in", ["a.png", "b.png", "c.png"], size=(64, 64))
    real_write = stages.write_image

    def disk_full_for_b(image, rgb, dest, *args, **kwargs):
        if Path(dest).name == "b.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
        return real_write(image, rgb, dest, *args, **kwargs)

    monkeypatch.setattr(stages, "write_image", disk_full_for_b)
    out = tmp_path / "out"
    summary = run(config(source, out))
    rows = rows_by_source(out)
    assert summary.errors == 1 and rows["b.png"]["status"] == "error"
    assert rows["b.png"]["error"] == "b.png: writing the output failed (No space left on device)"
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "b.png").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_manifest_merge_that_fails_at_the_end_is_one_line_and_exit_2_and_the_rerun_resumes(tmp_path, monkeypatch, capsys, code):
    import anonymize.io.manifest as manifest

    source = crops(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    real_write = manifest.atomic_write_bytes

    def failing_final_write(dest, data, root=None):
        if Path(dest).name == "manifest.parquet":
            raise OSError(code, os.strerror(code), str(dest))
        return real_write(dest, data, root=root)

    monkeypatch.setattr(manifest, "atomic_write_bytes", failing_final_write)
    exit_code, stdout, stderr = run_main(capsys, "run", str(source), "--out", str(out), "--method", "blur", "--aligned",
                                         "--device", "cpu", "--quiet")
    assert exit_code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and os.strerror(code) in stderr
    assert "Traceback" not in stderr + stdout
    monkeypatch.undo()
    summary = run(blur(source, out))
    assert summary.resumed == 2 and len(read_rows(out / "manifest.parquet")) == 2


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_first_image(tmp_path, capsys):
    source = crops(tmp_path / "in", ["a.png"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    exit_code, _, stderr = run_main(capsys, "run", str(source), "--out", str(blocker / "out"), "--method", "blur",
                                    "--aligned", "--device", "cpu", "--quiet")
    assert exit_code == 2 and stderr.count("\n") == 1 and "cannot write into the output folder" in stderr


def test_an_output_folder_that_refuses_writes_stops_the_run_before_any_image_is_processed(tmp_path, monkeypatch):
    """Read-only or full at the start: one RunError, and not a single image decoded."""
    import anonymize.io.outdir as outdir
    import anonymize.run.prepare as stages

    source = crops(tmp_path / "in", ["a.png", "b.png"])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    decoded = []
    monkeypatch.setattr(outdir, "write_in_folder", read_only)
    monkeypatch.setattr(stages, "decode_image", lambda *a, **k: decoded.append(a) or decode_image(*a, **k))
    with pytest.raises(RunError, match="cannot write into the output folder .Read-only file system"):
        run(blur(source, tmp_path / "out"))
    assert decoded == []


def test_every_cli_error_is_one_line_without_a_traceback(tmp_path, capsys):
    source = crops(tmp_path / "in", ["a.png"])
    (tmp_path / "file").write_text("x")
    cases = [
        ("run", str(tmp_path / "missing"), "--method", "blur"),
        ("run", str(source), "--method", "nope"),
        ("run", str(source), "--no-such-option"),
        ("run", str(source), "--out", str(tmp_path / "file"), "--method", "blur", "--aligned"),
        ("run", str(source), "--out", str(tmp_path / "o"), "--method", "blur", "--margin", "0.2"),
        ("run", str(source), "--out", str(tmp_path / "o"), "--manifest", str(source / "m.parquet"), "--method", "blur"),
        ("manifest", str(tmp_path / "missing")),
        ("no-such-command",),
    ]
    for args in cases:
        exit_code, stdout, stderr = run_main(capsys, *args)
        assert exit_code == 2, args
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, (args, stderr)
        assert "Traceback" not in stderr + stdout


def test_an_unexpected_exception_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    import anonymize.run.pipeline as pipeline

    source = crops(tmp_path / "in", ["a.png"])

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline.Pipeline, "run", broken)
    exit_code, _, stderr = run_main(capsys, "run", str(source), "--out", str(tmp_path / "o"), "--method", "blur")
    assert exit_code == 1 and stderr.count("\n") == 1 and "internal error (ZeroDivisionError: a bug)" in stderr
    monkeypatch.setenv("ANONYMIZE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["run", str(source), "--out", str(tmp_path / "o"), "--method", "blur"])


# ---- the output folder: lock, marker, links ------------------------------------------------------


def test_a_second_run_into_a_locked_output_folder_fails_fast(tmp_path):
    from anonymize.io.outdir import acquire_lock

    source = crops(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    held = acquire_lock(out)
    try:
        result = cli("run", str(source), "--out", str(out), "--method", "blur", "--aligned", "--device", "cpu")
        assert result.exit_code == 2
        assert f"another anonymize run (pid {os.getpid()} on host" in result.output
        assert not (out / "a.png").exists()
    finally:
        held.release()
    assert run(blur(source, out)).images == 1


def test_two_processes_never_run_into_the_same_folder_at_once(tmp_path):
    """A real second process holding the lock: the run refuses at once instead of deleting its parts."""
    source = crops(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from anonymize.io.outdir import acquire_lock; "
                               "acquire_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"pid {holder.pid} on host"):
            run(blur(source, out))
    finally:
        holder.kill()
        holder.wait()
    assert run(blur(source, out)).images == 1  # the kernel dropped the dead holder's lock


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    source = crops(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".anonymize").mkdir(parents=True)
    (out / ".anonymize" / "lock").write_text(json.dumps({"pid": dead.pid, "host": "old-host"}))
    result = cli("run", str(source), "--out", str(out), "--method", "blur", "--aligned", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"took over the lock left by pid {dead.pid} on host old-host" in " ".join(result.stderr.split())
    assert (out / "a.png").is_file() and not (out / ".anonymize" / "lock").exists()


def test_the_output_folder_is_marked_before_the_first_output_is_written(tmp_path, monkeypatch):
    import anonymize.run.finish as stages

    source = crops(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    seen = []
    real_write = stages.write_image

    def check_marked(*args, **kwargs):
        seen.append((out / ".anonymize" / "run.json").is_file())
        return real_write(*args, **kwargs)

    monkeypatch.setattr(stages, "write_image", check_marked)
    run(blur(source, out))
    assert seen == [True]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_symlink_in_the_output_tree_is_never_written_through(tmp_path, overwrite):
    source = crops(tmp_path / "in", ["a.png", "sub/b.png"])
    out = tmp_path / "out"
    run(blur(source, out))
    before = tree_bytes(source)
    # Someone replaces an output and an output folder by links into the input tree.
    (out / "a.png").unlink()
    (out / "a.png").symlink_to(source / "a.png")
    for child in (out / "sub").iterdir():
        child.unlink()
    (out / "sub").rmdir()
    (out / "sub").symlink_to(source / "sub", target_is_directory=True)
    summary = run(blur(source, out, resume=False, overwrite=overwrite))
    assert tree_bytes(source) == before, "an input file was written through a link"
    assert not (out / "a.png").is_symlink() and (out / "a.png").is_file()  # the link itself was replaced
    rows = rows_by_source(out)
    assert rows["sub/b.png"]["status"] == "error" and "symbolic link" in rows["sub/b.png"]["error"]
    assert summary.errors == 1


def test_a_resumed_run_does_not_count_a_link_as_a_finished_output(tmp_path):
    source = crops(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    run(blur(source, out))
    (out / "a.png").unlink()
    (out / "a.png").symlink_to(source / "a.png")
    summary = run(blur(source, out))
    assert summary.resumed == 0 and summary.images == 1 and not (out / "a.png").is_symlink()


def test_a_manifest_path_inside_the_input_is_refused_like_the_output(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "b.png"])
    before = tree_bytes(source)
    for manifest in (source / "a.png", source / "deeper" / "m.parquet"):
        result = cli("run", str(source), "--out", str(tmp_path / "out"), "--manifest", str(manifest), "--method", "blur",
                     "--aligned", "--device", "cpu")
        assert result.exit_code == 2 and "inside the input folder" in result.output
    assert tree_bytes(source) == before and not (tmp_path / "out").exists()
    summary = run(blur(source, tmp_path / "out", manifest_path=tmp_path / "elsewhere" / "m.parquet"))
    assert summary.images == 2 and (tmp_path / "elsewhere" / "m.parquet").is_file()


# ---- resume only with the same settings ----------------------------------------------------------


def test_a_rerun_with_another_method_or_options_stops_and_offers_overwrite(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    run(blur(source, out, limit=1))
    for changed in ({"method": "pixelate"}, {"method_options": {"sigma": "0.2"}}, {"region": "hull"}, {"jpeg_quality": 80}):
        with pytest.raises(RunError, match="other settings.*--overwrite"):
            run(blur(source, out, **changed))
    summary = run(blur(source, out, method="pixelate", overwrite=True))
    assert summary.images == 2 and summary.resumed == 0
    assert {row["method"] for row in read_rows(out / "manifest.parquet")} == {"pixelate"}
    assert run(blur(source, out, method="pixelate")).resumed == 2


# ---- rows for everything the walk meets ----------------------------------------------------------


def test_every_file_the_walk_meets_and_does_not_process_gets_a_row(tmp_path, monkeypatch):
    import anonymize.io.walk as walk

    source = crops(tmp_path / "in", ["a.png", "locked/hidden-away.png"])
    frames = [Image.new("L", (8, 8), value) for value in (0, 120, 240)]
    frames[0].save(source / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("P", (8, 8)).save(source / "still.gif")
    (source / "labels.csv").write_text("a,1\n")
    (source / ".DS_Store").write_bytes(b"\0\0")
    (source / "gone.txt").symlink_to(tmp_path / "nowhere")
    os.mkfifo(source / "pipe")
    deep = _deep_tree(source)  # a path longer than the system's limit
    real_scandir = walk.os.scandir

    def unlistable(path):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(walk.os, "scandir", unlistable)
    out = tmp_path / "out"
    summary = run(blur(source, out))
    rows = rows_by_source(out)
    assert rows["a.png"]["status"] == "done" and summary.images == 1
    assert rows["anim.gif"]["status"] == "error" and "multi-frame GIF (3 frames) is not supported" in rows["anim.gif"]["error"]
    assert rows["still.gif"]["status"] == "error" and "unsupported image format (GIF)" in rows["still.gif"]["error"]
    assert rows["labels.csv"]["status"] == "skipped" and rows["labels.csv"]["note"] == "not an image"
    assert rows[".DS_Store"]["status"] == "skipped" and "hidden" in rows[".DS_Store"]["note"]
    assert rows["gone.txt"]["status"] == "skipped" and "cannot be read" in rows["gone.txt"]["note"]
    assert rows["pipe"]["status"] == "skipped" and rows["pipe"]["note"] == "not a regular file"
    assert rows["locked"]["status"] == "error" and "cannot list folder (Permission denied)" in rows["locked"]["error"]
    assert rows[deep]["status"] == "error" and "too long" in rows[deep]["error"]
    assert all(row["output_path"] is None for name, row in rows.items() if name != "a.png")


def _deep_tree(source: Path) -> str:
    """Nested folders whose full path exceeds PATH_MAX (4096), built with folder descriptors."""
    name = "d" * 200
    descriptor = os.open(source, os.O_RDONLY)
    depth = 0
    while len(str(source)) + depth * (len(name) + 1) < 4200:
        os.mkdir(name, dir_fd=descriptor)
        child = os.open(name, os.O_RDONLY, dir_fd=descriptor)
        os.close(descriptor)
        descriptor, depth = child, depth + 1
    os.close(descriptor)
    # The walk lists folders by path; the first one it cannot reach is where the row goes.
    for level in range(1, depth + 1):
        if len(str(source)) + level * (len(name) + 1) >= 4096:
            return "/".join([name] * level)
    raise AssertionError("tree not deep enough")


def test_non_image_files_are_listed_as_skipped_and_copied_only_with_copy_other(tmp_path):
    source = crops(tmp_path / "in", ["a.png"])
    (source / "meta").mkdir()
    (source / "meta" / "labels.csv").write_text("name,id\na,Jane Doe\n")
    result = cli("run", str(source), "--out", str(tmp_path / "plain"), "--method", "blur", "--aligned", "--device", "cpu", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] == 1
    row = rows_by_source(tmp_path / "plain")["meta/labels.csv"]
    assert (row["status"], row["note"], row["output_path"]) == ("skipped", "not an image", None)
    assert not (tmp_path / "plain" / "meta" / "labels.csv").exists()
    result = cli("run", str(source), "--out", str(tmp_path / "copied"), "--method", "blur", "--aligned", "--device", "cpu",
                 "--copy-other")
    assert result.exit_code == 0
    assert (tmp_path / "copied" / "meta" / "labels.csv").read_text() == "name,id\na,Jane Doe\n"
    row = rows_by_source(tmp_path / "copied")["meta/labels.csv"]
    assert row["status"] == "skipped" and row["output_path"] == "meta/labels.csv" and "copied" in row["note"]


# ---- 16-bit, pixel limit -------------------------------------------------------------------------


def _png(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_sixteen_bit_gray_stays_sixteen_bit_and_untouched_pixels_keep_their_values(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 13 % 65536).astype(np.uint16)
    Image.fromarray(values).save(source / "gray16.png")
    Image.fromarray(values).save(source / "gray16.tif")
    out = tmp_path / "out"
    run(blur(source, out))
    for name in ("gray16.png", "gray16.tif"):
        written = Image.open(out / name)
        assert written.mode == "I;16", name
        result = np.asarray(written)
        assert result[0, 0] == values[0, 0] and result[63, 63] == values[63, 63], "corners lie outside the face ellipse"
        assert (result != values).any(), "the face region was anonymized"
        assert rows_by_source(out)[name]["note"] is None


def test_sixteen_bit_colour_is_written_as_eight_bit_and_the_row_says_so(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    pixels = np.random.default_rng(0).integers(0, 65536, (16, 16, 3), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(16))
    (source / "rgb48.png").write_bytes(_png(16, 16, 16, 2, rows))
    out = tmp_path / "out"
    run(blur(source, out))
    assert rows_by_source(out)["rgb48.png"]["note"] == "16-bit colour read and written as 8-bit colour"
    assert Image.open(out / "rgb48.png").mode == "RGB"


def test_max_pixels_on_the_command_line_refuses_larger_images(tmp_path):
    source = crops(tmp_path / "in", ["small.png"], size=(20, 20))
    crops(source, ["large.png"], size=(100, 100))
    out = tmp_path / "out"
    result = cli("run", str(source), "--out", str(out), "--method", "blur", "--aligned", "--device", "cpu",
                 "--max-pixels", "5000", "--json")
    assert result.exit_code == 4 and json.loads(result.stdout)["exit_code"] == 4  # an error row: non-zero for CI
    rows = rows_by_source(out)
    assert rows["small.png"]["status"] == "done"
    assert rows["large.png"]["status"] == "error" and "exceeds the 5000-pixel limit" in rows["large.png"]["error"]


# ---- the CLI's outputs ---------------------------------------------------------------------------


def test_json_errors_are_a_json_object_on_stdout(tmp_path, capsys):
    exit_code, stdout, stderr = run_main(capsys, "run", str(tmp_path / "missing"), "--method", "blur", "--json")
    assert exit_code == 2 and json.loads(stdout) == {"error": f"{tmp_path / 'missing'}: input folder does not exist", "exit_code": 2}
    exit_code, stdout, _ = run_main(capsys, "run", str(tmp_path), "--method", "nope", "--json")
    assert exit_code == 2 and json.loads(stdout)["exit_code"] == 2 and "--method" in json.loads(stdout)["error"]
    exit_code, stdout, _ = run_main(capsys, "manifest", str(tmp_path / "missing"), "--json")
    assert exit_code == 2 and "no manifest here" in json.loads(stdout)["error"]


def test_version(capsys):
    from anonymize import __version__

    exit_code, stdout, _ = run_main(capsys, "--version")
    assert exit_code == 0 and stdout.strip() == f"anonymize {__version__}"


def test_summaries_go_to_stdout_and_warnings_and_progress_to_stderr(tmp_path):
    source = crops(tmp_path / "in", ["a.png"])
    (source / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = cli("run", str(source), "--out", str(out), "--method", "blur", "--aligned", "--device", "cpu", "--allow-errors")
    assert result.exit_code == 0
    assert "anonymize run" in result.stdout and "no-face images" in result.stdout
    assert "bad.png" in result.stderr and "bad.png" not in result.stdout
    manifest = cli("manifest", str(out))
    assert "faces" in manifest.stdout and manifest.stderr == ""


def test_a_method_flag_given_to_a_method_that_does_not_use_it_is_an_error(tmp_path):
    source = crops(tmp_path / "in", ["a.png"])
    result = cli("run", str(source), "--out", str(tmp_path / "out"), "--method", "blur", "--margin", "0.3")
    assert result.exit_code == 2 and "--margin only applies to --method falco" in result.output
    assert not (tmp_path / "out").exists()
