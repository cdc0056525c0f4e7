"""The `estimators` attribute source on ../shared/data/celeba-ids: accuracy where a label exists, agreement elsewhere.

celeba-ids carries no CelebA labels. Gender is labelled per identity by looking at the photos (folders 0, 1,
2 and 4 are men, 3 is a woman); age and expression have no label at all, so only the agreement between
estimators (and, for Smiling, with the landmark heuristic) is reported.

    python -m benchmarks.estimators --shared ../shared --weights-dir DIR   (DIR/human-models holds the models)
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from anonymize.attributes.estimators import EstimatorSource
from anonymize.attributes.landmarks import LandmarkSource
from anonymize.faces.align import align_aligned_input
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.io.decode import decode_image
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

MALE_BY_INSPECTION = {"0": True, "1": True, "2": True, "3": False, "4": True}


def measure(shared: Path, weights_dir: Path | None) -> dict:
    store = WeightsStore(weights_dir)
    detector = create_detector("dlib-hog", store, DetectorSettings(device="cpu"))
    faces, male = [], []
    for identity, is_male in MALE_BY_INSPECTION.items():
        for photo in sorted((shared / "data" / "celeba-ids" / identity).glob("*.jpg")):
            _, aligned = align_aligned_input(decode_image(photo).rgb, detector, 256)
            faces.append(FaceCrop(aligned.crop, None, f"{identity}/{photo.name}"))
            male.append(is_male)
    male_labels = np.array(male)
    found = EstimatorSource(store).each(faces)
    smiling_heuristic = LandmarkSource(store).estimate(faces).select(["Smiling"]).probabilities[:, 0] >= 0.5
    gender = {name: float(np.mean((values >= 0.5) == male_labels)) for name, values in found["male"].items()}
    gender_agreement = {f"{a}~{b}": float(np.mean((found["male"][a] >= 0.5) == (found["male"][b] >= 0.5)))
                        for a, b in itertools.combinations(found["male"], 2)}
    ages = found["age"]
    age_agreement = {f"{a}~{b}": {"pearson": float(np.corrcoef(ages[a], ages[b])[0, 1]),
                                  "mean_abs_years": float(np.mean(np.abs(ages[a] - ages[b])))}
                     for a, b in itertools.combinations(ages, 2)}
    happy = found["happy"]["emotion"] >= 0.5
    return {
        "faces": len(faces),
        "gender_accuracy_vs_inspection": gender,
        "gender_agreement": gender_agreement,
        "age_mean_years": {name: float(np.mean(values)) for name, values in ages.items()},
        "age_agreement": age_agreement,
        "smiling_share": {"emotion": float(np.mean(happy)), "landmarks": float(np.mean(smiling_heuristic))},
        "smiling_agreement_emotion_vs_landmarks": float(np.mean(happy == smiling_heuristic)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()
    print(json.dumps(measure(args.shared, args.weights_dir), indent=1))


if __name__ == "__main__":
    main()
