"""From per-face rows to the summary figures, and from the figures to the gate's verdict.

Every threshold is checked the same way: a crossed one becomes one sentence naming the measured
value, the limit and how many faces or files are behind it. Outputs that could not be audited at
all (unreadable, or with no original to compare with) always fail the gate: a release is only as
anonymous as what was actually checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anonymize.audit.human import crossed_look_alike, crossed_match_gate, crossed_visual_floor
from anonymize.audit.judges import crossed_reidentification


@dataclass(frozen=True)
class Thresholds:
    max_reid_rate: float = 0.05  # share of faces still verified as their original
    max_rank1_rate: float | None = None  # share re-identified rank-1 (off by default: chance is 1/N on small sets)
    min_detection_rate: float = 0.0  # share of faces still detected in the output (a utility measure; off by default)
    max_missed_faces: int = 0
    max_metadata_leaks: int = 0
    # The human goal (camouflage): machine matching is the utility, a visual-change floor the leak.
    min_match_rate: float = 0.9  # share of faces the judge must still match to their original
    max_face_psnr_db: float = 25.0  # a face box closer than this to its original still shows the original face
    max_face_ssim: float = 0.8  # ... as does one more similar than this


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def rank1_sentence(rate: float | None, chance: float | None, faces: int, identities: bool = False) -> str:
    """What the rank-1 rate means, in one plain sentence."""
    if rate is None or chance is None or not faces:
        return "No face was identified, so rank-1 identification was not measured."
    own = "their own original (or another photo of the same person)" if identities else "their own original"
    head = f"{rate:.1%} of the anonymized faces were closest to {own} among all {faces} originals, against {chance:.1%} for a blind guess"
    noise = 2.0 * float(np.sqrt(chance * (1.0 - chance) / faces))  # two binomial standard deviations
    if rate <= chance + noise:
        return head + ": about chance, so the recognizer cannot tell whose face an anonymized one was."
    return (head + ": above chance, so the anonymized images still carry identity (hair, skin, face shape, pose or "
            "background) even where no face passes the verification threshold.")


def face_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Detection, re-identification and missed-face figures over the (confirmed) face rows; possible faces apart."""
    possible = [row for row in rows if row.get("face_index") is not None and row.get("face_status") == "possible face"]
    faces = [row for row in rows if row.get("face_index") is not None and row.get("face_status") != "possible face"]
    detected = sum(bool(row["detected_in_output"]) for row in faces)
    verified = sum(bool(row["reidentified"]) for row in faces)
    rank1 = sum(bool(row["rank1_hit"]) for row in faces)
    missed = [f"{row['source_path']}#{row['face_index']}" for row in faces if row["missed"]]
    distances = [row["identity_distance"] for row in faces if row["identity_distance"] is not None]
    return {
        "faces": len(faces),
        "detection": {"detected": detected, "rate": _rate(detected, len(faces))},
        "reid": {
            "reidentified": verified,
            "verification_rate": _rate(verified, len(faces)),
            "rank1_hits": rank1,
            "rank1_rate": _rate(rank1, len(faces)),
            "mean_distance": _mean(distances),
            "median_distance": float(np.median(distances)) if distances else None,
            "min_distance": float(min(distances)) if distances else None,
        },
        "face_quality": {  # inside each face box (CFA-Net Table 3): how much of the face survived
            "psnr_face_db": _mean([row.get("psnr_face_db") for row in faces]),
            "ssim_face": _mean([row.get("ssim_face") for row in faces]),
            "lpips_face": _mean([row.get("lpips_face") for row in faces]),
        },
        "missed_faces": {"count": len(missed), "faces": missed[:100]},
        "possible_faces": {
            "count": len(possible),
            "unchanged": sum(bool(row["missed"]) for row in possible),
            "faces": [f"{row['source_path']}#{row['face_index']}" for row in possible][:100],
        },
    }


def image_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metadata, quality and error figures, one value per released image."""
    images: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        images.setdefault(row["output_path"], row)
    leaking = {path: row["metadata_detail"] or ", ".join(row["metadata_leak"]) for path, row in images.items() if row["metadata_leak"]}
    errors = {path: row["error"] for path, row in images.items() if row["error"]}
    return {
        "outputs": len(images),
        "metadata": {"leaks": len(leaking), "files": dict(list(leaking.items())[:200])},
        "identical_copies": sum(bool(row["identical_to_source"]) for row in images.values()),
        "size_mismatches": sum(bool(row["size_mismatch"]) for row in images.values()),
        "quality": {
            "psnr_outside_db": _mean([row["psnr_outside_db"] for row in images.values()]),
            "ssim_outside": _mean([row["ssim_outside"] for row in images.values()]),
            "images_measured": sum(row["ssim_outside"] is not None for row in images.values()),
        },
        "unaudited": {"count": len(errors), "files": dict(list(errors.items())[:200])},
    }


def crossed_thresholds(figures: Mapping[str, Any], thresholds: Thresholds) -> list[str]:
    """One sentence per crossed threshold (empty: the release passes).

    With ``figures["privacy_goal"] == "human"`` the identity gates turn around (a minimum match rate
    instead of a maximum re-identification rate, :mod:`anonymize.audit.human`) and the visual-change
    floor replaces the missed-face gate; detection, metadata and unaudited files are gated as always.
    """
    crossed = []
    faces = figures["faces"]
    reid, detection = figures["reid"], figures["detection"]
    human = figures.get("human_goal") if figures.get("privacy_goal") == "human" else None
    if human is not None:
        crossed += crossed_match_gate(human, thresholds.min_match_rate)
    elif figures.get("judges") is not None:  # every recogniser outside the method's loss; the worst one gates
        crossed += crossed_reidentification(figures["judges"], thresholds.max_reid_rate)
    elif reid["verification_rate"] is not None and reid["verification_rate"] > thresholds.max_reid_rate:  # summaries before judges
        crossed.append(
            f"re-identification rate {reid['verification_rate']:.1%} > max {thresholds.max_reid_rate:.1%} "
            f"({reid['reidentified']} of {faces} faces still match their original)"
        )
    if human is None and thresholds.max_rank1_rate is not None and reid["rank1_rate"] is not None and reid["rank1_rate"] > thresholds.max_rank1_rate:
        crossed.append(
            f"rank-1 identification rate {reid['rank1_rate']:.1%} > max {thresholds.max_rank1_rate:.1%} "
            f"({reid['rank1_hits']} of {faces} faces)"
        )
    if detection["rate"] is not None and detection["rate"] < thresholds.min_detection_rate:
        crossed.append(
            f"detection rate {detection['rate']:.1%} < min {thresholds.min_detection_rate:.1%} "
            f"({detection['detected']} of {faces} faces still detected in the output)"
        )
    missed = figures["missed_faces"]["count"]
    if human is not None:
        crossed += crossed_visual_floor(human, thresholds.max_missed_faces)
    else:
        if missed > thresholds.max_missed_faces:
            crossed.append(f"{missed} missed face(s) left unchanged > max {thresholds.max_missed_faces}")
        if figures.get("look_alike") is not None:
            crossed += crossed_look_alike(figures["look_alike"], thresholds.max_missed_faces)
    leaks = figures["metadata"]["leaks"]
    if leaks > thresholds.max_metadata_leaks:
        crossed.append(f"{leaks} output file(s) carry metadata beyond the ICC profile > max {thresholds.max_metadata_leaks}")
    unaudited = figures["unaudited"]["count"]
    if unaudited:
        crossed.append(f"{unaudited} released image(s) could not be audited (unreadable, or no original to compare with)")
    return crossed
