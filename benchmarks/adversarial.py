"""Stage IV on ../shared/data/celeba-ids: does the perturbation hold against recognisers and alignments it never saw?

For each bound, runs the CLI (``--method adversarial --aligned``, JPEG quality 95, the default ensemble unless
``--ensemble``) on N photos per identity and reads back the written files (:mod:`anonymize.adversarial.evaluate`):
for every judge (dlib through its 5-point chip, its 68-point chip and the whole image as the box; mobileface;
faceres), the share of faces still matched to their original at the judge's FAR 1e-3 threshold (set on the
originals' different-identity pairs) and rank-1 among all originals; the perturbation's PSNR and SSIM in the
face box; seconds per face (whole CLI run, start-up included, divided by the faces).

``python -m benchmarks.adversarial --weights-dir DIR [--per-id 30] [--eps 4,8,12,16] [--samples 4] [--steps 10] [--ssim 0]``
(DIR/human-models holds the TF.js models)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

import anonymize.cli.run  # noqa: F401  (attaches `run` to the app)
from anonymize.adversarial.evaluate import measure
from anonymize.cli import app
from anonymize.weights import WeightsStore
from benchmarks.models import print_table

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-ids"


def run(weights_dir: Path | None, per_id: int, bounds: list[int], steps: int, samples: int, ensemble: str | None,
        kind: str = "pgd", ssim_floor: str = "0") -> list[dict[str, object]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "in"
        source.mkdir()
        labels = {}
        for identity in sorted(CELEBA.iterdir()):
            for photo in sorted(identity.iterdir())[:per_id]:
                name = f"{identity.name}_{photo.name}"
                shutil.copy(photo, source / name)
                labels[name] = identity.name
        for eps in bounds:
            out = Path(scratch) / f"eps{eps}"
            options = ["-p", f"adversarial={kind}", "-p", f"adv_eps={eps}/255", "-p", f"adv_steps={steps}", "-p", f"adv_samples={samples}",
                       "-p", f"adv_ssim={ssim_floor}"]
            if ensemble:
                options += ["-p", f"adv_ensemble={ensemble}"]
            weights = ["--weights-dir", str(weights_dir)] if weights_dir else []
            started = time.perf_counter()
            result = CliRunner().invoke(app, ["run", str(source), "--out", str(out), "--method", "adversarial", "--aligned",
                                              "--detector", "dlib-hog", "--quiet", *weights, *options], catch_exceptions=False)
            if result.exit_code != 0:
                raise SystemExit(f"eps {eps}: {result.output}")
            seconds = time.perf_counter() - started
            figures = measure(source, out, WeightsStore(weights_dir), labels)
            print("\n".join([f"== {kind} eps {eps}/255 ({seconds:.0f} s)", *figures.lines()]), flush=True)
            row: dict[str, object] = {"kind": kind, "eps": f"{eps}/255", "ensemble": ",".join(figures.ensemble), "faces": figures.faces}
            for judge in figures.judges:
                mark = "" if judge.in_ensemble else " (held out)"
                row[f"{judge.name}{mark} matched / rank-1"] = f"{judge.matched:.0%} / {judge.rank1:.0%}" if judge.rank1 is not None else f"{judge.matched:.0%}"
            row["PSNR dB / SSIM (face box)"] = f"{figures.psnr_db:.1f} / {figures.ssim:.3f}"
            row["s / face"] = f"{seconds / max(figures.faces, 1):.2f}"
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--per-id", type=int, default=30, help="photos per identity (30: all 150)")
    parser.add_argument("--eps", default="4,8,12,16", help="bounds in grey levels, comma-separated")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--ensemble", default=None, help="as -p adv_ensemble= (default: the run's default)")
    parser.add_argument("--kind", default="pgd", choices=["pgd", "fgsm", "uap"])
    parser.add_argument("--ssim", default="0", help="as -p adv_ssim= (default 0: no floor, so each row shows its bound's own effect)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = run(args.weights_dir, args.per_id, [int(v) for v in args.eps.split(",")], args.steps, args.samples, args.ensemble, args.kind,
               args.ssim)
    print_table(f"adversarial {args.kind} on celeba-ids, written as JPEG q95", rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
