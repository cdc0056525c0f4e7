"""What several test modules share, so that no test module imports another (fixtures stay in conftest.py).

* where things are: the repository, ../shared, the shipped weights.lock;
* the tiny weights: which published tarballs the tiny networks stand in for, and the test lock text
  that pins them (conftest's ``tiny_weights``, ``audit_weights`` and ``human_weights`` build on these);
* small inputs: synthetic face crops and landmarks, CelebA photos copied out of ../shared;
* the command line run in-process, and what two runs of it must agree on.

conftest imports this module for every test, so the helpers that need the CLI or the manifest reader
import them when called: a test of one part of the package neither pays for nor fails on another.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from anonymize.weights import Artifact, WeightsStore, read_lock
from tests.tiny.facenet import FACENET_CLASSES, write_random_alexnet_features, write_random_facenet, write_random_fid_inception
from tests.tiny.farl import write_tiny_farl
from tests.tiny.irse import write_tiny_arcface, write_tiny_e4e
from tests.tiny.stylegan2 import write_tiny_genforce

if TYPE_CHECKING:
    from typer.testing import Result

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
PORTRAITS_WITH_ONE_FACE = ["biden_1.jpg", "obama_1.jpg", "rose_leslie_1.jpg", "kit_harington_2.jpg"]
HUMAN_TEST_MODELS = ("faceres", "mobileface", "gear", "emotion", "age", "gender", "facemesh")  # recognisers, attribute classifiers, the face mesh

# Manifest columns the dataset-level methods fill, checked by their unit and CLI tests alike.
EDIT_COLUMNS = {"attr_edit_targets", "attr_edit_start", "attr_edit_achieved", "attr_edit_keep_drift", "attr_edit_identity"}
CFA_COLUMNS = {"cfa_target_angle", "cfa_achieved_angle", "cfa_target_cos", "cfa_angle_error", "cfa_variant",
               "cfa_leak_cos", "cfa_leak_tries", "cfa_leak_cos_after", "cfa_person", "cfa_renders", "cfa_e4e_angle"}
VARYING_COLUMNS = ("run_id", "seconds")  # differ between any two runs, by design


# -- the tiny weights ----------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class AuditStandIn:
    """A random network written in the layout of a real audit artefact (the real lock publishes no hash for some)."""

    artefact: str
    write: Callable[[Path], object]


AUDIT_STAND_INS = (
    AuditStandIn("facenet_casia_webface", lambda path: write_random_facenet(path, FACENET_CLASSES["casia-webface"], TINY_SEED)),
    AuditStandIn("facenet_vggface2", lambda path: write_random_facenet(path, FACENET_CLASSES["vggface2"], TINY_SEED + 1)),
    AuditStandIn("torchvision_alexnet", lambda path: write_random_alexnet_features(path, TINY_SEED)),
    AuditStandIn("inception_fid", lambda path: write_random_fid_inception(path, TINY_SEED)),
)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack_tarball(tarball: Path, member: str, source: Path) -> None:
    """An uncompressed tarball holding ``source`` as ``member``, as the published archives hold theirs."""
    with tarfile.open(tarball, "w") as tar:
        tar.add(source, arcname=member)


def toml_value(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers and string lists are valid TOML values


def copied_lock_entry(artifact: Artifact) -> str:
    """The ``[artifacts.NAME]`` table of a real lock entry, for a test lock that keeps it as it is."""
    lines = [f"[artifacts.{toml_value(artifact.name)}]", f"filename = {toml_value(artifact.filename)}"]
    if artifact.source != "download":
        lines.append(f"source = {toml_value(artifact.source)}")
    if artifact.url:
        lines.append(f"url = {toml_value(artifact.url)}")
    if artifact.sha256:
        lines.append(f"sha256 = {toml_value(artifact.sha256)}")
    if artifact.size is not None:
        lines.append(f"size = {artifact.size}")
    lines += [f"license = {toml_value(artifact.license)}", f"used_by = {toml_value(list(artifact.used_by))}"]
    return "\n".join(lines)


def tiny_lock_text(tarballs: dict[str, Path]) -> str:
    """A lock pinning the tiny tarballs (URLs where nothing listens) plus the real lock's detector entries."""
    parts = ["version = 1"]
    for spec in TINY_ARCHIVES:
        tarball = tarballs[spec.archive]
        parts.append(
            f'[archives.{spec.archive}]\nfilename = "{spec.filename}"\nurl = "{UNREACHABLE}/{spec.filename}"\n'
            f'sha256 = "{file_sha256(tarball)}"'
        )
        parts.append(
            f'[artifacts.{spec.artefact}]\nfilename = "{spec.member}"\narchive = "{spec.archive}"\n'
            f'member = "{spec.member}"\nlicense = "test"\nused_by = ["falco"]'
        )
    real = read_lock(REPO_LOCK)
    parts += [copied_lock_entry(real[name]) for name in COPIED_ARTEFACTS]
    return "\n\n".join(parts) + "\n"


# -- small inputs --------------------------------------------------------------------------------------


def copy_celeba_ids(shared_dir: Path, dest: Path, identities: Sequence[str] = ("0", "1"), per_identity: int = 2) -> Path:
    """The first ``per_identity`` aligned CelebA photos of each identity, copied into ``dest/<identity>/``."""
    for identity in identities:
        (dest / identity).mkdir(parents=True)
        for photo in sorted((shared_dir / "data" / "celeba-ids" / identity).glob("*.jpg"))[:per_identity]:
            shutil.copy(photo, dest / identity / photo.name)
    return dest


def synthetic_face(seed: int, size: int = 256) -> np.ndarray:
    """A smooth random colour field: image-like statistics without any real photo."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def five_points(eye_left, eye_right, mouth_left, mouth_right) -> np.ndarray:
    """Five landmarks (eyes, nose half-way between eyes and mouth, mouth corners) from four points."""
    nose = (np.add(eye_left, eye_right) / 2 + np.add(mouth_left, mouth_right) / 2) / 2
    return np.array([eye_left, eye_right, nose, mouth_left, mouth_right], np.float64)


def textured_image(height: int = 400, width: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def crops(folder: Path, names: list[str], size: tuple[int, int] = (40, 48)) -> Path:
    """Random-noise images (no face) named ``names`` under ``folder``; the same pixels for the same names."""
    rng = np.random.default_rng(len(names))
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return folder


# -- the command line and its runs ---------------------------------------------------------------------


def cli(*args: object) -> Result:
    """Run ``anonymize ARGS`` in-process with every command registered; exceptions are raised, not caught."""
    from typer.testing import CliRunner

    from anonymize.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def manifest_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out``'s manifest without the columns that differ between runs, in identity order."""
    from anonymize.io.manifest import read_rows, row_identity

    rows = read_rows(out / "manifest.parquet")
    return [{key: value for key, value in row.items() if key not in VARYING_COLUMNS}
            for row in sorted(rows, key=row_identity)]


def identities(out: Path) -> list[tuple[bytes, int]]:
    from anonymize.io.manifest import read_rows, row_identity

    return [row_identity(row) for row in read_rows(out / "manifest.parquet")]


def decoded_outputs(out: Path) -> dict[str, np.ndarray]:
    """Every image written under ``out`` (the work folder and the manifest aside), decoded."""
    from anonymize.io.decode import decode_image

    return {str(path.relative_to(out)): decode_image(path).rgb for path in sorted(out.rglob("*"))
            if path.is_file() and ".anonymize" not in path.parts and path.suffix != ".parquet"}


def assert_same_run(first: Path, second: Path) -> None:
    """Same outputs (pixel for pixel) and same rows (timings and run ids aside)."""
    a, b = decoded_outputs(first), decoded_outputs(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert manifest_rows(first) == manifest_rows(second)
