"""No import cycle among the package's modules, deferred imports counted (the shared tool's rule)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_package_has_no_import_cycle(shared_dir: Path) -> None:
    tool = shared_dir / "tools" / "import_cycles.py"
    result = subprocess.run([sys.executable, str(tool), "anonymize"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
