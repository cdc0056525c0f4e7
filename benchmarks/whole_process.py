"""Issue 23's whole-process goals against deface, as a user or a CI job feels them (start-up included).

One folder of ``--copies`` x ../shared/data (900 images for 5 copies; each copy's files get a few
trailing bytes so no two files share a content hash, and nothing can be skipped as already seen),
then alternated rounds of::

    anonymize run FOLDER --out OUT --method blur --detector retinaface   (RetinaFace alone: the fast path;
                                                       the default chain adds MTCNN and two more searches)
    deface FOLDER --replacewith blur                       (deface 1.5, CenterFace; it writes beside its inputs)

and the same two commands on one image. Each command is a fresh process under a wrapper that
reads its peak resident memory from the kernel (``RUSAGE_CHILDREN``). Printed and returned: every
round, the medians, and the ratios (goals: anonymize images/s >= 2x deface's on the folder, one
image <= 1.5 s, peak memory not above deface's).

``python -m benchmarks.whole_process --shared ../shared --weights-dir .bench/weights [--rounds 3] [--copies 5]``
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

# Runs one command and prints its peak RSS (KiB, Linux) on the last line of stderr.
PEAK_WRAPPER = ("import resource, subprocess, sys\n"
                "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
                "sys.exit(code)\n")


def build_folder(data: Path, dest: Path, copies: int) -> int:
    """``copies`` copies of every image under ``data`` in one flat folder (deface reads a folder without its
    sub-folders), each with distinct bytes (trailing bytes after the image)."""
    count = 0
    dest.mkdir(parents=True, exist_ok=True)
    for copy_index in range(copies):
        for source in image_files(data):
            target = dest / f"copy{copy_index}_{'_'.join(source.relative_to(data).parts)}"
            target.write_bytes(source.read_bytes() + b"\0" * (copy_index + 1))
            count += 1
    return count


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole command; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024


def measure(shared: Path, weights_dir: Path | None, deface: Path, rounds: int = 3, copies: int = 5) -> dict[str, object]:
    env = dict(os.environ)
    if weights_dir is not None:
        env["ANONYMIZE_HOME"] = str(Path(weights_dir).resolve())
    anonymize = [sys.executable, "-c", "import sys; from anonymize.cli import main; sys.argv[0] = 'anonymize'; main()"]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        images = build_folder(shared / "data", folder, copies)
        single = Path(tmp) / "one"
        single.mkdir()
        one = str(shutil.copy(shared / "data" / "portraits" / "obama_1.jpg", single / "obama_1.jpg"))
        warm = Path(tmp) / "warm"  # the first use exports RetinaFace's graph: not what a user waits for each time
        subprocess.run([*anonymize, "run", one, "--out", str(warm), "--method", "blur", "--detector", "retinaface", "-q"],
                       env=env, check=True)
        for round_index in range(rounds):
            for case, count, inputs in (("folder", images, [str(folder)]), ("one image", 1, [one])):
                for tool in ("anonymize", "deface"):
                    out = Path(tmp) / f"out-{tool}"
                    shutil.rmtree(out, ignore_errors=True)
                    if tool == "anonymize":
                        command = [*anonymize, "run", *inputs, "--out", str(out), "--method", "blur", "--detector", "retinaface", "-q"]
                    else:
                        command = [str(deface), *inputs, "--replacewith", "blur"]
                    load = os.getloadavg()[0]
                    seconds, peak = timed(command, env)
                    for written in [*folder.glob("*_anonymized.*"), *single.glob("*_anonymized.*")]:
                        written.unlink()  # deface's outputs, beside its inputs: gone before the next command reads them
                    rows.append({"round": round_index + 1, "case": case, "tool": tool, "images": count,
                                 "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 2),
                                 "peak_rss_mb": round(peak), "load_before": round(load, 2)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def median(case: str, tool: str, key: str) -> float:
        return statistics.median(float(row[key]) for row in rows if row["case"] == case and row["tool"] == tool)

    summary = {case: {tool: {key: median(case, tool, key) for key in ("seconds", "images_per_s", "peak_rss_mb")}
                      for tool in ("anonymize", "deface")} for case in ("folder", "one image")}
    return {"images": images, "rounds": rounds, "rows": rows, "medians": summary,
            "folder_speed_ratio": round(summary["folder"]["anonymize"]["images_per_s"] / summary["folder"]["deface"]["images_per_s"], 2),
            "one_image_seconds": summary["one image"]["anonymize"]["seconds"],
            "peak_memory_ratio": round(summary["folder"]["anonymize"]["peak_rss_mb"] / summary["folder"]["deface"]["peak_rss_mb"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--deface", type=Path, default=Path(".bench/deface-venv/bin/deface"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.shared, args.weights_dir, args.deface, args.rounds, args.copies), indent=1))


if __name__ == "__main__":
    main()
