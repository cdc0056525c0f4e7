"""Issue 27: nothing leaks through the side doors (items 9, 10, 14, 15 and 16).

Each test injects the fault through the command line and says what the user then gets: file names that
are not UTF-8 or that look like Rich markup, a corrupt manifest in the output folder, a manifest at the
input's root, Ctrl-C in the middle of a run, answer-key cells that a spreadsheet would run as formulas,
and 32-bit integer and float TIFFs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from anonymize.audit.study import StudyPair, answer_key_csv
from anonymize.io.decode import decode_image
from anonymize.io.manifest import read_rows
from tests.helpers import cli, crops

REPO = Path(__file__).resolve().parents[1]
NOT_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: the name Linux stores is not valid UTF-8
NOT_UTF8_SHOWN = "caf\\xe9.jpg"  # how every file and line the user reads writes it
MARKUP = "a[/]b.jpg"  # the file "]b.jpg" in the folder "a[": printed as Rich markup, "[/]" closes nothing
BOLD = "[bold]x.jpg"


def blur_run(source: Path, out: Path, *extra: object):
    return cli("run", source, "--out", out, "--method", "blur", "--aligned", "--device", "cpu", "-q", *extra)


# ---- item 9: file names that are not UTF-8 or that look like markup ---------------------------------------


def named_portraits(shared_dir: Path, root: Path) -> Path:
    """Two portraits under awkward names, and a broken file under each kind of awkward name (so that
    the commands print those names: a broken file is reported by name)."""
    portraits = shared_dir / "data" / "portraits"
    for name, photo in ((NOT_UTF8, "obama_1.jpg"), (MARKUP, "kit_harington_2.jpg"), (BOLD, "kit_harington_2.jpg")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(portraits / photo, root / name)
    (root / os.fsdecode(b"bro\xffken.jpg")).write_bytes(b"not an image at all")
    (root / "a[" / "]broken.jpg").write_bytes(b"not an image either")
    return root


def test_names_that_are_not_utf8_or_look_like_markup_go_through_audit_and_attributes(shared_dir, tmp_path):
    source = named_portraits(shared_dir, tmp_path / "in")
    out, weights = tmp_path / "out", tmp_path / "weights"
    ran = cli("run", source, "--out", out, "--method", "blur", "--detector", "dlib-hog", "--device", "cpu",
              "--weights-dir", weights, "--allow-errors")
    assert ran.exit_code == 0, ran.output

    audit_dir = tmp_path / "out-audit"
    common = ("--detector", "dlib-hog", "--device", "cpu", "--weights-dir", weights, "--no-fid", "--no-heads",
              "--attribute-source", "none", "--report-only")
    audited = cli("audit", source, out, *common)
    assert audited.exit_code == 0, audited.output
    rows = pq.read_table(audit_dir / "audit.parquet").to_pylist()
    assert {NOT_UTF8_SHOWN, MARKUP, BOLD} <= {row["source_path"] for row in rows}
    summary = json.loads((audit_dir / "audit-summary.json").read_text(encoding="utf-8"))
    assert "\\udc" not in json.dumps(summary)  # no lone surrogate: readable text, like the manifest's source_path
    as_json = cli("audit", source, out, *common, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["faces"] == summary["faces"]
    report_dir = tmp_path / "report"
    reported = cli("audit", source, out, *common, "--report", report_dir)
    assert reported.exit_code == 0, reported.output
    assert NOT_UTF8_SHOWN in (report_dir / "index.html").read_text(encoding="utf-8")

    table_path = tmp_path / "attributes.parquet"
    estimated = cli("attributes", source, "--out", table_path, "--detector", "dlib-hog", "--device", "cpu",
                    "--weights-dir", weights)
    assert estimated.exit_code == 0, estimated.output
    printed = " ".join(estimated.output.split())
    assert "a[/]broken.jpg: not an image" in printed and "bro\\xffken.jpg: not an image" in printed
    keys = pq.read_table(table_path).column("source_path").to_pylist()
    assert {NOT_UTF8_SHOWN, MARKUP, BOLD} <= set(keys)
    estimated = cli("attributes", source, "--out", table_path, "--detector", "dlib-hog", "--device", "cpu",
                    "--weights-dir", weights, "--json")
    assert estimated.exit_code == 0, estimated.output
    assert "bro\\xffken.jpg: not an image (text file)" in json.loads(estimated.stdout)["errors"]


# ---- item 10: the manifest that is not the run's -------------------------------------------------------


def test_a_corrupt_manifest_in_the_output_stops_a_resume_in_one_line_naming_it_and_overwrite(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert blur_run(source, out).exit_code == 0
    (out / "manifest.parquet").write_bytes(b"half a parquet file")
    resumed = blur_run(source, out)
    assert resumed.exit_code == 2
    (line,) = resumed.stderr.strip().splitlines()
    assert line.startswith(f"error: {out / 'manifest.parquet'}: ") and "--overwrite" in line
    as_json = json.loads(blur_run(source, out, "--json").stdout)
    assert as_json == {"error": line.removeprefix("error: "), "exit_code": 2}
    assert blur_run(source, out, "--overwrite").exit_code == 0
    assert sorted(row["source_path"] for row in read_rows(out / "manifest.parquet")) == ["a.png", "b.png"]


def test_a_manifest_at_the_input_root_is_a_side_file_never_the_runs_manifest(tmp_path):
    elsewhere = crops(tmp_path / "elsewhere", ["somebody-else.png"])
    assert blur_run(elsewhere, tmp_path / "elsewhere-out").exit_code == 0
    for kind, content in (("foreign", (tmp_path / "elsewhere-out" / "manifest.parquet").read_bytes()), ("junk", b"junk")):
        source = crops(tmp_path / f"in-{kind}", ["a.png", "b.png"])
        (source / "manifest.parquet").write_bytes(content)
        out = tmp_path / f"out-{kind}"
        for _ in range(2):  # the run, then a resume into the same folder
            result = blur_run(source, out, "--copy-other")
            assert result.exit_code == 0, result.output
            rows = {row["source_path"]: row for row in read_rows(out / "manifest.parquet")}
            assert sorted(rows) == ["a.png", "b.png", "manifest.parquet"]  # no foreign run merged in
            side = rows["manifest.parquet"]
            assert side["status"] == "skipped" and side["output_path"] is None and "not copied" in side["note"]
        assert (out / "manifest.parquet").read_bytes() != content


# ---- item 14: Ctrl-C -------------------------------------------------------------------------------------


def interrupted_run(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``anonymize run`` in a subprocess, sent SIGINT once its first images are written and recorded (a manifest part)."""
    parts = out / ".anonymize" / "parts"

    def recorded() -> int:
        return len(list(parts.glob("*"))) if parts.is_dir() else 0

    before = recorded()
    process = subprocess.Popen([sys.executable, "-m", "anonymize", "run", str(source), "--out", str(out), "--method", "blur",
                                "--aligned", "--device", "cpu", *extra],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while recorded() <= before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_ctrl_c_during_a_run_says_how_to_resume_exits_130_and_the_resume_completes(shared_dir, tmp_path):
    photo = sorted((shared_dir / "data" / "celeba-ids" / "0").glob("*.jpg"))[0]
    small = Image.open(photo).resize((89, 109))
    source = tmp_path / "in"
    source.mkdir()
    count = 300
    for index in range(count):
        small.save(source / f"{index:03d}.jpg", quality=95)
    out = tmp_path / "out"

    stopped = interrupted_run(source, out)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == "error: interrupted: re-run the same command to resume"
    assert "Traceback" not in stopped.stderr and len(list(out.glob("*.jpg"))) < count

    stopped = interrupted_run(source, out, "--json")
    assert stopped.returncode == 130, stopped.stderr
    assert json.loads(stopped.stdout) == {"error": "interrupted: re-run the same command to resume", "exit_code": 130}

    resumed = cli("run", source, "--out", out, "--method", "blur", "--aligned", "--device", "cpu", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed"] > 0
    rows = read_rows(out / "manifest.parquet")
    assert len(rows) == count and {row["status"] for row in rows} == {"done"}
    assert len({row["source_path"] for row in rows}) == count
    assert sorted(path.name for path in out.iterdir()) == sorted([*(f"{i:03d}.jpg" for i in range(count)), "manifest.parquet", ".anonymize"])


# ---- item 15: the study's answer key --------------------------------------------------------------------


def test_answer_key_cells_that_a_spreadsheet_would_run_as_formulas_are_quoted():
    def face(source_path: str, identity: str) -> dict:
        return {"source_path": source_path, "face_index": 0, "identity": identity}

    pairs = [StudyPair(1, "same", face("=HYPERLINK(\"http://x\")/a.jpg", "+1"), face("=HYPERLINK(\"http://x\")/a.jpg", "+1")),
             StudyPair(2, "different", face("@SUM(A1)/b.jpg", "-2"), face("plain.jpg", "alice"))]
    rows = list(csv.reader(io.StringIO(answer_key_csv(pairs).decode("utf-8"))))
    assert rows[1] == ["1", "anonymized", "same", "'=HYPERLINK(\"http://x\")/a.jpg#0", "'=HYPERLINK(\"http://x\")/a.jpg#0", "'+1", "'+1"]
    assert rows[2] == ["2", "anonymized", "different", "'@SUM(A1)/b.jpg#0", "plain.jpg#0", "'-2", "alice"]
    for row in rows[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)
    not_utf8 = answer_key_csv([StudyPair(1, "same", face(NOT_UTF8, ""), face(NOT_UTF8, ""))]).decode("utf-8")
    assert f"{NOT_UTF8_SHOWN}#0" in not_utf8


# ---- item 16: 32-bit integer and float TIFFs ------------------------------------------------------------


def test_32_bit_integer_and_float_tiffs_are_converted_to_8_bit_explicitly_and_the_row_says_how(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    gradient = np.linspace(0.0, 1.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(np.full((48, 64), 100, np.int32)).save(source / "constant-int32.tif")
    Image.fromarray(np.full((48, 64), 70000, np.int32)).save(source / "bright-int32.tif")
    Image.fromarray(np.arange(48 * 64, dtype=np.int32).reshape(48, 64) * 1000 - 5000).save(source / "wide-int32.tif")
    Image.fromarray(gradient).save(source / "unit-float32.tif")
    Image.fromarray(gradient * 4.0 - 1.0).save(source / "wide-float32.tif")
    out = tmp_path / "out"
    result = cli("run", source, "--out", out, "--method", "blur", "--detector", "dlib-hog", "--on-no-face", "copy",
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["source_path"]: row for row in read_rows(out / "manifest.parquet")}
    pixels = {name: decode_image(out / name).rgb[..., 0] for name in rows}

    assert (pixels["constant-int32.tif"] == 100).all()  # ints already in 0..255 are kept, not stretched to black
    assert rows["constant-int32.tif"]["note"] == "32-bit integer gray written as 8-bit: values in 0..255 kept"
    assert (pixels["bright-int32.tif"] == 255).all()
    assert rows["bright-int32.tif"]["note"] == "32-bit integer gray written as 8-bit: constant 70000 clipped to 255"
    assert pixels["wide-int32.tif"].min() == 0 and pixels["wide-int32.tif"].max() == 255
    assert rows["wide-int32.tif"]["note"] == "32-bit integer gray written as 8-bit: range -5000..3066000 stretched to 0..255"
    assert np.array_equal(pixels["unit-float32.tif"], np.round(gradient * 255).astype(np.uint8))
    assert rows["unit-float32.tif"]["note"] == "32-bit float gray written as 8-bit: 0..1 scaled to 0..255"
    assert np.abs(pixels["wide-float32.tif"].astype(int) - np.round(gradient * 255)).max() <= 1  # float32 rounding
    assert rows["wide-float32.tif"]["note"] == "32-bit float gray written as 8-bit: range -1..3 stretched to 0..255"
    assert {row["status"] for row in rows.values()} == {"no_face"}
