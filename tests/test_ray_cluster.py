"""`--executor ray` on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``): a head
and two worker nodes, one CPU each, each with its own raylet, object store and workers. The work is spread
over the nodes, and a node removed mid-run costs only the tasks it was running: the run completes with every
row once and the same outputs as a local run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from anonymize.run import run, run_config
from tests.helpers import assert_same_run, copy_celeba_ids, identities

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers through /proc")
STAGES = ("prepare_shard", "finish_shard")


@pytest.fixture
def cluster():
    """Head (1 CPU) + two worker nodes (1 CPU each), the driver connected to the head."""
    nodes = cluster_utils.Cluster(initialize_head=True,
                                  head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                  "object_store_memory": 80 * 1024 * 1024})
    workers = [nodes.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024) for _ in range(2)]
    ray.init(address=nodes.address, logging_level="ERROR", log_to_driver=False)
    try:
        yield nodes, workers
    finally:
        ray.shutdown()
        nodes.shutdown()


def raylet_pid(node) -> int:  # noqa: ANN001 - a ray.cluster_utils node
    return node.all_processes["raylet"][0].process.pid


def stage_workers() -> dict[int, int]:
    """pid -> parent pid (its node's raylet) of every Ray worker running a stage now (title ``ray::<task>``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(title.startswith(f"ray::{stage}".encode()) for stage in STAGES):
            found[int(entry.name)] = parent
    return found


def blur(source: Path, out: Path, **overrides):  # noqa: ANN201 - a RunConfig
    return run_config(source, out, **{"method": "blur", "detector": "dlib-hog", "device": "cpu", **overrides})


def test_work_spreads_over_the_nodes_and_a_node_removed_mid_run_loses_and_doubles_nothing(cluster, shared_dir, tmp_path):
    nodes, workers = cluster
    source = copy_celeba_ids(shared_dir, tmp_path / "in", ("0", "1", "2", "3", "4"), per_identity=12)
    run(blur(source, tmp_path / "local"))
    raylets = {raylet_pid(node): name for node, name in [(nodes.head_node, "head"), (workers[0], "a"), (workers[1], "b")]}
    seen: set[str] = set()
    removed = threading.Event()
    running = threading.Event()

    def watch_and_remove() -> None:
        """Note which nodes run stages; once worker node a is running one, remove it (its raylet, store, workers)."""
        while running.is_set():
            busy = {raylets[parent] for parent in stage_workers().values() if parent in raylets}
            seen.update(busy)
            if "a" in busy and not removed.is_set():
                nodes.remove_node(workers[0], allow_graceful=False)
                removed.set()
            time.sleep(0.005)

    running.set()
    watcher = threading.Thread(target=watch_and_remove)
    watcher.start()
    started = time.perf_counter()
    try:
        summary = run(blur(source, tmp_path / "ray", executor="ray"))
    finally:
        running.clear()
        watcher.join()
    print(f"nodes that ran stages: {sorted(seen)}; node a removed: {removed.is_set()}; "
          f"{time.perf_counter() - started:.1f} s")
    assert removed.is_set(), "worker node a never ran a stage before the run ended"
    assert len(seen) >= 2  # the work was spread over the nodes
    assert summary.images == 60 and summary.errors == 0
    rows = identities(tmp_path / "ray")
    assert len(rows) == len(set(rows)) == 60  # nothing lost, nothing doubled
    assert_same_run(tmp_path / "local", tmp_path / "ray")
    assert os.path.isdir(tmp_path / "ray")
