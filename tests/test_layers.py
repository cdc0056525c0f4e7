"""The package's shape: imports point down the layers, and no module imports itself back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anonymize.devtools.layers import LAYERS, Import, cycles, imports, module_files, upward_imports
from tests.helpers import REPO


def test_no_import_points_up_or_across_the_layers_and_there_is_no_cycle() -> None:
    files = module_files()
    found = imports(files)
    assert upward_imports(found) == []
    assert cycles(found, list(files)) == []


def test_every_package_has_its_layer() -> None:
    packages = {path.parent.name for path in (REPO / "anonymize").glob("*/__init__.py")}
    placed = {name for layer in LAYERS for name in layer}
    assert packages <= placed, f"packages without a layer: {sorted(packages - placed)}"


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    """Hand-made imports: the faces layer reaching up into run, and two modules importing each other."""
    upward = Import("anonymize.faces.align", "anonymize.run.config", 3)
    assert upward_imports([upward]) == [
        "anonymize.faces.align (line 3) imports anonymize.run.config: faces -> run points up the layers"]
    across = Import("anonymize.attributes.sources", "anonymize.adversarial.plan", 7)
    assert "points across the layers" in upward_imports([across])[0]
    loop = [Import("anonymize.io.a", "anonymize.io.b", 1), Import("anonymize.io.b", "anonymize.io.a", 1)]
    assert cycles(loop, ["anonymize.io.a", "anonymize.io.b"]) == [["anonymize.io.a", "anonymize.io.b"]]


def test_the_command_line_check_exits_zero() -> None:
    result = subprocess.run([sys.executable, "-m", "anonymize.devtools.layers"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shared_cycle_tool_finds_no_cycle(shared_dir: Path) -> None:
    tool = shared_dir / "tools" / "import_cycles.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is absent")
    result = subprocess.run([sys.executable, str(tool), "anonymize"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
