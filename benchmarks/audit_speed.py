"""Issue 23's goal: does `anonymize audit` keep up with `anonymize run` on the same photos and machine?

Each command runs as a whole process (start-up, model loading and writing included, as a user
waits for it): ``anonymize run PHOTOS --method blur`` then ``anonymize audit PHOTOS OUT`` on what it
wrote (its files beside it, no HTML report), alternated round by round so that a shared machine's load falls on both alike. A round
ends with a second audit of the same folder (``re-audit``), the case after a re-run. Printed and
returned: each run's seconds and images/s, the medians, and audit images/s over run images/s
(the goal is a ratio of at least 1).

With ``--sample N`` the photos are ``--copies`` x ../shared/data in one folder (900 images for 5, as
in :mod:`benchmarks.whole_process`) and the audit is ``anonymize audit --sample N``: a large release,
where only the face checks are sampled and every file is still read.

``python -m benchmarks.audit_speed --shared ../shared --weights-dir .bench/weights [--rounds 3] [--sample 100 --copies 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anonymize.io.walk import image_files


def count_images(folder: Path) -> int:
    """Images the run and the audit both read (the walk's own list)."""
    return len(image_files(folder))


def _timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole command; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    # the audit runs with --report-only (a blurred release fails the gate by design): any non-zero status is a failure
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def _row(command: str, round_index: int, images: int, seconds: float) -> dict[str, object]:
    return {"command": command, "round": round_index, "images": images, "seconds": round(seconds, 2),
            "images_per_s": round(images / seconds, 3)}


def measure(photos: Path, weights_dir: Path | None, rounds: int = 1, method: str = "blur",
            sample: int | None = None) -> dict[str, object]:
    """Alternated run / audit / re-audit rounds on ``photos``; the rows, the medians and the ratios
    (``sample``: the audits are ``--sample N``)."""
    env = dict(os.environ)
    if weights_dir is not None:
        env["ANONYMIZE_HOME"] = str(Path(weights_dir).resolve())
    cli = [sys.executable, "-c", "import sys; from anonymize.cli import main; sys.argv[0] = 'anonymize'; main()"]
    images = count_images(photos)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"  # the audit writes its files beside it, in out-audit
        for round_index in range(rounds):
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(Path(tmp) / "out-audit", ignore_errors=True)
            load = os.getloadavg()[0]
            seconds = _timed([*cli, "run", str(photos), "--out", str(out), "--method", method], env)
            rows.append({**_row("run", round_index, images, seconds), "load_before": round(load, 2)})
            for command in ("audit", "re-audit"):
                load = os.getloadavg()[0]
                seconds = _timed([*cli, "audit", str(photos), str(out), "--report-only", "-q",
                                  *(["--sample", str(sample)] if sample else [])], env)
                rows.append({**_row(command, round_index, images, seconds), "load_before": round(load, 2)})
    medians = {command: statistics.median(float(row["images_per_s"]) for row in rows if row["command"] == command)
               for command in ("run", "audit", "re-audit")}
    return {"photos": str(photos), "images": images, "method": method, "sample": sample, "rows": rows,
            "median_images_per_s": {command: round(value, 3) for command, value in medians.items()},
            "audit_over_run": round(medians["audit"] / medians["run"], 3),
            "re_audit_over_run": round(medians["re-audit"] / medians["run"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--photos", type=Path, default=None, help="default: <shared>/data/portraits")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sample", type=int, default=None, help="audit --sample N on --copies x <shared>/data")
    parser.add_argument("--copies", type=int, default=5)
    args = parser.parse_args()
    if args.sample:
        print(json.dumps(measure_sampled(args.shared, args.weights_dir, args.sample, args.copies, args.rounds), indent=1))
        return
    print(json.dumps(measure(args.photos or args.shared / "data" / "portraits", args.weights_dir, args.rounds), indent=1))


def measure_sampled(shared: Path, weights_dir: Path | None, sample: int, copies: int = 5, rounds: int = 1) -> dict[str, object]:
    """:func:`measure` with ``audit --sample N`` on ``copies`` x <shared>/data (a large release)."""
    from benchmarks.whole_process import build_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        build_folder(shared / "data", folder, copies)
        return measure(folder, weights_dir, rounds, sample=sample)


if __name__ == "__main__":
    main()
