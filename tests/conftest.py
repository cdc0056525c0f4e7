"""Shared fixtures: THE tiny-weights store every model-level and CLI test runs on, and ../shared.

``tiny_weights`` writes tiny random e4e / ArcFace / FaRL / GenForce checkpoints in the published
file layouts, packs them into tarballs under the published member paths, pins the tarballs in a
test lock (URLs point at a port where nothing listens, so nothing is ever downloaded) and lets
``WeightsStore.fetch`` verify and extract them, exactly as a user's offline install would. The
lock also carries the real lock's dlib and RetinaFace entries, so detection works (RetinaFace only
when ../shared holds its file). e4e's decoder and the GenForce generator come from the same seed,
so, like the real files, they are one network in two layouts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from anonymize.weights import Artifact, WeightsStore, read_lock
from tests.tiny.facenet import FACENET_CLASSES, write_random_alexnet_features, write_random_facenet, write_random_fid_inception
from tests.tiny.farl import write_tiny_farl
from tests.tiny.irse import write_tiny_arcface, write_tiny_e4e
from tests.tiny.stylegan2 import write_tiny_genforce

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REPO_LOCK = REPO / "weights.lock"
UNREACHABLE = "http://127.0.0.1:9"
TINY_GENERATOR_RESOLUTION = 32
TINY_SEED = 0
COPIED_ARTEFACTS = (
    "retinaface_mobilenet0.25",
    "dlib_shape_predictor_68",
    "dlib_shape_predictor_5",
    "dlib_mmod_detector",
    "dlib_face_recognition_resnet",
    "mtcnn_pnet",
    "mtcnn_rnet",
    "mtcnn_onet",
)
SHARED_RETINAFACE = SHARED / "weights" / "retinaface_mobilenet0.25.pth"

# The CPU is shared with other jobs: with the cores busy, extra intra-op threads only wait for each other
# (tiny FALCO steps ran 5x slower with 2 threads than with 1 on a loaded 2-core machine).
torch.set_num_threads(1)


@dataclass(frozen=True)
class TinyArchive:
    """One published FALCO tarball: its lock names, and the member it holds with how to write it."""

    archive: str
    filename: str
    artefact: str
    member: str
    write: Callable[[Path], object]


TINY_ARCHIVES = (
    TinyArchive("e4e", "e4e.tar", "e4e_ffhq_encode", "e4e/e4e_ffhq_encode.pt",
                lambda path: write_tiny_e4e(path, seed=TINY_SEED, resolution=TINY_GENERATOR_RESOLUTION)),
    TinyArchive("arcface", "arcface.tar", "arcface_ir_se50", "arcface/model_ir_se50.pth",
                lambda path: write_tiny_arcface(path, seed=TINY_SEED)),
    TinyArchive("farl", "farl.tar", "farl_ep64", "farl/FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
                lambda path: write_tiny_farl(path, seed=TINY_SEED)),
    TinyArchive("genforce", "genforce.tar", "stylegan2_ffhq1024_genforce", "genforce/stylegan2_ffhq1024.pth",
                lambda path: write_tiny_genforce(path, resolution=TINY_GENERATOR_RESOLUTION, seed=TINY_SEED)),
)
FALCO_ARTEFACTS = tuple(archive.artefact for archive in TINY_ARCHIVES)


@dataclass(frozen=True)
class TinyWeights:
    """A weights dir holding the tiny FALCO networks, verified, and the lock that pins them."""

    weights_dir: Path
    lock_path: Path

    def store(self, root: Path | None = None) -> WeightsStore:
        """A store over ``root`` (default: the filled weights dir) with the tiny lock."""
        return WeightsStore(root if root is not None else self.weights_dir, lock=read_lock(self.lock_path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pack(tarball: Path, member: str, source: Path) -> None:
    with tarfile.open(tarball, "w") as tar:
        tar.add(source, arcname=member)


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers and string lists are valid TOML values


def _copied_entry(artifact: Artifact) -> str:
    lines = [f"[artifacts.{_toml(artifact.name)}]", f"filename = {_toml(artifact.filename)}"]
    if artifact.source != "download":
        lines.append(f"source = {_toml(artifact.source)}")
    if artifact.url:
        lines.append(f"url = {_toml(artifact.url)}")
    if artifact.sha256:
        lines.append(f"sha256 = {_toml(artifact.sha256)}")
    if artifact.size is not None:
        lines.append(f"size = {artifact.size}")
    lines += [f"license = {_toml(artifact.license)}", f"used_by = {_toml(list(artifact.used_by))}"]
    return "\n".join(lines)


def _lock_text(tarballs: dict[str, Path]) -> str:
    parts = ["version = 1"]
    for spec in TINY_ARCHIVES:
        tarball = tarballs[spec.archive]
        parts.append(
            f'[archives.{spec.archive}]\nfilename = "{spec.filename}"\nurl = "{UNREACHABLE}/{spec.filename}"\n'
            f'sha256 = "{_sha256(tarball)}"'
        )
        parts.append(
            f'[artifacts.{spec.artefact}]\nfilename = "{spec.member}"\narchive = "{spec.archive}"\n'
            f'member = "{spec.member}"\nlicense = "test"\nused_by = ["falco"]'
        )
    real = read_lock(REPO_LOCK)
    parts += [_copied_entry(real[name]) for name in COPIED_ARTEFACTS]
    return "\n\n".join(parts) + "\n"


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
        _pack(tarballs[spec.archive], spec.member, checkpoint)
    lock_path = root / "weights.lock"
    lock_path.write_text(_lock_text(tarballs), encoding="utf-8")
    tiny = TinyWeights(weights_dir, lock_path)
    store = tiny.store()
    store.fetch(FALCO_ARTEFACTS)
    if SHARED_RETINAFACE.is_file():
        target = store.path("retinaface_mobilenet0.25")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_RETINAFACE, target)
    return tiny


@dataclass(frozen=True)
class AuditStandIn:
    artefact: str
    write: Callable[[Path], object]


AUDIT_STAND_INS = (
    AuditStandIn("facenet_casia_webface", lambda path: write_random_facenet(path, FACENET_CLASSES["casia-webface"], TINY_SEED)),
    AuditStandIn("facenet_vggface2", lambda path: write_random_facenet(path, FACENET_CLASSES["vggface2"], TINY_SEED + 1)),
    AuditStandIn("torchvision_alexnet", lambda path: write_random_alexnet_features(path, TINY_SEED)),
    AuditStandIn("inception_fid", lambda path: write_random_fid_inception(path, TINY_SEED)),
)


@pytest.fixture(scope="session")
def audit_weights(tiny_weights: TinyWeights) -> TinyWeights:
    """The tiny weights plus random FaceNet, AlexNet (LPIPS) and Inception (FID) stand-ins, each pinned by its
    hash in an extended test lock (the real lock publishes no hash for FaceNet or AlexNet), with LPIPS's heads
    from the lpips wheel as in the real lock; the FaRL Fréchet proxy runs on the tiny FaRL."""
    real = read_lock(REPO_LOCK)
    store = tiny_weights.store()
    entries = [_copied_entry(real["lpips_alex_linear"])]
    for spec in AUDIT_STAND_INS:
        artifact = real[spec.artefact]
        target = store.root / artifact.filename
        spec.write(target)
        entries.append(f"[artifacts.{_toml(spec.artefact)}]\nfilename = {_toml(artifact.filename)}\n"
                       f"url = {_toml(UNREACHABLE + '/' + Path(artifact.filename).name)}\nsha256 = {_toml(_sha256(target))}\n"
                       f'license = "test"\nused_by = ["audit"]')
    lock_path = tiny_weights.lock_path.with_name("audit-weights.lock")
    lock_path.write_text(tiny_weights.lock_path.read_text(encoding="utf-8") + "\n" + "\n\n".join(entries) + "\n", encoding="utf-8")
    return TinyWeights(tiny_weights.weights_dir, lock_path)


HUMAN_TEST_MODELS = ("faceres", "mobileface", "gear", "emotion", "age", "gender")  # recognisers and attribute classifiers


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
            entries.append(f"[artifacts.{_toml(artefact)}]\nfilename = {_toml(artifact.filename)}\n"
                           f"url = {_toml(UNREACHABLE + '/' + Path(artifact.filename).name)}\nsha256 = {_toml(artifact.sha256)}\n"
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


def copy_celeba_ids(shared_dir: Path, dest: Path, identities: Sequence[str] = ("0", "1"), per_identity: int = 2) -> Path:
    """The first ``per_identity`` aligned CelebA photos of each identity, copied into ``dest/<identity>/``."""
    for identity in identities:
        (dest / identity).mkdir(parents=True)
        for photo in sorted((shared_dir / "data" / "celeba-ids" / identity).glob("*.jpg"))[:per_identity]:
            shutil.copy(photo, dest / identity / photo.name)
    return dest
