"""A run killed with SIGKILL at any moment, then resumed, ends exactly like a run never interrupted.

The run happens in a real subprocess. A small driver counts the run's file-system steps (every
os.open, mkdir, replace, unlink, rmdir, fsync, ftruncate, pwrite) and sends itself SIGKILL at a
chosen one: the seeds pick random steps, and the last steps (the final manifest merge) are always
among them. Small PNG crops with ``--aligned`` blur keep each process well under a second of work.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anonymize.io.decode import decode_image
from anonymize.io.manifest import merge_rows, read_rows

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
from anonymize.run import run, run_config

kill_at, count_file, source, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
steps = 0

def counted(real):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if kill_at == -1 and real is REPLACE and str(args[1]).endswith(".png"):
            os.kill(os.getpid(), signal.SIGKILL)  # -1: right after the first output image is in place
        return result
    return step

REPLACE = os.replace

config = run_config(Path(source), Path(out), method="blur", aligned=True, batch_size=2, device="cpu")
for name in ("open", "mkdir", "replace", "unlink", "rmdir", "fsync", "ftruncate", "pwrite"):
    setattr(os, name, counted(getattr(os, name)))
summary = run(config)
with open(count_file, "w") as handle:
    handle.write(json.dumps({"steps": steps, "images": summary.images, "resumed": summary.resumed}))
"""

SEEDS = (1, 2, 3)


def make_inputs(root: Path, count: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"face_{index:02d}.png")
    (root / "labels.csv").write_text("name,label\nface_00,1\n")
    return root


def drive(source: Path, out: Path, tmp_path: Path, kill_at: int = 0) -> tuple[int, dict | None]:
    count_file = tmp_path / f"count-{kill_at}-{random.random()}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.run([sys.executable, "-c", DRIVER, str(kill_at), str(count_file), str(source), str(out)],
                             env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(count_file.read_text()) if count_file.exists() else None
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(process.stderr)
    return process.returncode, report


def output_state(out: Path) -> tuple[dict[str, bytes], list[tuple]]:
    """Decoded pixels of every visible output file, and the manifest rows without run-specific columns."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts) and path.name != "manifest.parquet":
            files[str(relative)] = decode_image(path).rgb.tobytes()
    rows = read_rows(out / "manifest.parquet")
    keys = [(row["source_path"], row["face_index"], row["status"], row["output_path"], row["source_sha256"],
             row["width"], row["height"], tuple(row["box"] or ()), row.get("note")) for row in rows]
    return files, keys


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kill")
    source = make_inputs(root / "in")
    out = root / "clean"
    code, report = drive(source, out, root)
    assert code == 0 and report["images"] == 10
    return source, output_state(out), report["steps"]


def kill_points(total: int) -> list[int]:
    points = {random.Random(seed).randint(1, total) for seed in SEEDS}
    points |= {total - 2, total}  # inside the final merge: after the manifest rename, while parts are removed
    return sorted(points)


def test_kill_9_at_random_moments_then_resume_equals_a_clean_run(clean_run, tmp_path):
    source, clean_state, total = clean_run
    for kill_at in kill_points(total):
        out = tmp_path / f"out-{kill_at}"
        code, _ = drive(source, out, tmp_path, kill_at)
        assert code == -signal.SIGKILL, f"step {kill_at} of {total} was not reached"
        code, report = drive(source, out, tmp_path)
        assert code == 0, f"resume after a kill at step {kill_at} failed"
        files, rows = output_state(out)
        assert files == clean_state[0], f"kill at step {kill_at}: outputs differ from a clean run"
        assert rows == clean_state[1], f"kill at step {kill_at}: manifest differs from a clean run"
        assert len(set(rows)) == len(rows)
        assert not (out / ".anonymize" / "parts").exists() and not (out / ".anonymize" / "lock").exists()
        leftovers = [p for p in out.rglob(".*.tmp")]
        assert leftovers == [], f"kill at step {kill_at}: temporary files left behind: {leftovers}"


def test_a_run_killed_before_its_first_manifest_part_can_be_resumed(clean_run, tmp_path):
    """Images written, no manifest part yet: the folder is already marked as ours, so the next run resumes."""
    source, clean_state, total = clean_run
    out = tmp_path / "out"
    code, _ = drive(source, out, tmp_path, kill_at=-1)  # killed right after the first image is renamed into place
    assert code == -signal.SIGKILL
    assert any(out.rglob("*.png")) and not (out / "manifest.parquet").exists()
    code, _ = drive(source, out, tmp_path)
    assert code == 0
    assert output_state(out) == clean_state


# ---- the merge, killed at each of its steps ------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after it runs, no handler catches it."""


def test_a_merge_killed_at_every_step_gives_the_same_manifest_when_done_again(tmp_path, monkeypatch):
    from anonymize.io.manifest import ManifestWriter, consolidate

    def row(run_id: str, name: str, face: int | None, status: str = "done") -> dict:
        return {"run_id": run_id, "source_path": name, "output_path": name, "face_index": face, "status": status}

    state = tmp_path / "state"
    older = ManifestWriter(state, "older", {"run": "older"})
    older.append([row("older", "a.png", 0), row("older", "a.png", 1), row("older", "b.png", 0)])
    older.finalise()
    newer = ManifestWriter(state, "newer", {"run": "newer"})
    newer.append([row("newer", "a.png", 0)])  # a.png redone: now one face
    newer.append([row("newer", "c.png", None, "no_face")])
    expected_dir = tmp_path / "expected"
    shutil.copytree(state, expected_dir)
    consolidate(expected_dir, expected_dir / "manifest.parquet")
    expected = pq.read_table(expected_dir / "manifest.parquet").to_pylist()
    assert [(r["source_path"], r["face_index"], r["run_id"]) for r in expected] == [
        ("a.png", 0, "newer"), ("b.png", 0, "older"), ("c.png", None, "newer")]

    steps = 0
    kill_at = 0

    def counted(real):
        def step(*args, **kwargs):
            nonlocal steps
            steps += 1
            if steps == kill_at:
                raise Killed
            return real(*args, **kwargs)
        return step

    for name in ("open", "replace", "unlink", "rmdir", "fsync"):
        monkeypatch.setattr(os, name, counted(getattr(os, name)))
    trial = tmp_path / "count"
    shutil.copytree(state, trial, copy_function=shutil.copyfile)
    steps = 0
    consolidate(trial, trial / "manifest.parquet")
    total = steps
    assert total >= 5
    for kill_at in range(1, total + 1):
        target = tmp_path / f"kill-{kill_at}"
        saved, kill_at = kill_at, 0
        shutil.copytree(state, target)
        kill_at, steps = saved, 0
        with pytest.raises(Killed):
            consolidate(target, target / "manifest.parquet")
        kill_at = 0
        consolidate(target, target / "manifest.parquet")  # the next run's merge
        rows = pq.read_table(target / "manifest.parquet").to_pylist()
        assert rows == expected, f"merge killed at step {saved} of {total}"
        assert merge_rows(rows) == rows  # no duplicate identity


def test_leftover_temporary_files_of_a_killed_run_are_removed_when_its_lock_is_taken_over(tmp_path):
    source = make_inputs(tmp_path / "in", count=2)
    out = tmp_path / "out"
    code, _ = drive(source, out, tmp_path)
    assert code == 0
    leftover = out / "a" / ".face_01.png.0123456789ab.tmp"
    leftover.write_bytes(b"half an image")
    (out / ".anonymize" / "lock").write_text(json.dumps({"pid": 999999999, "host": "gone"}))
    code, _ = drive(source, out, tmp_path)
    assert code == 0 and not leftover.exists()
