"""The parts method's warp backend on ../shared/data/celeba-ids: does the output still match, did the face change?

For every photo (aligned FFHQ-style from CelebA's template, 256 px) and each configuration, prints,
per judge, the share of outputs matched to their own original ("orig") and to the other photos of the
same person (median distance below the judge's threshold: "person"); dlib's mean distance; the mean
SSIM (luma) of the face region (hull of the 68 landmarks) of the output against the original
("face SSIM") and of the output against the warp alone ("PGD SSIM": what the pixel PGD changed on
top of the warp, 1 when it did not run); the seconds per face and the parts chosen. The judges:

* dlib's C++ recogniser on its own chips (distance < 0.6); the warp backend's PGD and selection use
  the same weights (in PyTorch), so it is held out only from the ``held-out`` configuration;
* faceres and mobileface (:mod:`anonymize.metrics.graph_recognisers`, the audit's independent judges,
  at their FAR 1e-3 thresholds), which no configuration uses: held out everywhere. They need the
  human-models weights (``--weights``, default ../shared/weights); without them only dlib judges.

Configurations:

* ``held-out``: all four parts warped, no PGD and no selection: no recogniser touches the output;
* ``adaptive``: the default warp run (dlib's PyTorch network ranks the parts, runs the PGD and selects k);
* ``adaptive-tight``: as ``adaptive`` with dlib_tau=0.3, so the PGD has work to do;
* ``tight-eps4`` (only on request): as ``adaptive-tight`` with half the PGD's per-pixel bound.

``python -m benchmarks.parts_warp [--per-id N] [--weights DIR] [--configs held-out,adaptive,...]``
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from anonymize.metrics.quality import ssim
from anonymize.faces.align import align_single_face
from anonymize.faces.types import FaceCrop
from anonymize.methods.base import MethodContext
from anonymize.faces.landmarks import LandmarkFinder
from anonymize.methods.parts.masks import PARTS
from anonymize.methods.parts.method import PartsMethod
from anonymize.methods.parts.warp import warp_parts
from anonymize.metrics.identity import DlibRecogniser, distance
from anonymize.weights import WeightsError, WeightsStore

SHARED = Path(__file__).resolve().parents[2] / "shared"
CELEBA = SHARED / "data" / "celeba-ids"
CONFIGS = {
    "held-out": {"backend": "warp", "parts": ",".join(PARTS), "pgd_steps": "0"},
    "adaptive": {"backend": "warp"},
    "adaptive-tight": {"backend": "warp", "dlib_tau": "0.3"},
    "tight-eps4": {"backend": "warp", "dlib_tau": "0.3", "pgd_eps": "4"},  # not run by default: --configs tight-eps4
}
DEFAULT_CONFIGS = ("held-out", "adaptive", "adaptive-tight")


class Judge:
    """One recogniser: descriptors of the faces in given boxes and its same-person distance."""

    def __init__(self, name: str, describe, threshold: float) -> None:
        self.name, self.describe, self.threshold = name, describe, threshold


def judges(store: WeightsStore, weights: Path) -> list[Judge]:
    dlib = DlibRecogniser(store, backend="dlib")
    found = [Judge("dlib", lambda rgb, box: dlib.descriptors(rgb, box)[0], 0.6)]
    try:
        from anonymize.metrics.graph_recognisers import GraphRecogniser

        for name in ("faceres", "mobileface"):
            graph = GraphRecogniser(WeightsStore(weights), name)
            found.append(Judge(name, lambda rgb, box, graph=graph: graph.descriptors(rgb, box)[0], graph.distance_threshold))
    except (WeightsError, OSError) as exc:
        print(f"faceres/mobileface unavailable ({exc}); dlib judges alone")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-id", type=int, default=30, help="photos per identity (30: all)")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights", help="folder holding human-models/")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated, of " + ", ".join(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = WeightsStore()
    finder, recognisers = LandmarkFinder(store), judges(store, args.weights)
    faces = []  # (identity, crop, box, region, {judge: descriptor})
    for folder in sorted(CELEBA.iterdir()):
        for photo in sorted(folder.glob("*.jpg"))[:args.per_id]:
            crop = align_single_face(np.asarray(Image.open(photo).convert("RGB")), None, 256).crop
            rect = finder.face_rect(crop)
            box = [(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)]
            region = np.zeros((256, 256), np.uint8)
            cv2.fillConvexPoly(region, cv2.convexHull(np.round(finder(crop)).astype(np.int32)), 1)
            faces.append((folder.name, crop, box, region.astype(bool), {j.name: j.describe(crop, box) for j in recognisers}))
    identities = np.array([face[0] for face in faces])
    originals = {j.name: np.stack([face[4][j.name] for face in faces]) for j in recognisers}
    others = [(identities == identity) & (np.arange(len(faces)) != index) for index, identity in enumerate(identities)]
    names = [j.name for j in recognisers]
    print(f"{len(faces)} faces; judges (same person below): " + ", ".join(f"{j.name} {j.threshold:.3f}" for j in recognisers))
    print(f"{'config':16} " + " ".join(f"{name + ' orig':>15} {name + ' person':>17}" for name in names)
          + f" {'dlib dist':>9} {'face SSIM':>9} {'PGD SSIM':>8} {'s/face':>6}  parts chosen (k)")
    row = "{:16} " + " ".join("{:15.3f} {:17.3f}" for _ in names)
    print(row.format("original", *[value for j in recognisers for value in (1.0, np.mean(
        [float(np.median(distance(originals[j.name][mask], originals[j.name][i]))) < j.threshold for i, mask in enumerate(others)]))]))
    for name in args.configs.split(","):
        method = PartsMethod(MethodContext(store), CONFIGS[name])
        matched = {j.name: [] for j in recognisers}
        person = {j.name: [] for j in recognisers}
        dlib_gap, face_ssim, pgd_ssim, seconds, ks = [], [], [], [], Counter()
        for index, (identity, crop, box, region, descriptors) in enumerate(faces):
            start = time.perf_counter()
            result = method.anonymize_one(FaceCrop(crop, None, f"{index}#0"))
            seconds.append(time.perf_counter() - start)
            for judge in recognisers:
                after = judge.describe(result.crop, box)
                gap = float(distance(descriptors[judge.name], after))
                matched[judge.name].append(gap < judge.threshold)
                person[judge.name].append(float(np.median(distance(originals[judge.name][others[index]], after))) < judge.threshold)
                if judge.name == "dlib":
                    dlib_gap.append(gap)
            warped = warp_parts(crop, finder(crop), result.metrics["parts_chosen"].split(","))
            face_ssim.append(ssim(crop, result.crop, region))
            pgd_ssim.append(ssim(warped, result.crop, region))
            ks[result.metrics["parts_k"]] += 1
        values = [value for j in recognisers for value in (np.mean(matched[j.name]), np.mean(person[j.name]))]
        print(row.format(name, *values) + f" {np.mean(dlib_gap):9.3f} {np.mean(face_ssim):9.3f} {np.mean(pgd_ssim):8.3f} "
              f"{np.mean(seconds):6.2f}  {dict(sorted(ks.items()))}", flush=True)


if __name__ == "__main__":
    main()
