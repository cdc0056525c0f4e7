"""Stage IV on ../shared/data/celeba-ids: how far does the adversarial perturbation push dlib?

For each configuration, runs the CLI (``--aligned``, dlib's HOG landmarks, JPEG quality 95, the
default) on N photos per identity and prints, from the manifest and the written files
(:mod:`anonymize.adversarial.evaluate`): dlib's match rate to the original (distance < 0.6) before the
perturbation, after it in memory and in the written JPEG, the PSNR under the chips, and the match rate
of dlib's C++ binding with 68-point alignment (same weights: robustness to the alignment, not transfer
to an independent recogniser, none being available offline here).

``python -m benchmarks.adversarial [--per-id N] [--configs pgd,fgsm,uap,uap-10]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

import anonymize.cli.run  # noqa: F401  (attaches `run` to the app)
from anonymize.adversarial.evaluate import measure
from anonymize.cli import app
from anonymize.weights import WeightsStore

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-ids"
CONFIGS = {
    "pgd": ["--method", "adversarial", "-p", "adversarial=pgd"],
    "fgsm": ["--method", "adversarial", "-p", "adversarial=fgsm"],
    "uap": ["--method", "adversarial", "-p", "adversarial=uap"],
    "uap-10": ["--method", "adversarial", "-p", "adversarial=uap", "-p", "adv_eps=10/255"],
    "pgd-2": ["--method", "adversarial", "-p", "adversarial=pgd", "-p", "adv_eps=2/255"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-id", type=int, default=30, help="photos per identity (30: all 150)")
    parser.add_argument("--configs", default="pgd,fgsm,uap", help=f"comma-separated, of {', '.join(CONFIGS)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "in"
        source.mkdir()
        for identity in sorted(CELEBA.iterdir()):
            for photo in sorted(identity.iterdir())[:args.per_id]:
                shutil.copy(photo, source / f"{identity.name}_{photo.name}")
        for name in args.configs.split(","):
            out = Path(scratch) / name
            started = time.perf_counter()
            result = CliRunner().invoke(app, ["run", str(source), "--out", str(out), "--aligned", "--detector", "dlib-hog",
                                              "--workers", "0", "--quiet", *CONFIGS[name]], catch_exceptions=False)
            if result.exit_code != 0:
                raise SystemExit(f"{name}: {result.output}")
            seconds = time.perf_counter() - started
            print(f"== {name} ({seconds:.0f} s)")
            print("\n".join(measure(source, out, WeightsStore(None)).lines()), flush=True)


if __name__ == "__main__":
    main()
