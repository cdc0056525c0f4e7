"""AnonymousNet's Table 1 measures (PSNR, SSIM, MS-SSIM) over whole images, originals against a run's outputs.

The audit measures them inside each face box (what the method changed) and outside the faces; the paper
does not say its region, and its figures match whole aligned images best, so this reads the same
functions (:mod:`anonymize.metrics.quality`) over every pixel of each pair.

    python -m benchmarks.image_quality ../shared/data/celeba-ids runs/blur runs/pixelate runs/mask
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anonymize.io.decode import decode_image
from anonymize.metrics.quality import ms_ssim, psnr, ssim


def output_of(original: Path, originals: Path, run: Path) -> Path:
    """The run's output for an original (same relative path; the extension may differ). Missing: an error naming it."""
    relative = original.relative_to(originals)
    target = run / relative
    if target.is_file():
        return target
    candidates = sorted(target.parent.glob(f"{target.stem}.*"))
    if not candidates:
        raise FileNotFoundError(f"{run}: no output for {relative}")
    return candidates[0]


def whole_image_quality(originals: Path, run: Path) -> dict[str, float | int]:
    """Mean PSNR (dB), SSIM and MS-SSIM over every image pair (all pixels)."""
    rows = []
    for original in sorted(path for path in originals.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png")):
        before = decode_image(original).rgb
        after = decode_image(output_of(original, originals, run)).rgb
        if after.shape != before.shape:
            raise ValueError(f"{run}: {original.name} is {after.shape[:2]}, its original {before.shape[:2]}")
        everywhere = np.ones(before.shape[:2], bool)
        rows.append((psnr(before, after, everywhere), ssim(before, after, everywhere), ms_ssim(before, after)))
    values = np.array(rows, dtype=np.float64)
    return {"images": len(rows), "psnr_db": float(np.nanmean(values[:, 0])), "ssim": float(np.nanmean(values[:, 1])),
            "ms_ssim": float(np.nanmean(values[:, 2]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("originals", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    print(json.dumps({str(run): whole_image_quality(args.originals, run) for run in args.runs}, indent=2))


if __name__ == "__main__":
    main()
