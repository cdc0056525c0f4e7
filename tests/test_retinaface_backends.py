"""RetinaFace on the CPU runs as an ONNX graph in OpenCV: the same faces as the torch module, the graph
exported once per weights file and kept, and a blur run that never imports torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anonymize.faces.retinaface import RetinaFaceDetector
from anonymize.io.decode import decode_image
from anonymize.models import retinaface_graph
from tests.helpers import REPO, SHARED_RETINAFACE, TinyWeights

PHOTOS = ("portraits/multi_obama_and_biden.jpg", "portraits/obama_1.jpg", "groups")


@pytest.fixture
def retinaface_store(tiny_weights: TinyWeights, tmp_path: Path):
    """A fresh weights folder holding only RetinaFace's verified file (no graph kept yet)."""
    if not SHARED_RETINAFACE.is_file():
        pytest.skip(f"{SHARED_RETINAFACE} is absent: RetinaFace's real weights live there (see ../shared/README.md)")
    store = tiny_weights.store(tmp_path / "weights")
    target = store.path("retinaface_mobilenet0.25")
    target.parent.mkdir(parents=True)
    shutil.copyfile(SHARED_RETINAFACE, target)
    return store


def _photos(shared_dir: Path) -> list[Path]:
    found = []
    for name in PHOTOS:
        path = shared_dir / "data" / name
        found += sorted(path.glob("*.jpg"))[:4] if path.is_dir() else [path]
    return found


def test_opencv_graph_finds_the_torch_module_s_faces_on_real_photos(retinaface_store, shared_dir):
    with_torch = RetinaFaceDetector(retinaface_store, 0.5, 0, "cpu", backend="torch")
    with_opencv = RetinaFaceDetector(retinaface_store, 0.5, 0, "cpu", backend="opencv")
    assert with_opencv.backend == "opencv" and RetinaFaceDetector(retinaface_store, 0.5, 0, "cpu").backend == "opencv"
    faces = 0
    for photo in _photos(shared_dir):
        rgb = decode_image(photo).rgb
        expected, found = with_torch.detect(rgb), with_opencv.detect(rgb)
        assert len(found) == len(expected), photo
        for mine, reference in zip(found, expected):
            assert np.allclose(mine.box, reference.box, atol=1e-2), photo
            assert mine.score == pytest.approx(reference.score, abs=1e-4)
            assert np.allclose(mine.landmarks, reference.landmarks, atol=1e-2)
        faces += len(found)
    assert faces >= 6


def test_the_graph_is_exported_once_and_kept_under_the_checkpoint_s_hash(retinaface_store, monkeypatch):
    RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")
    kept = retinaface_graph.graph_path(retinaface_store, "retinaface_mobilenet0.25")
    assert kept.is_file() and retinaface_store.sha256("retinaface_mobilenet0.25")[:16] in kept.name

    def no_export(model):
        raise AssertionError("a kept graph must not be exported again")

    monkeypatch.setattr(retinaface_graph, "export_graph", no_export)
    RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")


def test_a_damaged_kept_graph_is_exported_again(retinaface_store, shared_dir):
    RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")
    kept = retinaface_graph.graph_path(retinaface_store, "retinaface_mobilenet0.25")
    kept.write_bytes(b"not a graph")
    detector = RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")
    assert len(detector.detect(decode_image(shared_dir / "data" / "portraits" / "obama_1.jpg").rgb)) == 1
    assert kept.stat().st_size > 1_000_000


def test_a_weights_folder_that_cannot_be_written_keeps_the_graph_in_memory(retinaface_store, shared_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(retinaface_graph, "atomic_write_bytes", refuse)
    detector = RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")
    assert not retinaface_graph.graph_path(retinaface_store, "retinaface_mobilenet0.25").exists()
    assert len(detector.detect(decode_image(shared_dir / "data" / "portraits" / "obama_1.jpg").rgb)) == 1


def test_a_blur_run_with_retinaface_on_the_cpu_never_imports_torch(retinaface_store, tiny_weights, shared_dir, tmp_path):
    """torch's import is most of a one-image run's start-up; RetinaFace on OpenCV and blur do not need it
    (once the graph is kept: the first run of a weights folder exports it with torch). The default chain adds
    MTCNN, which runs in torch: ``--detector retinaface`` is the fast path."""
    RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")
    if any(Path(mark).exists() for mark in ("/proc/driver/nvidia/version", "/dev/nvidia0")):
        pytest.skip("an NVIDIA driver is present: --device auto asks torch whether CUDA works")
    photo = tmp_path / "in" / "obama_1.jpg"
    photo.parent.mkdir()
    shutil.copyfile(shared_dir / "data" / "portraits" / "obama_1.jpg", photo)
    script = ("import sys\nfrom anonymize.cli import main\n"
              f"sys.argv = ['anonymize', 'run', {str(photo.parent)!r}, '--out', {str(tmp_path / 'out')!r}, '--method', 'blur', '--detector', 'retinaface']\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    env = {**os.environ, "ANONYMIZE_HOME": str(retinaface_store.root), "ANONYMIZE_WEIGHTS_LOCK": str(tiny_weights.lock_path),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "no torch"
    assert (tmp_path / "out" / "obama_1.jpg").is_file()


def test_after_a_large_input_the_opencv_network_lets_its_buffers_go_and_finds_the_same_faces(retinaface_store, shared_dir):
    from anonymize.faces.retinaface import OPENCV_LARGE_INPUT

    detector = RetinaFaceDetector(retinaface_store, 0.9, 0, "cpu")
    network = detector._network
    rgb = decode_image(shared_dir / "data" / "portraits" / "multi_obama_and_biden.jpg").rgb
    large = np.concatenate([rgb] * 3, axis=1) if rgb.shape[0] * rgb.shape[1] * 3 > OPENCV_LARGE_INPUT else rgb
    before = network._net
    first = detector.detect(large)
    assert network._net is not before  # read again from the kept graph after the large call
    again = detector.detect(large)
    assert [face.box for face in again] == [face.box for face in first] and len(first) >= 3
