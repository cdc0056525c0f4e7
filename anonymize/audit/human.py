"""The audit of a run whose output must fool people, not machines (``privacy_goal = human``).

Camouflage methods (Li et al., ICPR 2020) invert the usual threat model: the released face must look
like someone else to a viewer while face recognition still matches it to the original (footage that
stays searchable by an authorised system). For such a run, machine matching is the utility, so the
audit reports it as such and gates on it:

* the match rate: the share of (original, output) pairs the judge verifies as one person;
* TAR at FAR 0.01 and 0.1: the threshold set on different-person pairs of the originals (the papers'
  protocol, :func:`anonymize.audit.protocols.tpr_at_far`; needs identity labels);
* rank-1 against a gallery of the originals only;
* the visual-change floor, which stands in for "leak": a face whose face-box PSNR or SSIM against its
  original stays above the ceiling still shows viewers the original face.

The judges are the audit's recognisers that are not in the method's loss: a recogniser the method
optimised against (white-box) would flatter the match rate, so it is named but never judges. The
figures below are the worst judge's (the lowest match rate, :mod:`anonymize.audit.judges`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from anonymize.audit.summary import HumanGoal, LookAlike, RecogniserFigures, TarAtFar, VisualChange

PRIVACY_GOALS = ("machine", "human")
HUMAN_FARS = ("0.01", "0.1")  # the papers' operating points


def resolve_goal(requested: str, recorded: str | None) -> tuple[str, str]:
    """The goal the audit applies and where it comes from: ``--privacy-goal``, the manifest or the default."""
    if requested != "auto":
        if requested not in PRIVACY_GOALS:
            raise ValueError(f"unknown privacy goal {requested!r}: choose auto, {' or '.join(PRIVACY_GOALS)}")
        return requested, "--privacy-goal"
    if recorded in PRIVACY_GOALS:
        return str(recorded), "the run's manifest"
    return "machine", "default (no goal recorded by the run)"


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(value) for value in values if value is not None]
    return float(np.mean(present)) if present else None


def too_similar(row: Mapping[str, Any], max_psnr_db: float, max_ssim: float) -> bool:
    """A face whose face box stays above the PSNR or SSIM ceiling: a viewer still sees the original face."""
    psnr, ssim = row.get("psnr_face_db"), row.get("ssim_face")
    return (psnr is not None and psnr > max_psnr_db) or (ssim is not None and ssim > max_ssim)


def human_goal_figures(recognisers: Mapping[str, RecogniserFigures], face_rows: Sequence[Mapping[str, Any]],
                       judge: str | None, judge_reason: str, in_loss: Sequence[str],
                       max_psnr_db: float, max_ssim: float) -> HumanGoal:
    """Machine matching as utility (by the judge) and the visual change, over the confirmed faces."""
    faces = [row for row in face_rows if row.get("face_status") != "possible face"]
    entry = recognisers.get(judge) if judge else None
    matched = entry.verification_rate if entry is not None else None
    judged = entry.faces if entry is not None else 0
    tprs = entry.tpr_at_far if entry is not None else None
    tar: dict[str, TarAtFar] = {}
    for far in HUMAN_FARS:
        found = (tprs or {}).get(far)
        tar[far] = TarAtFar(found.tpr, found.threshold, found.resolved) if found else TarAtFar(None, None, False)
    similar = [f"{row['source_path']}#{row['face_index']}" for row in faces if too_similar(row, max_psnr_db, max_ssim)]
    return HumanGoal(
        judge=judge,
        judge_instrument=entry.instrument if entry is not None else None,
        judge_threshold=entry.threshold if entry is not None else None,
        judge_reason=judge_reason,
        white_box=list(in_loss),
        faces=int(judged),
        match_rate=matched,
        matched=None if matched is None else int(round(matched * judged)),
        tar_at_far=tar,
        tar_note=None if tprs is not None else "needs identity labels (identity folders or --identities)",
        rank1_rate=entry.rank1_rate if entry is not None else None,
        mean_rank=entry.mean_rank if entry is not None else None,
        gallery=entry.gallery if entry is not None else None,
        visual_change=VisualChange(
            psnr_face_db=_mean([row.get("psnr_face_db") for row in faces]),
            ssim_face=_mean([row.get("ssim_face") for row in faces]),
            max_psnr_db=max_psnr_db,
            max_ssim=max_ssim,
            too_similar=len(similar),
            faces=similar[:100],
        ),
    )


def look_alike_figures(face_rows: Sequence[Mapping[str, Any]], max_psnr_db: float, max_ssim: float) -> LookAlike:
    """Faces that were changed (not missed) yet still look like their original to a person: the output of an
    adversarial-only run, for one. Reported for every goal; the machine goal gates on them too."""
    faces = [row for row in face_rows if row.get("face_status") != "possible face" and not row.get("missed")]
    similar = [f"{row['source_path']}#{row['face_index']}" for row in faces if too_similar(row, max_psnr_db, max_ssim)]
    return LookAlike(len(similar), similar[:100], max_psnr_db, max_ssim)


def crossed_look_alike(look_alike: LookAlike, max_faces: int) -> list[str]:
    """The machine goal's visual floor: faces changed for machines only still fail a release meant for everyone."""
    if look_alike.count > max_faces:
        return [f"{look_alike.count} face(s) changed but still look like their original to a person (face-box PSNR > "
                f"{look_alike.max_psnr_db:g} dB or SSIM > {look_alike.max_ssim:g}) > max {max_faces}: not anonymized for "
                "viewers (an adversarial perturbation alone protects against machines only)"]
    return []


def crossed_match_gate(human: HumanGoal, min_match_rate: float) -> list[str]:
    """The human goal's identity gate: enough faces must still match their original by the judge."""
    if human.judge is None:
        return [f"no judge: {human.judge_reason}"]
    rate = human.match_rate
    if rate is None:
        return [f"match rate not measured ({human.judge} found no face to compare)"]
    if rate < min_match_rate:
        return [f"match rate {rate:.1%} < min {min_match_rate:.1%} ({human.matched} of {human.faces} faces still "
                f"matched to their original by {human.judge})"]
    return []


def crossed_visual_floor(human: HumanGoal, max_faces: int) -> list[str]:
    """The human goal's stand-in for a leak: faces that still look like their original."""
    change = human.visual_change
    if change.too_similar > max_faces:
        return [f"{change.too_similar} face(s) still look like their original (face-box PSNR > {change.max_psnr_db:g} dB "
                f"or SSIM > {change.max_ssim:g}) > max {max_faces}"]
    return []
