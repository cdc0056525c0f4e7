"""Shared fixtures: THE tiny-weights store every model-level and CLI test runs on, and ../shared
(the helpers they are built from, and every other shared non-fixture, live in tests/helpers.py).

``tiny_weights`` writes tiny random e4e / ArcFace / FaRL / GenForce checkpoints in the published
file layouts, packs them into tarballs under the published member paths, pins the tarballs in a
test lock (URLs point at a port where nothing listens, so nothing is ever downloaded) and lets
``WeightsStore.fetch`` verify and extract them, exactly as a user's offline install would. The
lock also carries the real lock's dlib and RetinaFace entries, so detection works (RetinaFace only
when ../shared holds its file). e4e's decoder and the GenForce generator come from the same seed,
so, like the real files, they are one network in two layouts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from anonymize.weights import read_lock
from tests.helpers import (
    AUDIT_STAND_INS,
    FALCO_ARTEFACTS,
    HUMAN_TEST_MODELS,
    REPO_LOCK,
    SHARED,
    SHARED_RETINAFACE,
    TINY_ARCHIVES,
    UNREACHABLE,
    TinyWeights,
    copied_lock_entry,
    file_sha256,
    pack_tarball,
    tiny_lock_text,
    toml_value,
)

# The CPU is shared with other jobs: with the cores busy, extra intra-op threads only wait for each other
# (tiny FALCO steps ran 5x slower with 2 threads than with 1 on a loaded 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> TinyWeights:
    root = tmp_path_factory.mktemp("tiny-weights")
    checkpoints, weights_dir = root / "checkpoints", root / "weights"
    weights_dir.mkdir()
    tarballs = {}
    for spec in TINY_ARCHIVES:
        checkpoint = checkpoints / spec.member
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        spec.write(checkpoint)
        tarballs[spec.archive] = weights_dir / spec.filename  # placed by hand: fetch verifies, then extracts
        pack_tarball(tarballs[spec.archive], spec.member, checkpoint)
    lock_path = root / "weights.lock"
    lock_path.write_text(tiny_lock_text(tarballs), encoding="utf-8")
    tiny = TinyWeights(weights_dir, lock_path)
    store = tiny.store()
    store.fetch(FALCO_ARTEFACTS)
    if SHARED_RETINAFACE.is_file():
        target = store.path("retinaface_mobilenet0.25")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_RETINAFACE, target)
    return tiny


@pytest.fixture(scope="session")
def audit_weights(tiny_weights: TinyWeights) -> TinyWeights:
    """The tiny weights plus random FaceNet, AlexNet (LPIPS) and Inception (FID) stand-ins, each pinned by its
    hash in an extended test lock (the real lock publishes no hash for FaceNet or AlexNet), with LPIPS's heads
    from the lpips wheel as in the real lock; the FaRL Fréchet proxy runs on the tiny FaRL."""
    real = read_lock(REPO_LOCK)
    store = tiny_weights.store()
    entries = [copied_lock_entry(real["lpips_alex_linear"])]
    for spec in AUDIT_STAND_INS:
        artifact = real[spec.artefact]
        target = store.root / artifact.filename
        spec.write(target)
        entries.append(f"[artifacts.{toml_value(spec.artefact)}]\nfilename = {toml_value(artifact.filename)}\n"
                       f"url = {toml_value(UNREACHABLE + '/' + Path(artifact.filename).name)}\nsha256 = {toml_value(file_sha256(target))}\n"
                       f'license = "test"\nused_by = ["audit"]')
    lock_path = tiny_weights.lock_path.with_name("audit-weights.lock")
    lock_path.write_text(tiny_weights.lock_path.read_text(encoding="utf-8") + "\n" + "\n\n".join(entries) + "\n", encoding="utf-8")
    return TinyWeights(tiny_weights.weights_dir, lock_path)


@pytest.fixture(scope="session")
def human_weights(tiny_weights: TinyWeights, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyWeights:
    """A weights dir with the real TF.js recognisers and classifiers (copied from ../shared/weights/human-models, each file
    verified against the real lock's pinned hash) and RetinaFace, under the tiny lock plus those entries."""
    from anonymize.weights.human import artefact_names

    source = shared_dir / "weights" / "human-models"
    if not (source / "faceres.json").is_file():
        pytest.skip(f"{source} is absent: the independent recognisers' weights live there (see ../shared/README.md)")
    root = tmp_path_factory.mktemp("human-weights")
    weights_dir = root / "weights"
    real = read_lock(REPO_LOCK)
    entries = []
    for model in HUMAN_TEST_MODELS:
        for artefact in artefact_names(model):
            artifact = real[artefact]
            target = weights_dir / artifact.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / Path(artifact.filename).name, target)
            entries.append(f"[artifacts.{toml_value(artefact)}]\nfilename = {toml_value(artifact.filename)}\n"
                           f"url = {toml_value(UNREACHABLE + '/' + Path(artifact.filename).name)}\nsha256 = {toml_value(artifact.sha256)}\n"
                           f'license = "test"\nused_by = ["audit"]')
    if SHARED_RETINAFACE.is_file():
        target = weights_dir / real["retinaface_mobilenet0.25"].filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_RETINAFACE, target)
    lock_path = root / "human-weights.lock"
    lock_path.write_text(tiny_weights.lock_path.read_text(encoding="utf-8") + "\n" + "\n\n".join(entries) + "\n", encoding="utf-8")
    return TinyWeights(weights_dir, lock_path)


@pytest.fixture
def tiny_env(tiny_weights: TinyWeights, monkeypatch: pytest.MonkeyPatch) -> TinyWeights:
    """The tiny weights as the CLI finds them: ANONYMIZE_HOME and ANONYMIZE_WEIGHTS_LOCK set."""
    monkeypatch.setenv("ANONYMIZE_HOME", str(tiny_weights.weights_dir))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(tiny_weights.lock_path))
    return tiny_weights


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real photos and detector weights), or a skip saying why the test cannot run."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"{SHARED} is absent: the real test photos live there (see the project README)")
    return SHARED
