"""Issue 27, items 13 and 18: the models a run needs are checked before its first image, and ICC profiles
carry colour only (their descriptive text is cleared, or the profile dropped with --strip-icc)."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.cli import main
from anonymize.weights import WeightsStore, read_lock
from tests.helpers import REPO_LOCK, crops

RESNET = "dlib_face_recognition_resnet"
SHAPE_5 = "dlib_shape_predictor_5"


def run_main(capsys, *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


# ---- item 13: a corrupt or refused model stops the run before its first image ------------------------


def _lock_with_file_in_weights_dir(lock_text: str, artefact: str, filename: str, data: bytes) -> str:
    """The real lock with ``artefact`` moved from its pip package into the weights folder, pinned to ``data``."""
    block = re.compile(rf"\[artifacts\.{artefact}\]\n(?:[^\[].*\n)*")
    entry = (f'[artifacts.{artefact}]\nfilename = "{filename}"\nurl = "http://127.0.0.1:9/{filename}"\n'
             f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\nlicense = "test"\nused_by = ["test"]\n\n')
    replaced, count = block.subn(entry, lock_text)
    assert count == 1
    return replaced


def _weights_with(tmp_path: Path, monkeypatch, artefact: str, data: bytes) -> Path:
    """A weights dir holding ``data`` in place of ``artefact``, pinned by a lock the CLI reads."""
    weights = tmp_path / "weights"
    filename = f"models/{artefact}.dat"
    (weights / "models").mkdir(parents=True)
    (weights / filename).write_bytes(data)
    lock = tmp_path / "weights.lock"
    lock.write_text(_lock_with_file_in_weights_dir(REPO_LOCK.read_text(encoding="utf-8"), artefact, filename, data), encoding="utf-8")
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(lock))
    return weights


def _real(artefact: str) -> Path:
    return WeightsStore(lock=read_lock(REPO_LOCK)).path(artefact)


@pytest.mark.parametrize("artefact", [RESNET, SHAPE_5])
def test_a_truncated_identity_model_stops_the_run_before_the_first_image(artefact, tmp_path, monkeypatch, capsys):
    truncated = _real(artefact).read_bytes()[:4096]
    weights = _weights_with(tmp_path, monkeypatch, artefact, truncated)
    source = crops(tmp_path / "in", ["a.png", "b.png"], size=(64, 64))
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "run", source, "--out", out, "--method", "blur", "--aligned", "--device", "cpu",
                            "--identity-metric", "--weights-dir", weights)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert f"{artefact}.dat" in lines[0] and "internal error" not in lines[0]
    assert not (out / "a.png").exists() and not (out / "b.png").exists()


def test_a_missing_identity_model_stops_the_run_before_the_first_image(tmp_path, monkeypatch, capsys):
    weights = _weights_with(tmp_path, monkeypatch, RESNET, b"placeholder")
    (weights / f"models/{RESNET}.dat").unlink()
    source = crops(tmp_path / "in", ["a.png"], size=(64, 64))
    code, _, err = run_main(capsys, "run", source, "--out", tmp_path / "out", "--method", "blur", "--aligned",
                            "--device", "cpu", "--identity-metric", "--weights-dir", weights)
    assert code == 2 and len(err.strip().splitlines()) == 1 and RESNET in err, err
    assert not (tmp_path / "out" / "a.png").exists()


def test_a_trusted_but_refused_model_is_a_weights_error_not_an_internal_error(tmp_path, monkeypatch, capsys):
    """A file accepted with `weights fetch --trust-unverified` (no published hash) that is not the network."""
    weights = _weights_with(tmp_path, monkeypatch, RESNET, b"x")
    lock = tmp_path / "weights.lock"
    text = lock.read_text(encoding="utf-8")
    lock.write_text(re.sub(r'(\[artifacts\.dlib_face_recognition_resnet\]\n(?:[^\[].*\n)*?)sha256 = ".*"\nsize = \d+\n', r"\1sha256_unpublished = true\n", text),
                    encoding="utf-8")
    damaged = _real(RESNET).read_bytes()
    damaged = damaged[:1000] + bytes(255 - b for b in damaged[1000:3000]) + damaged[3000:20000]
    (weights / f"models/{RESNET}.dat").write_bytes(damaged)
    code, _, err = run_main(capsys, "weights", "fetch", RESNET, "--trust-unverified", "--weights-dir", weights)
    assert code in (0, None), err
    source = crops(tmp_path / "in", ["a.png"], size=(64, 64))
    code, _, err = run_main(capsys, "run", source, "--out", tmp_path / "out", "--method", "blur", "--aligned",
                            "--device", "cpu", "--identity-metric", "--weights-dir", weights)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err and f"{RESNET}.dat" in err, err


# ---- item 18: an ICC profile carries colour data only -----------------------------------------------

PORTRAITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "portraits"
PROPHOTO_PORTRAIT = "kit_harington_2.jpg"  # a ProPhoto RGB profile: colours shift visibly without it
SECRET = "ALICE-SMITH-1985"


def _portrait(name: str) -> Path:
    path = PORTRAITS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared data folder is not mounted)")
    return path


def _same_length(text: str, length: int) -> str:
    return (text * (length // len(text) + 1))[:length]


def _profile_with_secrets(profile: bytes) -> bytes:
    """The Kodak ProPhoto profile with the secret in its description, its copyright and its vendor-private tag."""
    description = b"ProPhoto RGB"
    copyright_ = b"Copyright (c) Eastman Kodak Company, 1999, all rights reserved."
    assert description in profile and copyright_ in profile and b"mmod" in profile
    planted = profile.replace(description, _same_length(SECRET, len(description)).encode(), 1)
    planted = planted.replace(copyright_, _same_length(SECRET + " ", len(copyright_)).encode(), 1)
    private = planted.rfind(b"mmod")  # the tag's data (its type signature is its own name), not the table entry
    return planted[: private + 8] + SECRET.encode() + planted[private + 8 + len(SECRET):]


def _to_srgb(image: Image.Image) -> np.ndarray:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
    return np.asarray(ImageCms.profileToProfile(image.convert("RGB"), profile, ImageCms.createProfile("sRGB")), np.float64)


@pytest.fixture
def secret_portrait(tmp_path: Path) -> Path:
    source = Image.open(_portrait(PROPHOTO_PORTRAIT))
    folder = tmp_path / "in"
    folder.mkdir()
    source.save(folder / "kit.jpg", quality=95, icc_profile=_profile_with_secrets(source.info["icc_profile"]))
    assert SECRET.encode() in (folder / "kit.jpg").read_bytes()
    return folder


def _blur(capsys, source: Path, out: Path, *extra: str) -> None:
    code, _, err = run_main(capsys, "run", source, "--out", out, "--method", "blur", "--detector", "dlib-hog", "--device", "cpu", *extra)
    assert code in (0, None), err


def _outside_faces(out: Path) -> np.ndarray:
    from anonymize.io.manifest import read_rows

    image = Image.open(out / "kit.jpg")
    keep = np.ones((image.height, image.width), bool)
    for row in read_rows(out / "manifest.parquet"):
        x0, y0, x1, y1 = (int(round(v)) for v in row["box"])
        keep[max(0, y0 - 40) : y1 + 80, max(0, x0 - 40) : x1 + 40] = False  # the blurred ellipse reaches below the box
    assert 0.5 < keep.mean() < 1.0  # a face was anonymized, most of the picture was not
    return keep


def test_a_secret_in_the_icc_profile_does_not_reach_the_release_and_colours_stay(secret_portrait, tmp_path, capsys):
    from anonymize.audit.leaks import inspect_metadata

    out = tmp_path / "out"
    _blur(capsys, secret_portrait, out)
    written = (out / "kit.jpg").read_bytes()
    assert SECRET.encode() not in written and SECRET.encode("utf-16-be") not in written
    assert b"ALICE" not in written and b"Kodak" not in written
    output = Image.open(out / "kit.jpg")
    assert output.info.get("icc_profile"), "the colour data is kept"
    from PIL import ImageCms

    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(output.info["icc_profile"]))).strip() == "RGB profile"
    keep = _outside_faces(out)
    source = Image.open(secret_portrait / "kit.jpg")
    difference = np.abs(_to_srgb(output) - _to_srgb(source))[keep].mean()
    dropped = np.abs(np.asarray(output.convert("RGB"), np.float64) - _to_srgb(source))[keep].mean()
    assert difference < 1.5, difference  # the colours a colour-managed viewer shows stay the input's
    assert dropped > 5 * difference and dropped > 5, dropped  # (without the profile they would not: the test has teeth)
    finding = inspect_metadata(out / "kit.jpg")
    assert not finding.leaks, finding


def test_strip_icc_writes_no_profile_and_keeps_the_pixels(secret_portrait, tmp_path, capsys):
    out = tmp_path / "out"
    _blur(capsys, secret_portrait, out, "--strip-icc")
    assert "icc_profile" not in Image.open(out / "kit.jpg").info
    assert SECRET.encode() not in (out / "kit.jpg").read_bytes()
    keep = _outside_faces(out)
    source = np.asarray(Image.open(secret_portrait / "kit.jpg").convert("RGB"), np.float64)
    written = np.asarray(Image.open(out / "kit.jpg").convert("RGB"), np.float64)
    assert np.abs(written - source)[keep].mean() < 1.5  # the decoded values, re-encoded; no conversion


def _plant(image_path: Path, profile: bytes) -> None:
    image = Image.open(image_path)
    image.load()
    image.save(image_path, format=image.format, icc_profile=profile, **({"quality": 95} if image.format == "JPEG" else {}))


@pytest.mark.parametrize("planting", ["description", "copyright", "private tag", "appended bytes"])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_the_audit_flags_an_icc_profile_with_hidden_text(planting, suffix, tmp_path):
    from PIL import ImageCms

    from anonymize.audit.leaks import inspect_metadata
    from anonymize.io.decode import decode_image
    from anonymize.io.write import write_image

    path = tmp_path / f"out{suffix}"
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(tmp_path / f"in{suffix}",
                                                             icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    decoded = decode_image(tmp_path / f"in{suffix}")
    write_image(decoded, decoded.rgb, path)  # an output as a run writes it: clean
    assert not inspect_metadata(path).leaks
    profile = Image.open(path).info["icc_profile"]
    if planting == "description":  # the built-in sRGB's mluc texts are UTF-16
        planted = profile.replace("sRGB built-in".encode("utf-16-be"), _same_length(SECRET, 13).encode("utf-16-be"))
    elif planting == "copyright":
        planted = profile.replace("No copyright, use freely".encode("utf-16-be"), _same_length(SECRET, 24).encode("utf-16-be"))
    elif planting == "private tag":
        planted = _with_private_tag(profile, b"zzzz", b"zzzz" + bytes(4) + SECRET.encode())
    else:
        planted = profile + SECRET.encode()
    assert planted != profile
    _plant(path, planted)
    finding = inspect_metadata(path)
    assert "icc_text" in finding.kinds, finding
    assert "ICC profile" in finding.detail
    if planting in ("description", "copyright"):
        assert SECRET[:10] in finding.detail


def _with_private_tag(profile: bytes, signature: bytes, data: bytes) -> bytes:
    """``profile`` with one more tag (the table grows by 12 bytes; every offset moves with it)."""
    import struct

    count = struct.unpack(">I", profile[128:132])[0]
    entries = [struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i]) for i in range(count)]
    body = profile[132 + 12 * count :]
    table = b"".join(struct.pack(">4sII", sig, offset + 12, size) for sig, offset, size in entries)
    table += struct.pack(">4sII", signature, len(profile) + 12, len(data))
    new = profile[4:128] + struct.pack(">I", count + 1) + table + body + data
    return struct.pack(">I", len(new) + 4) + new


def test_an_unreadable_icc_profile_is_dropped_with_a_note(tmp_path):
    from anonymize.io.decode import decode_image
    from anonymize.io.write import encode_image

    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "in.png")
    decoded = decode_image(tmp_path / "in.png")
    decoded.icc_profile = bytes(16) + b"RGB " + SECRET.encode() * 10  # claims RGB, is no profile
    written = encode_image(decoded, decoded.rgb)
    assert SECRET.encode() not in written and "icc_profile" not in Image.open(io.BytesIO(written)).info
    assert "ICC profile dropped" in decoded.note
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(written)).convert("RGB")), decoded.rgb)


def test_a_rebuilt_profile_is_rebuilt_to_itself_and_keeps_standard_descriptions():
    from PIL import ImageCms

    from anonymize.io.icc import cleaned_profile, profile_findings

    for name in ("biden_1.jpg", PROPHOTO_PORTRAIT, "lin_manuel_miranda.png"):
        original = Image.open(_portrait(name)).info["icc_profile"]
        cleaned = cleaned_profile(original)
        assert cleaned_profile(cleaned) == cleaned and profile_findings(cleaned) == []
        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(cleaned))).strip()
        assert description == ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(original))).strip()


def test_a_resume_with_another_strip_icc_choice_is_refused(tmp_path, capsys):
    source = crops(tmp_path / "in", ["a.png"], size=(64, 64))
    out = tmp_path / "out"
    common = ("run", source, "--out", out, "--method", "blur", "--aligned", "--device", "cpu")
    code, _, err = run_main(capsys, *common)
    assert code in (0, None), err
    code, _, err = run_main(capsys, *common, "--strip-icc")
    assert code == 2 and "strip_icc" in err and "--overwrite" in err, err
