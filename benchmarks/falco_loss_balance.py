"""How FALCO's two loss terms compare under each preprocessing, at the first step and after the last.

``lambda_attr = 0.1`` and ``lambda_id = 10`` come from the authors' code, tuned on the inputs their
code feeds the loss networks (real image in [0, 1], generated one in [-1, 1], no CLIP normalisation
before FaRL: ``-p preprocessing=reference``). The project's default feeds both sides alike
(``corrected``), which changes the attribute term's scale. This prints, per face and preprocessing,
the identity term ``lambda_id * |cos - m|``, the attribute term ``lambda_attr * L_att`` and their
ratio at step 0 and after the last step (the manifest's ``id_cos_before/after`` and
``attr_loss_start/end``, from FALCO's own run on the faces), then the mean ratio per preprocessing:
if the means differ a lot, ``lambda_attr`` needs retuning for ``corrected``.

It needs FALCO's real weights (e4e, the genforce StyleGAN2, ArcFace IR-SE50, FaRL) and a folder of
FFHQ-aligned crops (CelebA-HQ); the fake bank is built on the first run (minutes on a GPU) and
cached under the weights folder. Run it on a GPU:

``python -m benchmarks.falco_loss_balance --weights-dir DIR CELEBA_HQ_DIR [--count 4] [--steps 50] [--device cuda]``

``tests/test_falco_preprocessing.py`` runs :func:`measure` on the tiny random networks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

import torch

from anonymize.io.walk import image_files
from anonymize.methods.base import FaceCrop, MethodContext, MethodError
from anonymize.methods.falco.method import FalcoMethod
from anonymize.methods.falco.preprocessing import PREPROCESSINGS
from anonymize.methods.latent.references import reference_crop
from anonymize.weights import WeightsError, WeightsStore
from benchmarks.models import print_table


def faces_of(folder: Path, count: int, size: int) -> list[FaceCrop]:
    """The first ``count`` images of ``folder`` as aligned crops of the method's size."""
    paths = image_files(folder)[:count]
    if not paths:
        raise SystemExit(f"falco_loss_balance: {folder}: no images")
    return [FaceCrop(reference_crop(path, size, "falco", "input"), None, f"{path.name}#0") for path in paths]


def terms(method: FalcoMethod, metrics: dict[str, object], when: str) -> tuple[float, float]:
    """(identity term, attribute term) of one face at ``when`` ("start" or "end"), weighted as in the loss."""
    cosine = float(metrics["id_cos_before" if when == "start" else "id_cos_after"])
    attribute = float(metrics[f"attr_loss_{when}"])
    params = method.params
    return params.lambda_id * abs(cosine - params.margin), params.lambda_attr * attribute


def measure(store: WeightsStore, folder: Path, count: int, steps: int, bank_size: int, device: str,
            seed: int = 0, margin: float = 0.0) -> list[dict[str, object]]:
    """One row per (preprocessing, face): both terms and their ratio at step 0 and after ``steps`` steps."""
    rows = []
    faces: list[FaceCrop] | None = None
    for preprocessing in PREPROCESSINGS:
        options = {"preprocessing": preprocessing, "steps": str(steps), "bank_size": str(bank_size), "margin": str(margin)}
        method = FalcoMethod(MethodContext(store, device=device, seed=seed), options)
        faces = faces or faces_of(folder, count, method.crop_size)
        for face, output in zip(faces, method.anonymize(faces)):
            row: dict[str, object] = {"preprocessing": preprocessing, "face": face.key}
            for when, label in (("start", "step 0"), ("end", f"step {steps}")):
                identity, attribute = terms(method, output.metrics, when)
                row[f"id {label}"] = round(identity, 4)
                row[f"attr {label}"] = round(attribute, 4)
                row[f"id/attr {label}"] = round(identity / attribute, 4) if attribute else float("inf")
            rows.append(row)
    return rows


def means(rows: list[dict[str, object]], steps: int) -> list[dict[str, object]]:
    """The mean ratio per preprocessing at step 0 and after the last step."""
    summary = []
    for preprocessing in PREPROCESSINGS:
        mine = [row for row in rows if row["preprocessing"] == preprocessing]
        summary.append({"preprocessing": preprocessing,
                        **{f"mean id/attr {label}": round(mean(float(row[f"id/attr {label}"]) for row in mine), 4)
                           for label in ("step 0", f"step {steps}")}})
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="folder of FFHQ-aligned face crops (CelebA-HQ)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="FALCO's weights (default: the weights manager's folder)")
    parser.add_argument("--count", type=int, default=4, help="faces measured")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--bank-size", type=int, default=10_000)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        rows = measure(WeightsStore(args.weights_dir), args.images, args.count, args.steps, args.bank_size,
                       args.device, margin=args.margin)
    except (WeightsError, MethodError) as exc:
        print(f"falco_loss_balance: needs FALCO's real weights: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print_table(f"FALCO loss terms, lambda_id * |cos - m| and lambda_attr * L_att ({args.device})", rows)
    print_table("mean ratio of the identity term to the attribute term", means(rows, args.steps))


if __name__ == "__main__":
    main()
