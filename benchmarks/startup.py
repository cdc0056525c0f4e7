"""How long the command line takes before it does anything: whole-process runs of ``anonymize --help``,
``--version``, ``run --help`` and ``methods --help``, median of N (goal: ``--help`` under 1 s).

The time before the first image of a run starts here: a command that imports torch for its help pays
for it on every invocation. ``python -m benchmarks.startup`` prints the table; ``make bench`` includes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS: tuple[tuple[str, ...], ...] = (("--help",), ("--version",), ("run", "--help"), ("methods", "--help"))
# What a run imports before its first image: the engine, a classical method, a generative one.
IMPORTS: tuple[str, ...] = ("anonymize.run", "anonymize.methods.classical", "anonymize.methods.falco.method")
HELP_GOAL_S = 1.0
REPO = Path(__file__).resolve().parents[1]


def time_command(args: tuple[str, ...], runs: int, python: str = sys.executable) -> list[float]:
    """Wall-clock seconds of ``runs`` fresh ``python -m anonymize ARGS`` processes (imports included)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([python, "-m", "anonymize", *args], check=True, capture_output=True, env=env, cwd=REPO)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_import(module: str, runs: int, python: str = sys.executable) -> list[float]:
    """Wall-clock seconds of ``runs`` fresh ``python -c "import MODULE"`` processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([python, "-c", f"import {module}"], check=True, capture_output=True, env=env, cwd=REPO)
        seconds.append(time.perf_counter() - start)
    return seconds


def import_rows(runs: int = 7) -> list[dict[str, object]]:
    """One row per module of :data:`IMPORTS`: the import time a run pays before its first image."""
    rows = []
    for module in IMPORTS:
        seconds = time_import(module, runs)
        rows.append({"import": module, "runs": runs, "median_s": round(statistics.median(seconds), 3),
                     "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3)})
    return rows


def run(runs: int = 7) -> list[dict[str, object]]:
    """One row per command: median, min and max over ``runs`` processes, and whether --help meets its goal."""
    rows = []
    for args in COMMANDS:
        seconds = time_command(args, runs)
        median = statistics.median(seconds)
        rows.append({"command": "anonymize " + " ".join(args), "runs": runs, "median_s": round(median, 3),
                     "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3),
                     "goal": f"< {HELP_GOAL_S} s: {'met' if median < HELP_GOAL_S else 'MISSED'}" if args == ("--help",) else ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from benchmarks.models import print_table

    print_table(f"start-up: whole process, median of {args.runs}", run(args.runs))
    print_table(f"imports before the first image: whole process, median of {args.runs}", import_rows(args.runs))


if __name__ == "__main__":
    main()
