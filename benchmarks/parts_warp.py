"""The parts method's warp backend on ../shared/data/celeba-ids: does the output still match, did the face change?

For every photo (aligned FFHQ-style from CelebA's template, 256 px) and each configuration, prints
the share of outputs that dlib's C++ recogniser (on its own chips) still matches to the original
(distance < 0.6), to the other photos of the same person (median distance < 0.6), the mean distance,
the mean SSIM of the face region (hull of the 68 landmarks) and the parts chosen. Configurations:

* ``held-out``: all four parts warped, no PGD and no selection: no recogniser touches the output, so
  the dlib judge is held out;
* ``adaptive``: the default warp run (dlib's PyTorch network ranks the parts, runs the PGD and selects
  k): judged by the same weights, so not held out;
* ``adaptive-tight``: as ``adaptive`` with dlib_tau=0.3, so the PGD has work to do.

``python -m benchmarks.parts_warp [--per-id N]``
"""

from __future__ import annotations

import argparse
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
from anonymize.metrics.identity import DlibRecogniser, distance
from anonymize.weights import WeightsStore

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-ids"
CONFIGS = {
    "held-out": {"backend": "warp", "parts": ",".join(PARTS), "pgd_steps": "0"},
    "adaptive": {"backend": "warp"},
    "adaptive-tight": {"backend": "warp", "dlib_tau": "0.3"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-id", type=int, default=30, help="photos per identity (30: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = WeightsStore()
    finder, judge = LandmarkFinder(store), DlibRecogniser(store, backend="dlib")
    faces = []  # (identity, crop, box, region, descriptor)
    for folder in sorted(CELEBA.iterdir()):
        for photo in sorted(folder.glob("*.jpg"))[:args.per_id]:
            crop = align_single_face(np.asarray(Image.open(photo).convert("RGB")), None, 256).crop
            rect = finder.face_rect(crop)
            box = [(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)]
            region = np.zeros((256, 256), np.uint8)
            cv2.fillConvexPoly(region, cv2.convexHull(np.round(finder(crop)).astype(np.int32)), 1)
            faces.append((folder.name, crop, box, region.astype(bool), judge.descriptors(crop, box)[0]))
    identities = np.array([face[0] for face in faces])
    originals = np.stack([face[4] for face in faces])
    print(f"{len(faces)} faces; judge: dlib's C++ recogniser, same person when distance < 0.6")
    print(f"{'config':16} {'match orig':>10} {'match person':>12} {'mean dist':>9} {'face SSIM':>9}  parts chosen (k)")
    for name, options in CONFIGS.items():
        method = PartsMethod(MethodContext(store), options)
        matched, person, distances, similarity, ks = [], [], [], [], Counter()
        for index, (identity, crop, box, region, descriptor) in enumerate(faces):
            result = method.anonymize_one(FaceCrop(crop, None, f"{index}#0"))
            after = judge.descriptors(result.crop, box)[0]
            gap = float(distance(descriptor, after))
            others = (identities == identity) & (np.arange(len(faces)) != index)
            distances.append(gap)
            matched.append(gap < 0.6)
            person.append(float(np.median(distance(originals[others], after))) < 0.6)
            similarity.append(ssim(crop, result.crop, region))
            ks[result.metrics["parts_k"]] += 1
        print(f"{name:16} {np.mean(matched):10.3f} {np.mean(person):12.3f} {np.mean(distances):9.3f} "
              f"{np.mean(similarity):9.3f}  {dict(sorted(ks.items()))}")
    print(f"{'original':16} {'1.000':>10} {np.mean([float(np.median(distance(originals[(identities == i) & (np.arange(len(faces)) != j)], originals[j]))) < 0.6 for j, i in enumerate(identities)]):12.3f}")


if __name__ == "__main__":
    main()
