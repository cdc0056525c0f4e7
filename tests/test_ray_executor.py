"""`--executor ray` on a local Ray (2 CPUs, no GPU): the same outputs and rows as a local run,
nothing lost or doubled when a worker is killed mid-run, and a second run resumes.

One Ray is started for the whole module (it takes seconds) with a small object store.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from anonymize.run import run, run_config
from tests.helpers import assert_same_run, copy_celeba_ids, identities

ray = pytest.importorskip("ray")

PORTRAITS = 12


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def portraits(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "portraits"
    source.mkdir()
    for photo in sorted((shared_dir / "data" / "portraits").glob("*.jpg"))[:PORTRAITS]:
        shutil.copy(photo, source / photo.name)
    return source


def blur(source: Path, out: Path, **overrides) -> RunConfig:
    return run_config(source, out, **{"method": "blur", "detector": "dlib-hog", "device": "cpu", **overrides})


def test_blur_on_ray_equals_the_local_run(local_ray, portraits, tmp_path):
    local = run(blur(portraits, tmp_path / "local"))
    on_ray = run(blur(portraits, tmp_path / "ray", executor="ray"))
    assert (on_ray.images, on_ray.faces, on_ray.errors) == (local.images, local.faces, 0) == (PORTRAITS, local.faces, 0)
    assert_same_run(tmp_path / "local", tmp_path / "ray")
    assert not (tmp_path / "ray" / ".anonymize" / "parts").exists()


def test_blur_on_ray_over_file_uris_equals_the_local_run(local_ray, portraits, tmp_path):
    """Workers open the store from the URI themselves (tests/test_object_store.py covers URIs locally; a StorePath
    is built directly, since the command line turns a file:// URI into the plain path it names)."""
    from anonymize.io.store import StorePath

    run(blur(portraits, tmp_path / "local", limit=3, workers=1))
    on_ray = run(blur(StorePath(portraits.as_uri()), StorePath((tmp_path / "ray").as_uri()), limit=3, executor="ray"))
    assert (on_ray.images, on_ray.errors) == (3, 0)
    assert_same_run(tmp_path / "local", tmp_path / "ray")


def test_falco_with_the_tiny_networks_on_ray_equals_the_local_run(local_ray, tiny_env, shared_dir, tmp_path):
    source = tmp_path / "celeba"
    source.mkdir()
    for photo in sorted((shared_dir / "data" / "celeba-ids" / "0").glob("*.jpg"))[:3]:
        shutil.copy(photo, source / photo.name)
    options = {"steps": "2", "bank_size": "20", "margin": "0.2"}
    falco = {"method": "falco", "method_options": options, "aligned": True, "device": "cpu",
             "weights_dir": tiny_env.weights_dir}
    run(run_config(source, tmp_path / "local", **falco))
    summary = run(run_config(source, tmp_path / "ray", executor="ray", **falco))
    assert summary.faces == 3 and summary.errors == 0
    assert_same_run(tmp_path / "local", tmp_path / "ray")


def test_a_dataset_level_method_on_ray_uses_the_plan_the_driver_stored(local_ray, shared_dir, tmp_path):
    """k-Same surveys and plans on the driver; every Ray method actor reads the stored groups."""
    source = copy_celeba_ids(shared_dir, tmp_path / "celeba", ("0", "1", "2"))
    ksame = {"method": "ksame", "method_options": {"k": "2"}, "aligned": True, "device": "cpu",
             "identity_from": "folder", "detector": "dlib-hog"}
    run(run_config(source, tmp_path / "local", **ksame))
    summary = run(run_config(source, tmp_path / "ray", executor="ray", **ksame))
    assert summary.faces == 6 and summary.errors == 0
    assert_same_run(tmp_path / "local", tmp_path / "ray")


def _ray_task_pids(name: str) -> list[int]:
    """Pids of Ray workers running a task called ``name`` (their process title is ``ray::<name>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(f"ray::{name}".encode()):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers through /proc")
def test_a_worker_killed_mid_run_leaves_a_complete_manifest_without_duplicates_and_a_second_run_resumes(
        local_ray, portraits, tmp_path):
    run(blur(portraits, tmp_path / "local"))
    killed: list[int] = []
    running = threading.Event()

    def kill_a_worker() -> None:
        while running.is_set() and not killed:
            for pid in _ray_task_pids("prepare_shard") or _ray_task_pids("finish_shard"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    running.set()
    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        summary = run(blur(portraits, tmp_path / "ray", executor="ray"))
    finally:
        running.clear()
        killer.join()
    assert killed, "no Ray worker was seen running a stage"
    assert summary.images == PORTRAITS and summary.errors == 0
    assert len(identities(tmp_path / "ray")) == len(set(identities(tmp_path / "ray")))
    assert_same_run(tmp_path / "local", tmp_path / "ray")

    again = run(blur(portraits, tmp_path / "ray", executor="ray"))
    assert (again.resumed, again.images) == (PORTRAITS, 0)
    assert_same_run(tmp_path / "local", tmp_path / "ray")


def test_a_ray_run_resumes_what_a_local_run_finished(local_ray, portraits, tmp_path):
    out = tmp_path / "out"
    run(blur(portraits, out, limit=5))
    summary = run(blur(portraits, out, executor="ray"))
    assert (summary.resumed, summary.images) == (5, PORTRAITS - 5)
    run(blur(portraits, tmp_path / "clean"))
    assert_same_run(tmp_path / "clean", out)
