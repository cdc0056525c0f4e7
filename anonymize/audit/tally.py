"""From per-face rows to the summary's figures, and from the figures to the gate's verdict.

Every threshold is checked the same way: a crossed one becomes one sentence naming the measured
value, the limit and how many faces or files are behind it. Outputs that could not be audited at
all (unreadable, or with no original to compare with) always fail the gate: a release is only as
anonymous as what was actually checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.audit.format import rank1_sentence
from anonymize.audit.human import crossed_look_alike, crossed_match_gate, crossed_visual_floor
from anonymize.audit.judges import crossed_reidentification
from anonymize.audit.mesh_check import MESH_FACE_SCORE
from anonymize.audit.sampling import wilson_interval
from anonymize.audit.summary import (
    AuditSample, Detection, FaceQuality, HumanGoal, IdentityCheck, ImageQuality, Judges, LookAlike, MetadataLeaks, MissedFaces,
    PossibleFaces, Reidentification, Thresholds, Unaudited,
)

if TYPE_CHECKING:
    from anonymize.audit.fid import FidResult
    from anonymize.audit.reid import IdentitySeparation


@dataclass(frozen=True)
class FaceTally:
    """The summary's per-face figures over the confirmed faces (possible faces apart)."""

    faces: int
    detection: Detection
    reid: Reidentification
    face_quality: FaceQuality
    missed_faces: MissedFaces
    possible_faces: PossibleFaces


@dataclass(frozen=True)
class ImageTally:
    """The summary's per-image figures, one value per released image."""

    outputs: int
    metadata: MetadataLeaks
    identical_copies: int
    size_mismatches: int
    quality: ImageQuality
    unaudited: Unaudited


def spread(tally: FaceTally | ImageTally) -> dict[str, Any]:
    """A tally's fields as keyword arguments of :class:`~anonymize.audit.summary.AuditSummary`, whose JSON keeps them flat."""
    return {item.name: getattr(tally, item.name) for item in fields(tally)}


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def face_figures(rows: Sequence[Mapping[str, Any]], chance: float | None, identities: bool, mesh: str | None = None) -> FaceTally:
    """Detection, re-identification and missed-face figures; ``chance``: the rank-1 hit rate of a blind guess."""
    possible = [row for row in rows if row.get("face_index") is not None and row.get("face_status") == "possible face"]
    faces = [row for row in rows if row.get("face_index") is not None and row.get("face_status") != "possible face"]
    detected = sum(bool(row["detected_in_output"]) for row in faces)
    verified = sum(bool(row["reidentified"]) for row in faces)
    rank1 = sum(bool(row["rank1_hit"]) for row in faces)
    missed = [f"{row['source_path']}#{row['face_index']}" for row in faces if row["missed"]]
    distances = [row["identity_distance"] for row in faces if row["identity_distance"] is not None]
    rank1_rate = _rate(rank1, len(faces))
    return FaceTally(
        faces=len(faces),
        detection=Detection(detected, _rate(detected, len(faces))),
        reid=Reidentification(
            reidentified=verified,
            verification_rate=_rate(verified, len(faces)),
            rank1_hits=rank1,
            rank1_rate=rank1_rate,
            mean_distance=_mean(distances),
            median_distance=float(np.median(distances)) if distances else None,
            min_distance=float(min(distances)) if distances else None,
            rank1_chance=chance,
            rank1_meaning=rank1_sentence(rank1_rate, chance, len(faces), identities, verified),
        ),
        face_quality=FaceQuality(  # inside each face box (CFA-Net Table 3): how much of the face survived
            psnr_face_db=_mean([row.get("psnr_face_db") for row in faces]),
            ssim_face=_mean([row.get("ssim_face") for row in faces]),
            lpips_face=_mean([row.get("lpips_face") for row in faces]),
            ms_ssim_face=_mean([row.get("ms_ssim_face") for row in faces]),
        ),
        missed_faces=MissedFaces(len(missed), missed[:100]),
        possible_faces=PossibleFaces(
            count=len(possible),
            unchanged=sum(bool(row["missed"]) for row in possible),
            faces=[f"{row['source_path']}#{row['face_index']}" for row in possible][:100],
            ruled_out=sum(bool(row["missed"]) and _ruled_out(row) for row in possible),
            counted=sum(bool(row["missed"]) and not _ruled_out(row) for row in possible),
            mesh=mesh,
        ),
    )


def _ruled_out(row: Mapping[str, Any]) -> bool:
    score = row.get("mesh_score")
    return score is not None and score < MESH_FACE_SCORE


def image_figures(rows: Sequence[Mapping[str, Any]], fid: FidResult, farl: FidResult) -> ImageTally:
    """Metadata, quality and error figures, one value per released image; FID and the FaRL proxy over all of them."""
    images: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        images.setdefault(row["output_path"], row)
    leaking = {path: row["metadata_detail"] or ", ".join(row["metadata_leak"]) for path, row in images.items() if row["metadata_leak"]}
    errors = {path: row["error"] for path, row in images.items() if row["error"]}
    return ImageTally(
        outputs=len(images),
        metadata=MetadataLeaks(len(leaking), dict(list(leaking.items())[:200])),
        identical_copies=sum(bool(row["identical_to_source"]) for row in images.values()),
        size_mismatches=sum(bool(row["size_mismatch"]) for row in images.values()),
        quality=ImageQuality(
            psnr_outside_db=_mean([row["psnr_outside_db"] for row in images.values()]),
            ssim_outside=_mean([row["ssim_outside"] for row in images.values()]),
            images_measured=sum(row["ssim_outside"] is not None for row in images.values()),
            fid=fid.value,
            fid_status=fid.status,
            farl_frechet_proxy=farl.value,
            farl_frechet_proxy_status=farl.status,
        ),
        unaudited=Unaudited(len(errors), dict(list(errors.items())[:200])),
    )


def identity_check(separation: IdentitySeparation | None, labelled: bool) -> IdentityCheck:
    """The recogniser's same- vs different-person separation on the originals, or why it was not checked."""
    if separation is not None:
        return IdentityCheck(available=True, **separation.as_dict())  # type: ignore[arg-type]
    return IdentityCheck(False, "the originals are not grouped in identity folders" if not labelled else "too few labelled faces")


def sample_figures(sampled: int, released: int, seed: int, faces: FaceTally, judges: Judges) -> AuditSample:
    """The 95% Wilson intervals of the sampled face rates, and the worst judge's upper end (the gate reads it)."""
    intervals: dict[str, tuple[float, float] | None] = {}
    uppers: dict[str, float] = {}
    for name, item in judges.per_judge.items():
        interval = wilson_interval(item.matched or 0, item.faces) if item.verification_rate is not None else None
        intervals[f"re-identification ({name})"] = interval
        if interval is not None:
            uppers[name] = interval[1]
    intervals["rank-1 identification"] = wilson_interval(faces.reid.rank1_hits, faces.faces)
    intervals["still detected in output"] = wilson_interval(faces.detection.detected, faces.faces)
    intervals["missed faces"] = wilson_interval(faces.missed_faces.count, faces.faces)
    worst = max(uppers, key=lambda name: uppers[name]) if uppers else None
    return AuditSample(sampled, released, seed, {name: list(value) for name, value in intervals.items() if value is not None},
                       uppers[worst] if worst is not None else None, worst)


def crossed_sample(sample: AuditSample | None, max_rate: float, crossed_already: bool) -> list[str]:
    """A sampled release passes the identity gate only when the worst judge's 95% upper bound is under the limit."""
    if sample is None or crossed_already or sample.gated_upper is None or sample.gated_upper <= max_rate:
        return []
    return [f"re-identification rate of judge {sample.gated_judge} could be up to {sample.gated_upper:.1%} (95% upper bound "
            f"on a sample of {sample.images} of {sample.released} images) > max {max_rate:.1%}: audit a larger --sample, "
            "or every image"]


def crossed_thresholds(thresholds: Thresholds, faces: FaceTally, images: ImageTally, privacy_goal: str, judges: Judges,
                       human_goal: HumanGoal | None, look_alike: LookAlike, sample: AuditSample | None = None) -> list[str]:
    """One sentence per crossed threshold (empty: the release passes).

    With the human goal the identity gates turn around (a minimum match rate instead of a maximum
    re-identification rate, :mod:`anonymize.audit.human`) and the visual-change floor replaces the
    missed-face gate; detection, metadata and unaudited files are gated as always.
    """
    crossed = []
    reid, detection = faces.reid, faces.detection
    human = human_goal if privacy_goal == "human" else None
    if human is not None:
        crossed += crossed_match_gate(human, thresholds.min_match_rate)
    else:  # every recogniser outside the method's loss; the worst one gates (on a sample: its 95% upper bound)
        identity = crossed_reidentification(judges, thresholds.max_reid_rate)
        crossed += identity + crossed_sample(sample, thresholds.max_reid_rate, bool(identity))
    if human is None and thresholds.max_rank1_rate is not None and reid.rank1_rate is not None and reid.rank1_rate > thresholds.max_rank1_rate:
        crossed.append(
            f"rank-1 identification rate {reid.rank1_rate:.1%} > max {thresholds.max_rank1_rate:.1%} "
            f"({reid.rank1_hits} of {faces.faces} faces)"
        )
    if detection.rate is not None and detection.rate < thresholds.min_detection_rate:
        crossed.append(
            f"detection rate {detection.rate:.1%} < min {thresholds.min_detection_rate:.1%} "
            f"({detection.detected} of {faces.faces} faces still detected in the output)"
        )
    missed = faces.missed_faces.count
    if human is not None:
        crossed += crossed_visual_floor(human, thresholds.max_missed_faces)
    else:
        if missed > thresholds.max_missed_faces:
            crossed.append(f"{missed} missed face(s) left unchanged > max {thresholds.max_missed_faces}")
        crossed += crossed_look_alike(look_alike, thresholds.max_missed_faces)
        possible = faces.possible_faces
        if thresholds.max_possible_faces is not None and (possible.counted or 0) > thresholds.max_possible_faces:
            crossed.append(f"{possible.counted} possible face(s) left unchanged and not ruled out > max {thresholds.max_possible_faces} "
                           f"(found by one detector only; second model: {possible.mesh}); look at them in the report, or "
                           "raise --max-possible-faces")
    leaks = images.metadata.leaks
    if leaks > thresholds.max_metadata_leaks:
        crossed.append(f"{leaks} output file(s) carry metadata beyond the ICC profile > max {thresholds.max_metadata_leaks}")
    unaudited = images.unaudited.count
    if unaudited:
        crossed.append(f"{unaudited} released image(s) could not be audited (unreadable, or no original to compare with)")
    return crossed
