"""``--detector auto`` (present, fetched, packaged fallback), safe loading of detector weights, and the manifest record."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import pickle
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from anonymize.faces.choose import OFFLINE_ENV, choose_detector
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.run import run, run_config
from anonymize.weights import WeightsError, WeightsStore, read_lock
from tests.helpers import SHARED_RETINAFACE, UNREACHABLE

RETINAFACE = "retinaface_mobilenet0.25"


def _lock(tiny_weights, **retinaface_changes):
    lock = read_lock(tiny_weights.lock_path)
    lock[RETINAFACE] = dataclasses.replace(lock[RETINAFACE], **retinaface_changes)
    return lock


@pytest.fixture
def retinaface_file():
    if not SHARED_RETINAFACE.is_file():
        pytest.skip(f"{SHARED_RETINAFACE} is absent: the RetinaFace weights live there")
    return SHARED_RETINAFACE


@pytest.fixture
def served(retinaface_file, tmp_path):
    """An HTTP server on localhost offering the RetinaFace file; yields its URL."""
    folder = tmp_path / "www"
    folder.mkdir()
    shutil.copyfile(retinaface_file, folder / "mobilenet0.25_Final.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mobilenet0.25_Final.pth"
    server.shutdown()


def test_auto_runs_retinaface_with_mtcnn_searching_harder_when_its_weights_are_present(tiny_weights):
    if tiny_weights.store().status(RETINAFACE) != "present":
        pytest.skip("RetinaFace weights are not in ../shared")
    choice = choose_detector("auto", tiny_weights.store(), allow_download=False)
    assert (choice.name, choice.requested, choice.augment) == ("ensemble", "auto", True)
    assert "verified weights" in choice.reason and "retinaface+mtcnn" in choice.reason and "mirror" in choice.reason


def test_auto_runs_retinaface_alone_without_mtcnn(tiny_weights, tmp_path):
    if tiny_weights.store().status(RETINAFACE) != "present":
        pytest.skip("RetinaFace weights are not in ../shared")
    lock = _lock(tiny_weights)
    for name in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"):
        lock[name] = dataclasses.replace(lock[name], source="package:no_such_package_here")
    store = WeightsStore(tiny_weights.weights_dir, lock=lock)
    choice = choose_detector("auto", store, allow_download=False)
    assert (choice.name, choice.augment) == ("retinaface", True) and "MTCNN is not installed" in choice.reason


def test_auto_fetches_retinaface_on_first_use_and_keeps_it(tiny_weights, served, tmp_path):
    store = WeightsStore(tmp_path / "weights", lock=_lock(tiny_weights, url=served))
    progress = []
    choice = choose_detector("auto", store, progress=lambda label, done, total: progress.append((label, done, total)))
    assert choice.name == "ensemble" and "downloaded" in choice.reason
    assert store.status(RETINAFACE) == "present"
    assert progress[-1][1] == progress[-1][2] == 1789735 or progress[-1][1] == 1789735
    again = []
    assert choose_detector("auto", store, progress=lambda *args: again.append(args)).name == "ensemble"
    assert again == []  # cached: nothing downloaded twice


def test_without_network_auto_falls_back_to_mtcnn_and_says_why(tiny_weights, tmp_path):
    store = WeightsStore(tmp_path / "weights", lock=_lock(tiny_weights, url=f"{UNREACHABLE}/retinaface.pth"))
    choice = choose_detector("auto", store)
    assert (choice.name, choice.augment) == ("mtcnn", True)
    assert "RetinaFace weights missing" in choice.reason and "download failed" in choice.reason
    assert "\n" not in choice.reason
    assert store.status(RETINAFACE) == "missing"  # no half-downloaded file taken for the real one


def test_offline_setting_skips_the_download(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    store = WeightsStore(tmp_path / "weights", lock=_lock(tiny_weights, url="http://192.0.2.1/never-asked.pth"))
    choice = choose_detector("auto", store)
    assert choice.name == "mtcnn" and OFFLINE_ENV in choice.reason


def test_without_facenet_pytorch_auto_falls_back_to_dlib(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    lock = _lock(tiny_weights)
    for name in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"):
        lock[name] = dataclasses.replace(lock[name], source="package:no_such_package_here")
    choice = choose_detector("auto", WeightsStore(tmp_path / "weights", lock=lock))
    assert choice.name == "dlib-hog"


def test_a_named_detector_is_used_as_asked(tiny_weights):
    assert choose_detector("dlib-hog", tiny_weights.store()).name == "dlib-hog"
    with pytest.raises(ValueError, match="unknown detector"):
        choose_detector("haar", tiny_weights.store())


class _WritesMarker:
    """A pickle whose loading would create a file: the attack on a plain torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _hostile_store(tiny_weights, tmp_path, artefact):
    """A store whose lock pins a hostile pickle at the artefact's place (as a forged record or --trust-unverified would)."""
    marker = tmp_path / "marker"
    lock = read_lock(tiny_weights.lock_path)
    filename = lock[artefact].filename if lock[artefact].package is None else f"mtcnn/{Path(lock[artefact].filename).name}"
    hostile = tmp_path / "weights" / filename
    hostile.parent.mkdir(parents=True, exist_ok=True)
    with open(hostile, "wb") as handle:
        pickle.dump({"conv1.weight": _WritesMarker(marker)}, handle, protocol=2)
    lock[artefact] = dataclasses.replace(lock[artefact], source="download", filename=filename,
                                         sha256=hashlib.sha256(hostile.read_bytes()).hexdigest(), size=hostile.stat().st_size)
    return WeightsStore(tmp_path / "weights", lock=lock), marker


def test_the_hostile_pickle_does_run_code_when_unpickled(tiny_weights, tmp_path):
    store, marker = _hostile_store(tiny_weights, tmp_path, RETINAFACE)
    with open(store.path(RETINAFACE), "rb") as handle:
        pickle.load(handle)  # what a plain torch.load with weights_only=False amounts to
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("detector_name, artefact", [("retinaface", RETINAFACE), ("mtcnn", "mtcnn_pnet")])
def test_a_pickle_in_place_of_detector_weights_runs_no_code(detector_name, artefact, tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    store, marker = _hostile_store(tiny_weights, tmp_path, artefact)
    with pytest.raises(WeightsError) as refused:
        create_detector(detector_name, store, DetectorSettings())
    assert not marker.exists()
    message = str(refused.value)
    assert "\n" not in message and artefact in message and "refused to unpickle" in message


def test_the_manifest_records_the_detector_that_ran(tiny_weights, shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    photos = tmp_path / "in"
    photos.mkdir()
    shutil.copyfile(shared_dir / "data" / "groups" / "2008_002506.jpg", photos / "group.jpg")
    store = WeightsStore(tmp_path / "empty-weights", lock=read_lock(tiny_weights.lock_path))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(tiny_weights.lock_path))
    summary = run(run_config(photos, tmp_path / "out", method="blur", weights_dir=store.root, device="cpu"))
    assert summary.detector == "mtcnn" and summary.faces >= 3
    metadata = pq.read_schema(summary.manifest_path).metadata
    recorded = json.loads(metadata[b"detector"])
    assert recorded["requested"] == "auto" and recorded["used"] == "mtcnn"
    assert "RetinaFace weights missing" in recorded["reason"]


def test_a_fresh_machine_without_network_anonymizes_with_blur_and_says_which_detector_ran(tiny_weights, shared_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from anonymize.cli import _register_commands, app

    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(tiny_weights.lock_path))
    photos = tmp_path / "in"
    photos.mkdir()
    shutil.copyfile(shared_dir / "data" / "portraits" / "obama_2.jpg", photos / "obama.jpg")
    _register_commands()
    result = CliRunner().invoke(app, ["run", str(photos), "--out", str(tmp_path / "out"), "--method", "blur",
                                      "--weights-dir", str(tmp_path / "fresh-weights"), "--device", "cpu", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["detector"] == "mtcnn" and json.loads(result.stdout)["faces"] == 1
    result = CliRunner().invoke(app, ["run", str(photos), "--out", str(tmp_path / "out2"), "--method", "blur",
                                      "--weights-dir", str(tmp_path / "fresh-weights"), "--device", "cpu"],
                                catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.startswith("detector mtcnn ")]
    assert len(lines) == 1 and "RetinaFace weights missing" in lines[0]
