"""CFA's angles: plain degrees, or degrees relative to ArcFace's calibrated "other person" angle.

CFA-Net's theta is "the preset identity threshold angle according to the face recognition network"
(their Eq. 10): an angle means something only against the recogniser's own threshold. ``anonymize
calibrate FACES --recognizer arcface`` measures ArcFace's threshold angle at a chosen FAR and stores it
(``<weights>/calibration/arcface.json``); ``-p angle=threshold+10`` then means 10 degrees beyond it,
``threshold-5`` 5 degrees short of it, ``threshold`` the angle itself. Plain numbers stay degrees.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from anonymize.metrics.graph_recognisers import calibration_record_path, read_calibration
from anonymize.weights import WeightsStore

THRESHOLD = "threshold"
RECOGNISER = "arcface"  # CFA's sphere: the threshold that gives its angles their meaning
_RELATIVE = re.compile(r"^threshold\s*(?:([+-])\s*(\d+(?:\.\d*)?|\.\d+))?$")


@dataclass(frozen=True)
class AngleSpec:
    """One requested angle: ``value`` degrees, or ``value`` degrees from the calibrated threshold (``relative``)."""

    value: float
    relative: bool
    text: str

    def resolve(self, threshold: float | None) -> float:
        if not self.relative:
            return self.value
        if threshold is None:
            raise ValueError(f"{self.text!r} needs ArcFace's calibrated threshold")
        return threshold + self.value


@dataclass(frozen=True)
class CalibratedThreshold:
    """ArcFace's "other person" angle as ``anonymize calibrate`` stored it, and where it came from."""

    angle: float  # degrees: arccos of the cosine threshold
    cosine: float
    far: float | None
    faces_dir: str | None
    path: str


def parse_angle(text: str) -> AngleSpec:
    """``"70"`` -> 70 degrees; ``"threshold+10"`` -> 10 degrees beyond the threshold; one-line ValueError otherwise."""
    cleaned = text.strip().lower()
    match = _RELATIVE.match(cleaned)
    if match:
        sign, number = match.groups()
        offset = float(number) if number else 0.0
        return AngleSpec(-offset if sign == "-" else offset, True, text.strip())
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"angle {text.strip()!r} is neither degrees (e.g. 70) nor relative to ArcFace's calibrated "
                         f"threshold (e.g. threshold+10)") from None
    if not math.isfinite(value):
        raise ValueError(f"angle {text.strip()!r} is not a finite number of degrees")
    return AngleSpec(value, False, text.strip())


def parse_angles(text: str) -> tuple[AngleSpec, ...]:
    """A comma-separated sweep (``"40,threshold,threshold+15"``); empty parts are ignored."""
    return tuple(parse_angle(part) for part in text.split(",") if part.strip())


def calibrated_threshold(store: WeightsStore) -> CalibratedThreshold | None:
    """The stored ArcFace calibration of this weights folder, or None when ``anonymize calibrate`` never stored one."""
    record = read_calibration(store, RECOGNISER)
    if record is None:
        return None
    cosine = float(record["cosine"]["value"])
    angle = record.get("angle_degrees")
    angle = float(angle) if isinstance(angle, (int, float)) else math.degrees(math.acos(max(-1.0, min(1.0, cosine))))
    far = record.get("far_wanted")
    return CalibratedThreshold(angle, cosine, float(far) if isinstance(far, (int, float)) else None,
                               record.get("faces_dir"), str(calibration_record_path(store, RECOGNISER)))


def resolve_angles(specs: tuple[AngleSpec, ...], threshold: CalibratedThreshold | None, store: WeightsStore) -> tuple[float, ...]:
    """Degrees of every requested angle; a ValueError (one line, saying what to run) when a relative angle
    has no calibration to refer to, or when a resolved angle leaves (0, 180] or repeats another."""
    if threshold is None and any(spec.relative for spec in specs):
        shown = next(spec.text for spec in specs if spec.relative)
        raise ValueError(f"angle {shown!r} is relative to ArcFace's calibrated threshold, but none is stored at "
                         f"{calibration_record_path(store, RECOGNISER)}: run `anonymize calibrate FACES_DIR --recognizer "
                         f"arcface` (one sub-folder per identity) with the same weights folder first, or give degrees")
    angles = tuple(spec.resolve(threshold.angle if threshold else None) for spec in specs)
    for spec, angle in zip(specs, angles):
        if not 0 < angle <= 180:
            where = f" = {threshold.angle:.2f} {spec.value:+g}" if spec.relative and threshold else ""
            raise ValueError(f"every angle must be in (0, 180] degrees, got {spec.text}{where} = {angle:g}")
    if len(set(angles)) != len(angles):
        raise ValueError(f"angles must be distinct, got {', '.join(f'{a:g}' for a in angles)}")
    return angles


def relative_to_threshold(angles: tuple[float, ...], threshold: CalibratedThreshold) -> str:
    """``"80 = threshold +10.0"``: each angle stated against ArcFace's calibrated angle, for the run's log."""
    return ", ".join(f"{angle:g} = threshold {angle - threshold.angle:+.1f}" for angle in angles)
