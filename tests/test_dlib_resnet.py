"""dlib's face ResNet read from its own file equals dlib, face by face, on the real photos of ../shared.

Every face: those dlib's HOG detector finds in the celeba-ids photos (one each), the portraits and
the two non-VOC group photos, and the hand-labelled faces of the nine VOC group photos.
Each face's chip is cut once by dlib; dlib's binding and the PyTorch module then describe the same
chip. The figures (max / mean difference) are printed with ``pytest -s``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
import pytest
import torch

from anonymize.faces.chips import face_chip_location, face_chips
from anonymize.io.decode import decode_image
from anonymize.metrics.detection import read_imglab_boxes
from anonymize.metrics.identity import SAME_PERSON_DISTANCE, DlibRecogniser, distance
from anonymize.models.legacy.dlib_resnet import DlibFormatError, load_dlib_face_resnet

MAX_COMPONENT_DIFFERENCE = 1e-4
UPSAMPLE_BELOW_SIDE = 1000  # HOG finds small faces after one 2x upsampling; big photos do not need it


@dataclass
class Face:
    source: str  # "<folder>/<file>"
    chip: np.ndarray  # 150 x 150 x 3 uint8, as dlib cuts it
    landmarks: np.ndarray  # dlib's 5 points


@pytest.fixture(scope="module")
def store(tiny_weights):
    return tiny_weights.store()


@pytest.fixture(scope="module")
def network(store):
    return load_dlib_face_resnet(store.require("dlib_face_recognition_resnet"))


@pytest.fixture(scope="module")
def dlib_encoder(store):
    return dlib.face_recognition_model_v1(str(store.require("dlib_face_recognition_resnet")))


def _boxes(shared_dir: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Source -> face boxes for every photo of the three data sets."""
    data = shared_dir / "data"
    detector = dlib.get_frontal_face_detector()
    boxes = {}
    labelled = {**read_imglab_boxes(data / "groups" / "training.xml"), **read_imglab_boxes(data / "groups" / "testing.xml")}
    photos = sorted((data / "celeba-ids").rglob("*.jpg")) + sorted((data / "portraits").iterdir()) + sorted((data / "groups").glob("*.jpg"))
    for photo in photos:
        source = str(photo.relative_to(data))
        if photo.name in labelled:
            boxes[source] = labelled[photo.name]
            continue
        rgb = decode_image(photo).rgb
        found = detector(np.ascontiguousarray(rgb), 1 if max(rgb.shape[:2]) < UPSAMPLE_BELOW_SIDE else 0)
        boxes[source] = [(r.left(), r.top(), r.right() + 1.0, r.bottom() + 1.0) for r in found]
    return boxes


@pytest.fixture(scope="module")
def faces(shared_dir, store) -> list[Face]:
    predictor = dlib.shape_predictor(str(store.require("dlib_shape_predictor_5")))
    faces = []
    for source, boxes in _boxes(shared_dir).items():
        if not boxes:
            continue
        rgb = np.ascontiguousarray(decode_image(shared_dir / "data" / source).rgb)
        shapes = dlib.full_object_detections()
        for x0, y0, x1, y1 in boxes:
            shapes.append(predictor(rgb, dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1)))
        for shape, chip in zip(shapes, dlib.get_face_chips(rgb, shapes, size=150, padding=0.25)):
            faces.append(Face(source, np.asarray(chip), np.array([(p.x, p.y) for p in shape.parts()], float)))
    return faces


@pytest.fixture(scope="module")
def described(faces, network, dlib_encoder) -> tuple[np.ndarray, np.ndarray]:
    """(dlib's descriptors, the module's descriptors) of every face, in one batch call each."""
    chips = [face.chip for face in faces]
    theirs = np.asarray(dlib_encoder.compute_face_descriptor(chips), dtype=np.float32)
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
        ours = torch.cat([network(part) for part in batch.split(64)]).numpy()
    return theirs, ours


def test_every_face_of_the_shared_data_gets_dlibs_descriptor(faces, described):
    theirs, ours = described
    difference = np.abs(theirs - ours)
    folders = {face.source.split("/")[0] for face in faces}
    print(f"\n{len(faces)} faces: max |dlib - torch| = {difference.max():.3g}, mean = {difference.mean():.3g}")
    assert folders == {"celeba-ids", "portraits", "groups"}
    assert len(faces) >= 150 + 43 + 18  # every CelebA photo, every labelled face, one or more per portrait
    assert ours.dtype == np.float32 and ours.shape == (len(faces), 128)
    assert difference.max() <= MAX_COMPONENT_DIFFERENCE


def test_same_and_different_person_decisions_on_celeba_are_dlibs(faces, described):
    theirs, ours = described
    celeba = [i for i, face in enumerate(faces) if face.source.startswith("celeba-ids/")]
    identity = np.array([faces[i].source.split("/")[1] for i in celeba])
    pairs = np.triu_indices(len(celeba), k=1)
    same_person = identity[pairs[0]] == identity[pairs[1]]

    def decisions(descriptors: np.ndarray) -> np.ndarray:
        chosen = descriptors[celeba]
        return distance(chosen[pairs[0]], chosen[pairs[1]]) < SAME_PERSON_DISTANCE

    assert np.array_equal(decisions(ours), decisions(theirs))
    # The decisions mean something: the recogniser tells these five people apart.
    accepted_same, accepted_different = decisions(ours)[same_person].mean(), decisions(ours)[~same_person].mean()
    print(f"\nceleba-ids at {SAME_PERSON_DISTANCE}: {accepted_same:.1%} of same-person pairs and {accepted_different:.1%} of different-person pairs accepted")
    assert accepted_same > 0.9 and accepted_different < 0.01


def test_gradients_with_respect_to_the_chip_match_finite_differences(faces, store):
    network64 = load_dlib_face_resnet(store.require("dlib_face_recognition_resnet")).double()
    chip = torch.from_numpy(faces[0].chip).permute(2, 0, 1)[None].double()
    # Off the integer grid: flat regions of a uint8 chip make exact ties in max-pooling, where the
    # network has no derivative. Elsewhere it is piecewise linear, so a tiny step is exact.
    chip = (chip + torch.rand(chip.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    weights = torch.randn(128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (network64(chip)[0] @ weights).backward()
    for seed in range(3):
        direction = torch.randn(chip.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        step = 1e-6
        with torch.no_grad():
            ahead = network64(chip + step * direction)[0] @ weights
            behind = network64(chip - step * direction)[0] @ weights
        numeric = (ahead - behind) / (2 * step)
        analytic = (chip.grad * direction).sum()
        assert abs(numeric - analytic) <= 1e-5 * abs(float(analytic))
        assert abs(float(analytic)) > 1e-4  # the chip does move the descriptor


def test_chips_cut_in_torch_are_dlibs_chips(shared_dir, faces):
    """The module's own chip cutter (pyramid and all) against dlib's, on photos with small and large faces."""
    sources = ["portraits/obama_1.jpg", "groups/2008_001009.jpg", "groups/bald_guys.jpg", "celeba-ids/0/032486.jpg"]
    for source in sources:
        image_faces = [face for face in faces if face.source == source]
        rgb = decode_image(shared_dir / "data" / source).rgb
        theirs = np.stack([face.chip for face in image_faces])
        exact = face_chips(rgb, [face.landmarks for face in image_faces], round_like_dlib=True)
        smooth = face_chips(rgb, [face.landmarks for face in image_faces])
        assert len(image_faces) >= 1
        assert np.array_equal(exact.permute(0, 2, 3, 1).numpy(), theirs)
        difference = np.abs(smooth.permute(0, 2, 3, 1).numpy() - theirs)
        assert difference.max() < 2.0 and difference.mean() < 0.75  # dlib truncates each level to 8 bits
    assert max(face_chip_location(face.landmarks).rect[2] - face_chip_location(face.landmarks).rect[0]
               for face in faces if face.source == "groups/bald_guys.jpg") > 2 * 150  # so one pyramid level was used


def test_descriptors_are_differentiable_from_the_image(shared_dir, faces, network):
    """image -> chip -> descriptor in one graph: the photo's pixels receive a gradient, inside the face only."""
    face = next(face for face in faces if face.source == "portraits/obama_1.jpg")
    rgb = decode_image(shared_dir / "data" / face.source).rgb
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().requires_grad_(True)
    descriptor = network(face_chips(image, [face.landmarks]))[0]
    descriptor.norm().backward()
    moved = image.grad.abs().sum(dim=0) > 0
    rows, cols = np.nonzero(moved.numpy())
    left, top, right, bottom = face_chip_location(face.landmarks).rect
    assert moved.any() and cols.min() >= left - 2 and cols.max() <= right + 2 and rows.min() >= top - 2 and rows.max() <= bottom + 2


def test_a_truncated_file_fails_with_the_byte_offset(store, tmp_path):
    original = store.require("dlib_face_recognition_resnet").read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(original[:len(original) // 2])
    with pytest.raises(DlibFormatError) as failure:
        load_dlib_face_resnet(truncated)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"{truncated}: at byte ") and "found end of file" in message


def test_an_altered_file_fails_with_the_byte_offset_and_what_was_expected(store, tmp_path):
    original = store.require("dlib_face_recognition_resnet").read_bytes()
    offset = original.index(b"con_4")
    altered = tmp_path / "altered.dat"
    altered.write_bytes(original[:offset] + b"con_9" + original[offset + 5:])
    with pytest.raises(DlibFormatError, match=rf"^{altered}: at byte {offset - 2}: expected layer name 'con_4' or 'con_5' or 'con_6', found 'con_9'$"):
        load_dlib_face_resnet(altered)
    version_at = offset + 5  # the conv layer's parameter tensor: control byte 0x01, then its version, 2
    changed = bytearray(original)
    changed[version_at + 1] = 3
    altered.write_bytes(bytes(changed))
    with pytest.raises(DlibFormatError, match=rf"at byte {version_at}: expected con params tensor version 2, found 3$"):
        load_dlib_face_resnet(altered)


def test_loading_needs_neither_dlib_nor_pickle(store):
    path = store.require("dlib_face_recognition_resnet")
    code = ("import sys, pickle; pickle.loads = pickle.load = None; sys.modules['dlib'] = None\n"
            "from anonymize.models.legacy.dlib_resnet import load_dlib_face_resnet\n"
            f"print(sum(b.numel() for b in load_dlib_face_resnet({str(path)!r}).buffers()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 5_000_000


def test_the_identity_metric_gives_the_same_numbers_with_either_backend(shared_dir, store):
    torch_backend, dlib_backend = DlibRecogniser(store, "torch"), DlibRecogniser(store, "dlib")
    rgb = decode_image(shared_dir / "data" / "groups" / "2008_001009.jpg").rgb
    boxes = read_imglab_boxes(shared_dir / "data" / "groups" / "training.xml")["2008_001009.jpg"]
    ours, theirs = torch_backend.descriptors(rgb, boxes), dlib_backend.descriptors(rgb, boxes)
    assert ours.shape == theirs.shape == (len(boxes), 128)
    assert np.abs(ours - theirs).max() <= MAX_COMPONENT_DIFFERENCE
    assert torch_backend.descriptors(rgb, []).shape == (0, 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_descriptors_on_cuda_equal_the_cpu_ones(faces, store, described):
    chips = torch.from_numpy(np.stack([face.chip for face in faces[:32]])).permute(0, 3, 1, 2)
    with torch.no_grad():
        on_gpu = load_dlib_face_resnet(store.require("dlib_face_recognition_resnet")).cuda()(chips.cuda()).cpu().numpy()
    assert np.abs(on_gpu - described[1][:32]).max() <= MAX_COMPONENT_DIFFERENCE
