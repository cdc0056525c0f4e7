"""Inputs and outputs named by URI go through pyarrow's file systems and give the run of plain paths.

A StorePath over this machine's disk (``on_disk_store``: built directly, since the command line turns a
``file://`` URI into the plain path it names) takes the same code as ``s3://`` and ``gs://`` (object
writes, the lock object), so it shows, on this machine, that a store run writes the same pixels and
rows as a run over plain paths, resumes, and refuses what a local run refuses. One test runs on a real
S3 API (moto's server on 127.0.0.1) when moto is installed (the ``dev`` extra). The last tests show that
a ``file://`` URI on the command line keeps every guarantee of a plain path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import _register_commands, app
from anonymize.io import store
from anonymize.io.decode import decode_bytes
from anonymize.io.manifest import read_manifest, read_rows
from anonymize.io.outdir import LOCK_STALE_SECONDS
from anonymize.run import RunError, run, run_config
from anonymize.run.progress import Progress
from tests.helpers import VARYING_COLUMNS, assert_same_run, crops, manifest_rows

PHOTOS = {"kit_harington_2.jpg": "kit.jpg", "multi_kit_with_rose.jpg": "sub/two.jpg"}
BLUR = ("--method", "blur", "--detector", "dlib-hog", "--device", "cpu", "--workers", "1")  # serial: one detector to load


def cli(*args: str):
    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def summary_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:") and "\n" not in message, message
    return message


def on_disk_store(path: Path) -> store.StorePath:
    """``path`` reached through pyarrow's local file system, as a store would be (no link, no flock)."""
    return store.StorePath(path.as_uri())


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def photos(shared_dir: Path, tmp_path_factory) -> Path:
    """Two small portraits (one in a subfolder), an image without a face and a side file."""
    source = tmp_path_factory.mktemp("store") / "photos"
    for name, target in PHOTOS.items():
        (source / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_dir / "data" / "portraits" / name, source / target)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(source / "sub" / "noise.png")
    (source / "labels.csv").write_text("name,label\nkit,1\n")
    return source


@pytest.fixture(scope="module")
def plain_run(photos: Path) -> Path:
    """The reference: the same run with plain local paths."""
    out = photos.parent / "plain"
    summary_of(cli("run", photos, "--out", out, *BLUR, "--json"))
    return out


def store_blur(source: store.Location, out: store.Location, **overrides):
    return run_config(source, out, **{"method": "blur", "detector": "dlib-hog", "device": "cpu", "workers": 1, **overrides})


def test_a_run_between_store_paths_equals_the_run_with_plain_paths_and_resumes(photos, plain_run):
    out = photos.parent / "uri-to-uri"
    first = run(store_blur(on_disk_store(photos), on_disk_store(out)))
    assert (first.images, first.errors) == (len(PHOTOS) + 1, 0)
    assert first.output_dir == out.as_uri()
    assert_same_run(plain_run, out)
    assert not (out / ".anonymize" / "lock").exists() and not (out / ".anonymize" / "parts").exists()
    written = tree_digest(out)

    again = run(store_blur(on_disk_store(photos), on_disk_store(out)))
    assert (again.images, again.resumed) == (0, len(PHOTOS) + 1)
    assert {name: digest for name, digest in tree_digest(out).items() if not name.endswith(".parquet")} == \
        {name: digest for name, digest in written.items() if not name.endswith(".parquet")}
    assert_same_run(plain_run, out)


@pytest.mark.parametrize("uri_side", ["input", "output"])
def test_a_local_path_and_a_uri_mix(photos, plain_run, uri_side):
    out = photos.parent / f"mixed-{uri_side}"
    source = photos.as_uri() if uri_side == "input" else str(photos)
    target = out.as_uri() if uri_side == "output" else str(out)
    summary_of(cli("run", source, "--out", target, *BLUR, "--json"))
    assert_same_run(plain_run, out)


class RecordingHandler(pafs.FSSpecHandler):
    """A pyarrow file system over the local disk that remembers what the run read and wrote through it."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        import fsspec

        super().__init__(fsspec.filesystem("file"))
        self.calls = calls

    def open_input_stream(self, path):
        self.calls.append(("read", path))
        return super().open_input_stream(path)

    def open_output_stream(self, path, metadata):
        self.calls.append(("write", path))
        return super().open_output_stream(path, metadata)

    def move(self, src, dest):
        self.calls.append(("move", dest))
        return super().move(src, dest)


def test_a_uri_run_reads_and_writes_only_through_the_pyarrow_file_system(photos, plain_run, tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    recording = pafs.PyFileSystem(RecordingHandler(calls))
    real = store.file_system_of
    monkeypatch.setattr(store, "file_system_of", lambda root: (recording, real(root)[1]))
    out = tmp_path / "recorded"
    config = store_blur(on_disk_store(photos), on_disk_store(out))
    assert isinstance(config.inputs.input_dir, store.StorePath) and isinstance(config.output.output_dir, store.StorePath)
    summary = run(config)
    assert summary.images == len(PHOTOS) + 1 and summary.errors == 0
    read = {Path(path) for kind, path in calls if kind == "read"}
    moved = {Path(path) for kind, path in calls if kind == "move"}
    images = {photos / name for name in [*PHOTOS.values(), "sub/noise.png"]}
    assert images <= read  # every source read through pyarrow
    assert {out / name for name in [*PHOTOS.values(), "sub/noise.png"]} | {out / "manifest.parquet"} <= moved
    assert all(kind != "write" or Path(path).name.endswith(".tmp") for kind, path in calls)  # written beside, then moved
    assert_same_run(plain_run, out)


def test_an_output_inside_or_around_the_input_is_refused_for_uris(photos):
    before = tree_digest(photos)
    inside = one_line_error(cli("run", photos.as_uri(), "--out", (photos / "anon").as_uri(), *BLUR))
    assert "inside the input folder" in inside
    assert "inside the input folder" in one_line_error(cli("run", photos, "--out", (photos / "sub" / "anon").as_uri(), *BLUR))
    assert "must differ" in one_line_error(cli("run", photos.as_uri(), "--out", photos, *BLUR))
    assert "contains the input folder" in one_line_error(cli("run", (photos / "sub").as_uri(), "--out", photos.as_uri(), *BLUR))
    assert tree_digest(photos) == before


def test_a_bad_uri_gives_one_line_naming_it_and_exit_2(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")  # no credential look-up on this machine
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    out = str(tmp_path / "out")
    unknown = one_line_error(cli("run", "foo://bucket/faces", "--out", out, *BLUR))
    assert "foo://bucket/faces" in unknown and "unknown URI scheme" in unknown
    assert "Missing bucket name" in one_line_error(cli("run", "s3:///faces", "--out", out, *BLUR))
    missing = one_line_error(cli("run", (tmp_path / "nothing").as_uri(), "--out", out, *BLUR))
    assert str(tmp_path / "nothing") in missing and "does not exist" in missing
    assert "no host" in one_line_error(cli("run", "file://somehost/faces", "--out", out, *BLUR))
    started = time.monotonic()
    unreachable = one_line_error(cli("run", photos, "--out", "s3://bucket/faces?endpoint_override=127.0.0.1:9&scheme=http", *BLUR))
    assert "s3://bucket/faces: cannot reach the store" in unreachable and "endpoint_override" not in unreachable
    assert time.monotonic() - started < 60  # fails, never hangs (pyarrow retries for a few seconds)
    assert not Path(out).exists()


def test_a_fresh_lock_object_refuses_a_second_run_and_a_stale_one_is_taken_over(photos, tmp_path):
    out = tmp_path / "locked"
    lock = out / ".anonymize" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "token": "0123"}))
    with pytest.raises(RunError, match=r"another anonymize run \(pid 4242 on host elsewhere\)"):
        run(store_blur(photos, on_disk_store(out)))
    assert sorted(path.name for path in out.rglob("*")) == [".anonymize", "lock"]

    old = time.time() - LOCK_STALE_SECONDS - 60
    os.utime(lock, (old, old))
    warnings = WarningsSeen()
    run(store_blur(photos, on_disk_store(out)), warnings)
    assert any("took over the lock left by pid 4242 on host elsewhere" in line for line in warnings.lines)
    assert not lock.exists() and (out / "manifest.parquet").is_file()


class WarningsSeen(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


# -- a real S3 API ------------------------------------------------------------------------------------------
@pytest.fixture
def s3_server(monkeypatch):
    moto_server = pytest.importorskip("moto.server", reason="moto is not installed (pip install -e '.[dev]')")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"endpoint_override={host}:{port}&scheme=http"
    finally:
        server.stop()
        store.file_system_of.cache_clear()


def test_a_run_on_an_s3_api_equals_the_local_run_and_resumes(photos, plain_run, s3_server):
    query = s3_server
    file_system, _ = pafs.FileSystem.from_uri(f"s3://faces?{query}&allow_bucket_creation=true")
    file_system.create_dir("faces")
    for path in sorted(p for p in photos.rglob("*") if p.is_file()):
        with file_system.open_output_stream(f"faces/in/{path.relative_to(photos).as_posix()}") as stream:
            stream.write(path.read_bytes())

    source, target = f"s3://faces/in?{query}", f"s3://faces/out?{query}"
    first = summary_of(cli("run", source, "--out", target, *BLUR, "--json"))
    assert (first["images"], first["errors"], first["output_dir"]) == (len(PHOTOS) + 1, 0, "s3://faces/out")
    listed = {info.path.removeprefix("faces/out/") for info in file_system.get_file_info(pafs.FileSelector("faces/out", recursive=True))
              if info.is_file}
    expected = {*PHOTOS.values(), "sub/noise.png", "manifest.parquet", ".anonymize/run.json"}
    assert listed == expected  # no lock, no part, no temporary object left
    for name in [*PHOTOS.values(), "sub/noise.png"]:
        with file_system.open_input_stream(f"faces/out/{name}") as stream:
            written = decode_bytes(stream.read(), name).rgb
        with open(plain_run / name, "rb") as handle:
            assert np.array_equal(written, decode_bytes(handle.read(), name).rgb), name
    rows = read_manifest(store.location(target) / "manifest.parquet")[0].to_pylist()
    assert sorted(({k: v for k, v in row.items() if k not in VARYING_COLUMNS} for row in rows),
                  key=lambda row: (row["source_path"], row["face_index"] or -1)) == \
        sorted(manifest_rows(plain_run), key=lambda row: (row["source_path"], row["face_index"] or -1))
    assert "endpoint_override" not in json.dumps(read_manifest(store.location(target) / "manifest.parquet")[1])  # no query recorded

    again = summary_of(cli("run", source, "--out", target, *BLUR, "--json"))
    assert (again["images"], again["resumed"]) == (0, len(PHOTOS) + 1)

    missing = one_line_error(cli("run", f"s3://no-such-bucket/in?{query}", "--out", target, *BLUR))
    assert "s3://no-such-bucket/in" in missing and "bucket 'no-such-bucket' does not exist" in missing



def test_a_held_lock_object_is_kept_fresh_and_removed_on_release(tmp_path, monkeypatch):
    from anonymize.io import outdir

    monkeypatch.setattr(outdir, "LOCK_REFRESH_SECONDS", 0.05)
    out = on_disk_store(tmp_path / "out")
    lock = outdir.acquire_lock(out)
    path = tmp_path / "out" / ".anonymize" / "lock"
    try:
        old = time.time() - LOCK_STALE_SECONDS - 60
        os.utime(path, (old, old))
        deadline = time.monotonic() + 10
        while path.stat().st_mtime < time.time() - 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > time.time() - 30  # rewritten by the refreshing thread
        with pytest.raises(outdir.OutputFolderBusy, match="another anonymize run"):
            outdir.probe_lock(out)
    finally:
        lock.release()
    assert not path.exists()
    outdir.probe_lock(out)  # free again


def test_saved_latents_go_through_the_store_like_every_other_output(tiny_env, shared_dir, tmp_path):
    """--save-latents into a URI output: the method writes through its storage handle, never a local path."""
    source = tmp_path / "celeba"
    source.mkdir()
    for photo in sorted((shared_dir / "data" / "celeba-ids" / "0").glob("*.jpg"))[:2]:
        shutil.copy(photo, source / photo.name)
    out = tmp_path / "out"
    summary = run(run_config(on_disk_store(source), on_disk_store(out), method="falco", aligned=True,
                             device="cpu", method_options={"steps": "1", "bank_size": "16", "save_latents": "true"}))
    assert summary.faces == 2 and summary.errors == 0
    rows = read_manifest(out / "manifest.parquet")[0].to_pylist()
    for row in rows:
        assert row["latent_path"].startswith(".anonymize/latents/")
        assert np.load(out / row["latent_path"]).ndim == 2


# -- file:// is this machine's disk: every guarantee of a plain path ------------------------------------------
ALIGNED_BLUR = ("--method", "blur", "--aligned", "--device", "cpu", "--workers", "1")  # no detection: fast


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def rows_of(out: Path) -> dict[str, dict]:
    return {row["source_path"]: row for row in read_rows(out / "manifest.parquet")}


def test_a_file_uri_output_never_writes_through_a_link_into_the_input(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "sub/b.png"])
    out = tmp_path / "out"
    assert cli("run", source.as_uri(), "--out", out.as_uri(), *ALIGNED_BLUR, "--quiet").exit_code == 0
    before = tree_bytes(source)
    shutil.rmtree(out / "sub")
    (out / "sub").symlink_to(source / "sub", target_is_directory=True)  # an output folder replaced by a link into the input
    cli("run", source.as_uri(), "--out", out.as_uri(), *ALIGNED_BLUR, "--overwrite", "--quiet")
    assert tree_bytes(source) == before, "an input file was written through a link"
    row = rows_of(out)["sub/b.png"]
    assert row["status"] == "error" and "symbolic link" in row["error"]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".anonymize").symlink_to(source / "sub", target_is_directory=True)  # the work folder linked into the input
    refused = one_line_error(cli("run", source.as_uri(), "--out", fresh.as_uri(), *ALIGNED_BLUR))
    assert "symbolic link" in refused
    assert tree_bytes(source) == before and sorted(path.name for path in fresh.iterdir()) == [".anonymize"]


def test_a_file_uri_input_is_walked_like_the_plain_path_links_loops_and_fifos_included(tmp_path):
    """The walk of a plain path enters each real folder once and gives a FIFO its row; so does file://."""
    source = crops(tmp_path / "in", ["a.png", "sub/b.png"])
    (source / "loop").symlink_to(source, target_is_directory=True)  # one loop ...
    (source / "sub" / "back").symlink_to(source / "sub", target_is_directory=True)  # ... and a second one
    os.mkfifo(source / "pipe")
    plain, uri = tmp_path / "plain", tmp_path / "uri"
    arguments = ("-m", "anonymize", "run", "--method", "blur", "--aligned", "--device", "cpu", "--workers", "1", "--quiet")
    for target, given in ((plain, str(source)), (uri, source.as_uri())):  # a child process: a walk that never ends must not hang the suite
        done = subprocess.run([sys.executable, *arguments[:3], given, "--out", str(target), *arguments[3:]],
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
    assert_same_run(plain, uri)
    rows = rows_of(uri)
    assert sorted(name for name, row in rows.items() if row["status"] == "done") == ["a.png", "sub/b.png"]  # each image once
    assert rows["pipe"]["status"] == "skipped" and rows["pipe"]["note"] == "not a regular file"
    assert rows["loop"]["note"] == rows["sub/back"]["note"] == "link to a folder already walked"


def test_a_manifest_named_by_file_uri_is_written_and_read_back(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "b.png"])
    manifest = tmp_path / "elsewhere" / "m.parquet"
    arguments = ("run", source.as_uri(), "--out", (tmp_path / "out").as_uri(), "--manifest", manifest.as_uri(), *ALIGNED_BLUR)
    first = summary_of(cli(*arguments, "--json"))
    assert first["images"] == 2 and first["errors"] == 0
    assert sorted(row["source_path"] for row in read_rows(manifest)) == ["a.png", "b.png"]
    assert [path.name for path in manifest.parent.iterdir()] == ["m.parquet"]  # no temporary file left beside it
    assert summary_of(cli(*arguments, "--json"))["resumed"] == 2


@pytest.mark.parametrize("form", ["path", "file URI"])
def test_a_manifest_location_that_cannot_be_written_stops_the_run_before_the_first_image(tmp_path, form):
    source = crops(tmp_path / "in", ["a.png"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    manifest = blocker / "m.parquet"
    out = tmp_path / "out"
    message = one_line_error(cli("run", source, "--out", out, "--manifest", manifest if form == "path" else manifest.as_uri(),
                                 *ALIGNED_BLUR, "--quiet"))
    assert str(manifest) in message and "cannot write the manifest" in message
    assert not (out / "a.png").exists() and not (out / ".anonymize" / "parts").exists()
