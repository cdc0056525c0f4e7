"""The local executor: a pool of workers gives what the serial path gives, in flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.run import RunError, run, run_config
from tests.helpers import assert_same_run, identities

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_workers_and_the_serial_path_write_the_same_images_and_rows_over_the_shared_data(shared_dir, tiny_weights, tmp_path):
    data = shared_dir / "data"
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"workers-{workers}"
        summary = run(run_config(data, outs[workers], method="blur", detector="retinaface", device="cpu",
                                weights_dir=tiny_weights.weights_dir, workers=workers))
        assert summary.errors == 0 and summary.images > 150 and summary.faces > summary.images
    assert_same_run(outs[1], outs[2])
    assert len(identities(outs[2])) == len(set(identities(outs[2])))


MEMORY_DRIVER = r"""
import json, resource, sys
from pathlib import Path
import numpy as np
from PIL import Image
from anonymize.run import run, run_config

source, out, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # noise: no face, copied
for index in range(count):
    folder = source / f"{index // 100:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.roll(pixels, index, axis=1)).save(folder / f"{index:05d}.png")
summary = run(run_config(source, out, method="blur", detector="dlib-hog", device="cpu", workers=2))
print(json.dumps({"images": summary.images, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_rss_kb(tmp_path: Path, count: int) -> int:
    done = subprocess.run([sys.executable, "-c", MEMORY_DRIVER, str(tmp_path / f"in-{count}"), str(tmp_path / f"out-{count}"),
                           str(count)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["images"] == count
    return report["peak_kb"]


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    small, large = peak_rss_kb(tmp_path, 200), peak_rss_kb(tmp_path, 2000)
    # 2000 decoded 128 x 128 images held at once would add about 100 MB (about a third of the peak).
    assert large <= small * 1.10, (small, large)


def test_serial_and_two_workers_agree_on_errors_and_no_face_images(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(1)
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(source / f"noise_{index:02d}.png")
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (source / "notes.txt").write_text("not an image")
    for workers in (0, 2):
        summary = run(run_config(source, tmp_path / f"out-{workers}", method="blur", detector="dlib-hog", workers=workers))
        assert (summary.images, summary.no_face_images, summary.errors, summary.skipped) == (12, 12, 1, 1)
    assert_same_run(tmp_path / "out-0", tmp_path / "out-2")


def test_without_ray_installed_the_ray_executor_says_how_to_install_it(tmp_path, monkeypatch):
    source = tmp_path / "in"
    source.mkdir()
    Image.new("RGB", (32, 32)).save(source / "a.png")
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives
    with pytest.raises(RunError, match=r"^--executor ray needs Ray, which is not installed: pip install 'anonymize\[ray\]'$"):
        run(run_config(source, tmp_path / "out", method="blur", executor="ray"))
    assert not (tmp_path / "out").exists()
