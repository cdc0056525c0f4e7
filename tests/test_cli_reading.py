"""The command line reads at 80 columns, starts without torch, and says what every method is (issue 23, part 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from anonymize.cli import COMMANDS, _register_commands, app
from anonymize.methods import METHODS, method_class
from anonymize.methods.registry import download_free_methods, no_download_alternative
from anonymize.weights import read_lock

REPO = Path(__file__).resolve().parents[1]


def anonymize_process(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    """``python -m anonymize ARGS`` in a fresh interpreter at ``columns`` columns."""
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "anonymize", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def help_text(*args: str) -> str:
    """``anonymize ARGS --help`` in-process at 80 columns (Click reads COLUMNS for its width)."""
    from typer.testing import CliRunner

    _register_commands()
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def all_command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command, as the words that name it."""
    import typer.main

    _register_commands()
    root = typer.main.get_command(app)
    paths = []
    for name, command in root.commands.items():
        paths.append((name,))
        paths += [(name, sub) for sub in getattr(command, "commands", {})]
    return paths


def test_run_help_reads_at_80_columns():
    result = anonymize_process("run", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in text and "<bool>" not in text
    assert "anonymize[ray]" in text
    words = set(text.replace(",", " ").replace(".", " ").split())
    assert set(METHODS) <= words  # every method name whole, never split across lines
    assert lines[0].startswith("Usage: anonymize run") and "INPUT_DIR" in lines[0]
    assert "input_dir" not in text  # usage and text name the argument alike
    assert len(lines) < 150


def test_h_is_help_for_the_root_and_for_commands():
    for args in ((), ("run",), ("methods",), ("audit",)):
        assert anonymize_process(*args, "-h").stdout == anonymize_process(*args, "--help").stdout


@pytest.mark.parametrize("path", all_command_paths(), ids=" ".join)
def test_every_help_fits_80_columns_without_markup_loss(path):
    text = help_text(*path)
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long and "…" not in text and "<bool>" not in text


def test_root_help_lists_exactly_the_registered_commands():
    import typer.main

    _register_commands()
    assert set(typer.main.get_command(app).commands) == set(COMMANDS)
    text = anonymize_process("--help").stdout
    assert all(f"  {name} " in text for name in COMMANDS)


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("run", "--help"), ("methods", "--help")])
def test_help_and_version_never_import_torch(args):
    code = ("import sys\nfrom anonymize.cli import main\n"
            f"try:\n    main({list(args)!r})\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
            "heavy = sorted(name for name in ('torch', 'dlib', 'facenet_pytorch') if name in sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]


def test_version_prints_the_version():
    from anonymize import __version__

    assert anonymize_process("--version").stdout.strip() == f"anonymize {__version__}"


# -- anonymize methods ----------------------------------------------------------------------------------


def test_methods_lists_every_method_with_goal_weights_and_typed_options():
    result = anonymize_process("methods")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert all(len(line) <= 80 for line in text.splitlines())
    for name in METHODS:
        cls = method_class(name)
        assert f"{name}  (privacy goal: {cls.privacy_goal}" in text
        assert cls.summary and cls.summary.split()[0] in text
        for field in fields(cls.Params):
            assert f"-p {field.name}=" in text
    assert "-p sigma=0.08  (float)" in text  # blur's option, its default and type
    assert "-p trainable_layers=3,4,5,6,7  (tuple[int, ...])" in text  # as written after -p
    assert "-p sigma=0.08  (float): Gaussian sigma as a fraction of the crop side" in text  # its declared help


def test_option_help_leaves_params_behaviour_alone():
    blur, ksame = method_class("blur").Params, method_class("ksame").Params
    assert blur().sigma == 0.08 and blur(sigma=0.2).sigma == 0.2 and ksame().k == 5
    assert {field.name: field.metadata.get("help") for field in fields(blur)}["passes"] is None


def test_methods_json_gives_defaults_and_weight_presence(tmp_path):
    result = anonymize_process("methods", "--json", "--weights-dir", str(tmp_path))
    infos = {info["name"]: info for info in json.loads(result.stdout)}
    assert list(infos) == list(METHODS)
    assert {option["name"]: option["default"] for option in infos["ksame"]["options"]}["k"] == 5
    assert set(infos["falco"]["weights"].values()) == {"missing"}  # an empty weights folder
    assert infos["blur"]["weights"] == {}


def test_declared_weights_exist_in_the_lock_and_match_what_the_latent_stack_loads():
    from anonymize.methods.ksame.method import DLIB_ARTEFACTS, LANDMARKS_68
    from anonymize.models.registry import artefact_of, generator_artefact

    lock = read_lock()
    latent = (artefact_of("e4e"), artefact_of("arcface"), artefact_of("farl"), generator_artefact("genforce"))
    for name in METHODS:
        cls = method_class(name)
        assert set(cls.weights_needed) <= set(lock), name
        if name in ("falco", "cfa", "camouflage", "attributes"):
            assert set(cls.weights_needed) == set(latent), name
    assert method_class("ksame").weights_needed == (*DLIB_ARTEFACTS, LANDMARKS_68)  # the shape-free space's landmarks


def test_missing_weights_message_names_every_download_free_method():
    free = download_free_methods()
    assert {"blur", "pixelate", "mask", "ksame", "adversarial", "parts -p backend=warp"} <= set(free)
    assert not {"falco", "cfa", "camouflage", "attributes", "parts"} & set(free)
    line = no_download_alternative()
    assert line.startswith("no download needed: --method blur|pixelate|mask|ksame|adversarial")
    assert "--method parts -p backend=warp" in line


# -- --dry-run lists per file ---------------------------------------------------------------------------

PORTRAITS = Path("/tmp/w23/shared/data/portraits")
needs_portraits = pytest.mark.skipif(not PORTRAITS.is_dir(), reason="needs ../shared/data/portraits")


def small_folder(tmp_path: Path) -> Path:
    """Two real portraits and a broken JPEG."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted(PORTRAITS.glob("*.jpg"))[:2]:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return folder


@needs_portraits
def test_dry_run_lists_each_file_with_its_faces_or_error(tmp_path):
    from tests.helpers import cli

    folder = small_folder(tmp_path)
    common = ("run", folder, "--out", tmp_path / "out", "--method", "blur", "--detector", "dlib-hog", "--dry-run", "--workers", "0")
    report = json.loads(cli(*common, "--json").stdout)
    files = {item["path"]: item for item in report["files"]}
    assert set(files) == {path.name for path in folder.iterdir()}
    assert files["broken.jpg"]["status"] == "error" and files["broken.jpg"]["error"]
    photos = [files[name] for name in files if name != "broken.jpg"]
    assert all(item["faces"] >= 1 and item["error"] is None for item in photos)
    assert sum(item["faces"] for item in files.values()) == report["faces"]
    text = cli(*common).stdout
    for item in photos:
        assert f"{item['path']}  {item['faces']} face" in text
    assert "broken.jpg  error: " in text
    assert not (tmp_path / "out").exists()


@needs_portraits
def test_dry_run_progress_says_detecting_not_anonymizing(tmp_path):
    from anonymize.run import Progress, run, run_config

    class Phases(Progress):
        def __init__(self) -> None:
            self.phases: list[str] = []

        def start(self, total: int, phase: str = "anonymizing") -> None:
            self.phases.append(phase)

    folder = small_folder(tmp_path)
    progress = Phases()
    run(run_config(folder, tmp_path / "out", method="blur", detector="dlib-hog", dry_run=True, workers=0), progress)
    assert progress.phases == ["detecting"]


# -- anonymize run FILE ---------------------------------------------------------------------------------


@needs_portraits
def test_run_one_image_writes_it_into_the_out_folder_with_a_manifest_and_never_touches_it(tmp_path):
    import hashlib
    import shutil

    from tests.helpers import cli, manifest_rows

    photo = tmp_path / "in" / "portrait.jpg"
    photo.parent.mkdir()
    shutil.copy(sorted(PORTRAITS.glob("*.jpg"))[0], photo)
    (photo.parent / "other.jpg").write_bytes(photo.read_bytes())  # beside it, not named: never processed
    before = hashlib.sha256(photo.read_bytes()).hexdigest()
    out = tmp_path / "out"
    report = json.loads(cli("run", photo, "--out", out, "--method", "blur", "--detector", "dlib-hog", "--json").stdout)
    assert report["images"] == 1 and report["faces"] >= 1 and report["errors"] == 0
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == ["manifest.parquet", "portrait.jpg"]
    assert [row["source_path"] for row in manifest_rows(out)][0] == "portrait.jpg"
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == before
    assert (out / "portrait.jpg").read_bytes() != photo.read_bytes()
    again = json.loads(cli("run", photo, "--out", out, "--method", "blur", "--detector", "dlib-hog", "--json").stdout)
    assert again["resumed"] == 1 and again["images"] == 0  # a second run resumes, as for a folder


@needs_portraits
def test_run_one_image_refuses_its_own_folder_as_out_and_defaults_beside_it(tmp_path):
    import shutil

    from tests.helpers import cli

    photo = tmp_path / "portrait.jpg"
    shutil.copy(sorted(PORTRAITS.glob("*.jpg"))[0], photo)
    before = photo.read_bytes()
    refused = cli("run", photo, "--out", tmp_path, "--method", "blur", "--detector", "dlib-hog")
    assert refused.exit_code == 2 and "holding the input image" in refused.output
    assert cli("run", photo, "--out", photo, "--method", "blur").exit_code == 2
    assert photo.read_bytes() == before
    report = json.loads(cli("run", photo, "--method", "blur", "--detector", "dlib-hog", "--json").stdout)
    assert report["output_dir"] == str(tmp_path / "portrait-anonymized")
    assert (tmp_path / "portrait-anonymized" / "portrait.jpg").is_file()


def test_startup_benchmark_times_whole_processes_of_help_and_version():
    from benchmarks import startup

    assert {("--help",), ("--version",)} <= set(startup.COMMANDS)
    seconds = startup.time_command(("--version",), runs=2)
    assert len(seconds) == 2 and all(0 < value < 60 for value in seconds)
    with pytest.raises(subprocess.CalledProcessError):  # a command that fails is never timed as a success
        startup.time_command(("no-such-command",), runs=1)


# -- --preview N: a contact sheet for a person to look at -----------------------------------------------


@needs_portraits
def test_run_preview_writes_seeded_before_after_pairs_beside_the_output_never_inside(tmp_path):
    from PIL import Image

    from anonymize.audit.preview import MAX_THUMB_WIDTH, THUMB_HEIGHT
    from tests.helpers import cli

    folder = small_folder(tmp_path)
    out = tmp_path / "out"
    report = json.loads(cli("run", folder, "--out", out, "--method", "pixelate", "--detector", "dlib-hog", "--preview", "2",
                            "--allow-errors", "--json").stdout)
    sheet = Path(report["preview"])
    assert sheet == tmp_path / "out-preview.png" and not (out / sheet.name).exists()
    image = Image.open(sheet)
    assert image.format == "PNG" and THUMB_HEIGHT < image.height and image.width <= 4 * MAX_THUMB_WIDTH + 3 * 8
    first = sheet.read_bytes()
    again = cli("audit", "preview", folder, out, "-n", "2", "--out", tmp_path / "again.png")
    assert again.exit_code == 0 and "keep it private" in again.stdout
    assert (tmp_path / "again.png").read_bytes() == first  # the same seed draws the same pairs
    other = cli("audit", "preview", folder, out, "-n", "2", "--seed", "5", "--out", tmp_path / "other.png")
    assert other.exit_code == 0
    inside = cli("audit", "preview", folder, out, "--out", out / "sheet.png")
    assert inside.exit_code == 2 and "must not be written inside the anonymized folder" in inside.output
    assert not (out / "sheet.png").exists()


def test_preview_places_the_original_left_and_the_output_right_with_the_run_s_boxes(tmp_path):
    import numpy as np

    from anonymize.audit.pairing import ImagePair
    from anonymize.audit.preview import BOX_COLOUR, THUMB_HEIGHT, _pair_image

    original = np.full((100, 100, 3), 200, np.uint8)
    output = np.full((100, 100, 3), 30, np.uint8)
    from PIL import Image

    Image.fromarray(original).save(tmp_path / "a.png")
    Image.fromarray(output).save(tmp_path / "b.png")
    tile = np.asarray(_pair_image(ImagePair("b.png", tmp_path / "b.png", "a.png", tmp_path / "a.png", ((10.0, 10.0, 50.0, 50.0),))))
    assert tile.shape[0] > THUMB_HEIGHT
    left, right = tile[THUMB_HEIGHT // 2, THUMB_HEIGHT * 3 // 4], tile[THUMB_HEIGHT // 2, THUMB_HEIGHT + 8 + THUMB_HEIGHT * 3 // 4]
    assert tuple(left) == (200, 200, 200) and tuple(right) == (30, 30, 30)
    box_edge = tile[int(10 * THUMB_HEIGHT / 100), int(30 * THUMB_HEIGHT / 100)]
    assert tuple(box_edge) == BOX_COLOUR
