"""`anonymize audit --report DIR` writes only into DIR, never through a link in it, and deletes only what it wrote.

The report's folders (``audit-thumbs``, ``study-pairs``) hold crops of ORIGINAL faces: a link planted in
the report folder must not carry them elsewhere (into the release, say), and a folder of that name the
audit did not make must not lose its files. Every audit here is a blurred run of four CelebA photos
with dlib's HOG detector: seconds each.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers import SHARED, cli, copy_celeba_ids

THUMBS, STUDY = "audit-thumbs", "study-pairs"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (SHARED / "data" / "celeba-ids").is_dir():
        pytest.skip(f"{SHARED / 'data'} is absent: the audit needs real photos")
    root = tmp_path_factory.mktemp("report-folder")
    originals = copy_celeba_ids(SHARED, root / "originals")
    blurred = root / "blurred"
    result = cli("run", originals, "--out", blurred, "--method", "blur", "--aligned", "--device", "cpu", "--quiet",
                 "--weights-dir", root / "weights")
    assert result.exit_code == 0, result.output
    return {"originals": originals, "blurred": blurred, "weights": root / "weights"}


def audit(release: dict[str, Path], report: Path, pairs: int = 4):
    return cli("audit", release["originals"], release["blurred"], "--report", report, "--detector", "dlib-hog",
               "--device", "cpu", "--weights-dir", release["weights"], "--study-pairs", pairs, "--study-control-pairs", 0, "--report-only", "--quiet")


def digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:") and "\n" not in message, message
    return message


@pytest.mark.parametrize("name", [THUMBS, STUDY, "cache"])  # cache: the originals' findings, beside the audit's files
def test_a_link_in_the_report_folder_is_refused_naming_it_and_nothing_goes_through_it(release, tmp_path, name):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "holiday.jpg").write_bytes(b"someone else's photo")
    report = tmp_path / "report"
    report.mkdir()
    (report / name).symlink_to(elsewhere, target_is_directory=True)
    result = audit(release, report)
    assert digest(elsewhere) == {"holiday.jpg": hashlib.sha256(b"someone else's photo").hexdigest()}  # nothing written, nothing deleted
    message = one_line_error(result)
    assert str(report / name) in message and "symbolic link" in message
    assert (report / name).is_symlink()


@pytest.mark.parametrize("name", [THUMBS, STUDY])
def test_a_folder_the_audit_did_not_make_keeps_its_files(release, tmp_path, name):
    report = tmp_path / "report"
    (report / name).mkdir(parents=True)
    (report / name / "holiday.jpg").write_bytes(b"someone else's photo")
    result = audit(release, report)
    assert (report / name / "holiday.jpg").read_bytes() == b"someone else's photo"
    message = one_line_error(result)
    assert str(report / name) in message and "not made by anonymize audit" in message


def test_a_second_audit_replaces_what_the_first_wrote_and_nothing_else(release, tmp_path):
    report = tmp_path / "report"
    assert audit(release, report, pairs=8).exit_code == 0
    thumbs = sorted(path.name for path in (report / THUMBS).iterdir())
    assert thumbs and len(list((report / STUDY).iterdir())) == 16
    for name in (THUMBS, STUDY):  # the user's own files, added after the first audit
        (report / name / "mine.jpg").write_bytes(b"the user's")
        (report / name / "notes.txt").write_text("the user's")
    assert audit(release, report, pairs=4).exit_code == 0  # fewer pairs: the first kit's extra faces must go
    assert sorted(path.name for path in (report / STUDY).iterdir()) == \
        sorted([f"{n:03d}-{side}.jpg" for n in range(1, 5) for side in "ab"] + ["mine.jpg", "notes.txt"])
    assert sorted(path.name for path in (report / THUMBS).iterdir()) == sorted([*thumbs, "mine.jpg", "notes.txt"])
    for name in (THUMBS, STUDY):
        assert (report / name / "mine.jpg").read_bytes() == b"the user's"
