"""Issue 27 item 6: the audit must not trust the manifest's pairing. Every output is compared by content with every
original (a perceptual hash of the image and of each face, the judges' descriptors as a second net), so an original
released under another output's name, its manifest row edited to name another source, fails the audit."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.audit import AuditConfig, run_audit
from anonymize.audit.content_check import (
    FACE_DISTANCE, IMAGE_DISTANCE, ContentIndex, copies_crossed, content_copies, face_hash, hamming, perceptual_hash,
)
from anonymize.audit.summary import AuditSummary
from anonymize.cli import _register_commands, app
from anonymize.io.decode import decode_image
from anonymize.run import run, run_config
from tests.helpers import copy_celeba_ids


def resized_reencoded(rgb: np.ndarray, scale: float = 0.6, quality: int = 70) -> np.ndarray:
    """The photo made smaller and saved again as a lossy JPEG: what a careless copy looks like."""
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def write_jpeg(rgb: np.ndarray, path: Path, quality: int = 70) -> None:
    Image.fromarray(rgb).save(path, "JPEG", quality=quality)


@pytest.fixture(scope="module")
def photos(shared_dir: Path) -> list[np.ndarray]:
    """Eight CelebA photos of four people."""
    found = []
    for identity in ("0", "1", "2", "3"):
        for photo in sorted((shared_dir / "data" / "celeba-ids" / identity).glob("*.jpg"))[:2]:
            found.append(decode_image(photo).rgb)
    return found


# ---- the hashes and the index --------------------------------------------------------------------------


def test_a_resized_reencoded_copy_keeps_its_hash_and_other_photos_do_not(photos):
    hashes = np.array([perceptual_hash(rgb) for rgb in photos], dtype=np.uint64)
    copies = np.array([perceptual_hash(resized_reencoded(rgb)) for rgb in photos], dtype=np.uint64)
    distances = hamming(copies, hashes)
    assert np.diag(distances).max() <= IMAGE_DISTANCE
    off = distances + np.eye(len(photos), dtype=np.int16) * 64
    assert off.min() > IMAGE_DISTANCE


def test_a_face_hash_follows_the_face_not_the_frame(photos):
    box = (40.0, 60.0, 140.0, 180.0)
    same = face_hash(photos[0], box)
    shifted = np.roll(photos[0], (7, 5), axis=(0, 1))
    assert hamming(np.array([same]), np.array([face_hash(shifted, (45.0, 67.0, 145.0, 187.0))]))[0, 0] <= FACE_DISTANCE
    assert face_hash(photos[0], (0, 0, 8, 8)) is None  # too small to hash


def test_the_index_finds_a_copy_of_another_original_whatever_the_pairing(photos):
    index = ContentIndex()
    for i, rgb in enumerate(photos):
        index.add_original(f"o{i}.jpg", rgb)
    blurred = cv2.GaussianBlur(photos[0], (0, 0), 3)
    index.add_output("a.jpg", blurred)  # its own source, blurred: fine
    index.add_output("b.jpg", resized_reencoded(photos[5]))  # another original, paired with o1
    index.add_output("c.jpg", photos[6])  # an original, paired with nothing
    found = index.copies({"a.jpg": "o0.jpg", "b.jpg": "o1.jpg", "c.jpg": None})
    assert [(copy.output_path, copy.original_path, copy.paired_source) for copy in found] == [
        ("b.jpg", "o5.jpg", "o1.jpg"), ("c.jpg", "o6.jpg", None)]
    assert found[0].evidence[0].startswith("image hash") and "o5.jpg" in found[0].sentence()


def test_a_dataset_holding_the_same_photo_twice_is_no_finding(photos):
    index = ContentIndex()
    index.add_original("a.jpg", photos[0])
    index.add_original("a-again.jpg", resized_reencoded(photos[0], 0.8, 90))  # the same photo under two names
    index.add_original("b.jpg", photos[1])
    index.add_output("a.jpg", cv2.GaussianBlur(photos[0], (0, 0), 2))
    index.add_output("b.jpg", cv2.GaussianBlur(photos[1], (0, 0), 2))
    assert index.copies({"a.jpg": "a.jpg", "b.jpg": "b.jpg"}) == []


def test_an_output_must_be_clearly_closer_to_another_original_than_to_its_own_source():
    from anonymize.audit.content_check import Seen

    def flipped(value: int, bits: range) -> np.uint64:
        return np.uint64(value ^ sum(1 << bit for bit in bits))

    base = 0x0F0F_3C3C_5A5A_A5A5
    index = ContentIndex()
    index.originals["s.jpg"] = Seen(np.uint64(base))
    index.originals["burst.jpg"] = Seen(flipped(base, range(0, 12)))  # another shot of the same scene, 12 bits away
    index.outputs["blurred.jpg"] = Seen(flipped(base, range(0, 7)))  # 7 bits from its source, 5 from the other shot
    index.outputs["copied.jpg"] = Seen(flipped(base, range(1, 12)))  # 1 bit from the other shot, 11 from its source
    found = index.copies({"blurred.jpg": "s.jpg", "copied.jpg": "s.jpg"})
    assert [(copy.output_path, copy.original_path, copy.evidence) for copy in found] == [
        ("copied.jpg", "burst.jpg", ("image hash 1/64",))]


def test_the_judges_flag_a_face_that_is_another_originals_face_to_the_last_digit():
    rng = np.random.default_rng(0)
    faces = rng.normal(size=(4, 128)).astype(np.float32)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    index = ContentIndex({"dlib": 0.6})

    def noise() -> np.ndarray:  # whole images that match nothing: only the descriptors speak
        return rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)

    for i in range(4):
        index.add_original(f"o{i}.jpg", noise(), descriptors={"dlib": faces[i:i + 1]})
    index.add_output("x.jpg", noise(), descriptors={"dlib": faces[2:3] + 0.01})  # o2's face, paired with o0
    index.add_output("y.jpg", noise(), descriptors={"dlib": faces[1:2] + 0.01})  # its own source's face
    found = index.copies({"x.jpg": "o0.jpg", "y.jpg": "o1.jpg"})
    assert [(copy.output_path, copy.original_path) for copy in found] == [("x.jpg", "o2.jpg")]
    assert found[0].evidence[0].startswith("dlib distance")


def test_thousands_of_images_are_matched_in_one_vectorised_pass():
    rng = np.random.default_rng(1)
    count = 3000
    index = ContentIndex({"dlib": 0.6, "faceres": 0.97})
    hashes = rng.integers(0, 2**63, size=(2, count), dtype=np.uint64)
    faces = {name: rng.normal(size=(2, count, size)).astype(np.float32) for name, size in (("dlib", 128), ("faceres", 1024))}
    from anonymize.audit.content_check import Seen

    for i in range(count):
        index.originals[f"o{i}"] = Seen(hashes[0, i], [hashes[1, i]], {name: values[0, i:i + 1] for name, values in faces.items()})
        index.outputs[f"x{i}"] = Seen(hashes[0, i] ^ np.uint64(0b1011), [hashes[1, i] ^ np.uint64(1 << 40)],
                                      {name: values[0, i:i + 1] + 0.001 for name, values in faces.items()})
    index.outputs["x7"] = Seen(hashes[0, 9], [], {})  # original o9, paired with o7
    started = time.perf_counter()
    found = index.copies({f"x{i}": f"o{i}" for i in range(count)})
    assert [(copy.output_path, copy.original_path) for copy in found] == [("x7", "o9")]
    assert time.perf_counter() - started < 20  # about 1 s on the 2-core build machine


def test_nothing_found_says_nothing_and_a_copy_fails_in_one_sentence(photos, tmp_path):
    index = ContentIndex()
    paths = {}
    for i, rgb in enumerate(photos[:3]):
        paths[f"o{i}.jpg"] = tmp_path / f"o{i}.jpg"
        write_jpeg(rgb, paths[f"o{i}.jpg"], 95)
    outputs = {"x.jpg": paths["o2.jpg"]}  # decoded by the completion step: the pair step never saw these files
    record = content_copies(index, paths, outputs, {"x.jpg": "o0.jpg"}, lambda path, rel: decode_image(path).rgb)
    assert record.outputs == 1 and record.originals == 3 and record.count == 1
    (sentence,) = copies_crossed(record)
    assert sentence.startswith("1 output(s) are copies") and "x.jpg is a copy of original o2.jpg (paired with o0.jpg" in sentence
    assert copies_crossed(None) == [] and copies_crossed(content_copies(ContentIndex(), {}, {}, {}, None)) == []


# ---- the audit, end to end on real photos ---------------------------------------------------------------


@pytest.fixture(scope="module")
def release(shared_dir: Path, human_weights, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three people x two CelebA photos blurred; then a copy of the release with two faults: ``0/<first>`` replaced by
    person 1's original photo, its manifest row edited to name ``0/<second>``; ``2/<first>`` replaced by a resized,
    re-encoded copy of person 1's second photo (its row untouched)."""
    root = tmp_path_factory.mktemp("content-check")
    originals = copy_celeba_ids(shared_dir, root / "celeba", ("0", "1", "2"), 2)
    blurred = root / "blurred"
    run(run_config(originals, blurred, method="blur", aligned=True, device="cpu", weights_dir=human_weights.weights_dir))
    faulty = root / "faulty"
    shutil.copytree(blurred, faulty)
    first, second = (sorted(p.name for p in (originals / identity).glob("*.jpg")) for identity in ("0", "1"))
    shutil.copyfile(originals / "1" / second[0], faulty / "0" / first[0])
    third = sorted(p.name for p in (originals / "2").glob("*.jpg"))
    write_jpeg(resized_reencoded(decode_image(originals / "1" / second[1]).rgb), faulty / "2" / third[0])
    manifest = faulty / "manifest.parquet"
    table = pq.read_table(manifest)
    rows = table.to_pylist()
    for row in rows:
        if row["output_path"] == f"0/{first[0]}":
            row["source_path"], row["source_path_bytes"] = f"0/{first[1]}", f"0/{first[1]}".encode()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(table.schema.metadata), manifest)
    return {"originals": originals, "blurred": blurred, "faulty": faulty, "swapped": Path(f"0/{first[0]}"),
            "swapped_from": Path(f"1/{second[0]}"), "claimed": Path(f"0/{first[1]}"), "resized": Path(f"2/{third[0]}"),
            "resized_from": Path(f"1/{second[1]}")}


@pytest.fixture
def human_env(human_weights):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANONYMIZE_HOME", str(human_weights.weights_dir))
        patch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(human_weights.lock_path))
        yield human_weights


def test_a_clean_blurred_release_has_no_copy(release, human_env):
    result = run_audit(AuditConfig(release["originals"], release["blurred"], detector="dlib-hog", weights_dir=human_env.weights_dir,
                                   device="cpu", write_files=False, attribute_source=None, fid=False, lpips=False))
    copies = result.summary.content_copies
    assert copies is not None and copies.count == 0 and copies.copies == []
    assert copies.outputs == 6 and copies.originals == 6 and copies.measures[:2] == ["image hash", "face hash"]
    assert {"dlib", "faceres", "mobileface"} <= set(copies.measures)
    assert not [sentence for sentence in result.summary.crossed if "copies of an original" in sentence]
    assert AuditSummary.from_json(result.summary.to_json()).to_json() == result.summary.to_json()


def test_an_original_released_under_another_name_fails_the_audit(release, human_env):
    _register_commands()
    args = ["audit", str(release["originals"]), str(release["faulty"]), "--detector", "dlib-hog", "--weights-dir",
            str(human_env.weights_dir), "--device", "cpu", "--no-fid", "--attribute-source", "none", "--json", "--fail-on-leak",
            "--summary", str(release["faulty"].parent / "faulty-audit" / "audit-summary.json"),
            "--out-parquet", str(release["faulty"].parent / "faulty-audit" / "audit.parquet")]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    found = {(copy["output_path"], copy["original_path"]): copy for copy in summary["content_copies"]["copies"]}
    swapped = found[(release["swapped"].as_posix(), release["swapped_from"].as_posix())]
    assert swapped["paired_source"] == release["claimed"].as_posix()
    assert any(item.startswith("image hash 0/64") for item in swapped["evidence"])
    assert any(item.startswith("dlib distance") for item in swapped["evidence"])  # the second net agrees
    resized = found[(release["resized"].as_posix(), release["resized_from"].as_posix())]
    assert any(item.startswith("image hash") for item in resized["evidence"])
    assert set(found) == {(release["swapped"].as_posix(), release["swapped_from"].as_posix()),
                          (release["resized"].as_posix(), release["resized_from"].as_posix())}
    (sentence,) = [text for text in summary["crossed"] if "copies of an original" in text]
    assert sentence.startswith("2 output(s)") and release["swapped_from"].as_posix() in sentence
