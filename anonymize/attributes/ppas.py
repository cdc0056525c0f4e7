"""AnonymousNet's stage II: choose the attribute values a de-identified face should carry.

Four ways, all on the codes of :meth:`AttributeTable.bits` (1, 0, -1 unknown; unknown values are
never changed except where a group is recoded to its majority):

* :func:`select_attributes_literal`: Algorithm 1 (PPAS) read literally, per face and per attribute:
  keep the value if the face's class distribution lies within ``t`` of the population's, else flip
  it. A face's equivalence class over the quasi-identifiers holds one value of each of them, so its
  class distribution of an attribute is a point mass at the face's value and the test is
  ``|value - q| <= t``, q the population's share of 1. Read so, a small ``t`` also flips values
  most of the population has (the majority value lies ``min(q, 1 - q)`` from the population), which
  makes faces rarer instead of more common: :func:`validate_literal_t` refuses such a ``t``. At any
  ``t`` it accepts, an attribute is kept or set to its majority in every face: the release moves away
  from the population, against the paper's aim; kept for comparison, not the default.
* :func:`select_attributes_closeness`: Algorithm 1 read for the paper's aim (S_E close to S), the
  default: S_{E_i} is attribute i's distribution in the face's class over the *other*
  quasi-identifiers; a value is flipped only where that moves its class toward S and keeps the
  release's marginal within ``t`` of S.
* :func:`k_member_recoding`: the dataset mode: reach a requested k with few flips. Faces already
  in classes of at least k keep their values; the others are grouped greedily by Hamming distance
  (k-member grouping), or each moved to the nearest class of at least k, whichever flips fewer
  values; each group is recoded to its majority values; then classes that break l-diversity or
  t-closeness on the sensitive attributes are merged, each with the class whose union meets them
  with the fewest new flips (else the fewest flips), until both hold.
  Greedy: few flips, not a proven minimum.
* :func:`randomized_response`: each known value kept with probability e^eps / (1 + e^eps), else
  flipped (Warner's randomised response, epsilon-local differential privacy per value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anonymize.attributes.privacy import UNKNOWN, distinct_l, equivalence_classes, joint_t_closeness, t_closeness
from anonymize.errors import AnonymizeError


class SelectionError(AnonymizeError, ValueError):
    """A privacy requirement that cannot be met as asked (the message says why)."""


def population_shares(codes: np.ndarray) -> np.ndarray:
    """[attributes] share of 1 among the known values of each column; NaN where none is known."""
    codes = np.asarray(codes)
    known = (codes >= 0).sum(axis=0)
    ones = (codes == 1).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(known > 0, ones / np.maximum(known, 1), np.nan)


# ---- Algorithm 1, literally -----------------------------------------------------------------------


def validate_literal_t(t: float, shares: np.ndarray, names: Sequence[str]) -> None:
    """Refuse a ``t`` for which the literal Algorithm 1 flips a value the majority of the population has."""
    validate_t(t)
    for share, name in zip(shares, names):
        if np.isnan(share):
            continue
        minority = min(share, 1 - share)  # the majority value's distance from the population
        if minority > t:
            majority = "present" if share >= 0.5 else "absent"
            raise SelectionError(
                f"t={t:g} flips the majority value of {name} ({majority} in {max(share, 1 - share):.0%} of the population, "
                f"{minority:.3f} from it): Algorithm 1 read literally would then make faces rarer, not more common; "
                f"use t >= {max(min(s, 1 - s) for s in shares if not np.isnan(s)):.3f} or the dataset mode (k)")


@dataclass(frozen=True)
class Selection:
    codes: np.ndarray  # [faces, attributes] the selected values
    changed: np.ndarray  # [faces, attributes] bool: where a value differs from the input

    @property
    def flips(self) -> int:
        return int(self.changed.sum())


def select_attributes_literal(codes: np.ndarray, t: float, names: Sequence[str],
                              population: np.ndarray | None = None) -> Selection:
    """Algorithm 1 per face: keep a value within ``t`` of the population's share of 1 (``population`` or the table's), else flip it."""
    codes = np.asarray(codes, np.int8)
    shares = population_shares(codes) if population is None else np.asarray(population, np.float64)
    validate_literal_t(t, shares, names)
    distance = np.abs(codes - shares[None, :])
    flip = (codes >= 0) & (distance > t) & ~np.isnan(shares)[None, :]
    selected = codes.copy()
    selected[flip] = 1 - codes[flip]
    return Selection(selected, flip)


# ---- Algorithm 1, read for its aim (the default) ----------------------------------------------------------

_TOLERANCE = 1e-12  # shares are ratios of counts: compare with t up to rounding


def validate_t(t: float) -> None:
    """An EMD between two binary distributions lies in [0, 1]."""
    if not 0 <= t <= 1:
        raise SelectionError(f"t={t:g}: an EMD between binary distributions lies in [0, 1]")


def select_attributes_closeness(codes: np.ndarray, t: float, population: np.ndarray | None = None) -> Selection:
    """Algorithm 1 with S_{E_i} read as attribute i's distribution in the face's class over the other quasi-identifiers.

    Per face (table order) and per attribute i (Algorithm 1's loop): E is the set of faces whose released
    values of the *other* quasi-identifiers equal this face's, S_E their share of 1 for i, S the population's
    (``population`` or the table's own). Keep the value when |S_E - S| <= t (line 5); else flip it (line 8),
    but only when the flip brings S_E closer to S (flipping a value on the side E lacks would move E away
    from the aim) and leaves the release's marginal of i within t of S (or no farther than it already was).
    So every class is pulled toward S one face at a time and the marginals never leave t: the paper's stated
    aim (S_E close to S), which the literal reading (:func:`select_attributes_literal`) contradicts.
    Unknown values (-1) are never changed and count in no share; a face unknown on another attribute is in
    the class of faces unknown there too.
    """
    selected = np.array(codes, dtype=np.int8, copy=True)
    if selected.ndim != 2:
        raise SelectionError(f"quasi-identifiers: expected [faces, attributes] codes, got shape {selected.shape}")
    validate_t(t)
    shares = population_shares(selected) if population is None else np.asarray(population, np.float64)
    faces, attributes = selected.shape
    others = [np.array([column for column in range(attributes) if column != a], np.int64) for a in range(attributes)]

    def key(row: int, attribute: int) -> bytes:
        return selected[row, others[attribute]].tobytes()

    classes: list[dict[bytes, list[int]]] = [{} for _ in range(attributes)]  # per attribute: class -> [ones, known]
    for attribute in range(attributes):
        for row in range(faces):
            if selected[row, attribute] >= 0:
                counts = classes[attribute].setdefault(key(row, attribute), [0, 0])
                counts[0] += int(selected[row, attribute])
                counts[1] += 1
    ones, known = (selected == 1).sum(axis=0).astype(np.int64), (selected >= 0).sum(axis=0).astype(np.int64)
    for row in range(faces):
        for attribute in range(attributes):
            value, target = int(selected[row, attribute]), float(shares[attribute])
            if value < 0 or math.isnan(target):
                continue
            step = 1 - 2 * value  # +1 turns a 0 into 1, -1 a 1 into 0
            ones_in_class, size = classes[attribute][key(row, attribute)]
            distance = abs(ones_in_class / size - target)
            if distance <= t + _TOLERANCE or abs((ones_in_class + step) / size - target) >= distance - _TOLERANCE:
                continue
            marginal = abs(ones[attribute] / known[attribute] - target)
            if abs((ones[attribute] + step) / known[attribute] - target) > max(t, marginal) + _TOLERANCE:
                continue
            moved = {other: key(row, other) for other in range(attributes) if other != attribute and selected[row, other] >= 0}
            selected[row, attribute] = 1 - value
            classes[attribute][key(row, attribute)][0] += step
            ones[attribute] += step
            for other, old in moved.items():  # this face now sits in another class of every other attribute
                counts = classes[other][old]
                counts[0] -= int(selected[row, other])
                counts[1] -= 1
                counts = classes[other].setdefault(key(row, other), [0, 0])
                counts[0] += int(selected[row, other])
                counts[1] += 1
    return Selection(selected, selected != np.asarray(codes, np.int8))


def closeness_over_others(codes: np.ndarray, population: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per attribute, how far its classes over the other quasi-identifiers lie from S: (largest, mean over faces).

    What :func:`select_attributes_closeness` pulls down: |S_E - S| for E each face's class over the other
    attributes (its known values only); the largest is the attribute's t as a sensitive attribute of those
    classes. NaN where an attribute has no known value or no S.
    """
    codes = np.asarray(codes, np.int8)
    largest, mean = np.full(codes.shape[1], np.nan), np.full(codes.shape[1], np.nan)
    for attribute in range(codes.shape[1]):
        known = codes[:, attribute] >= 0
        if not known.any() or np.isnan(population[attribute]):
            continue
        classes = equivalence_classes(np.delete(codes, attribute, axis=1)[known] if codes.shape[1] > 1
                                      else np.zeros((int(known.sum()), 1), np.int8))
        ones = np.bincount(classes.labels, weights=codes[known, attribute].astype(np.float64), minlength=classes.sizes.size)
        distance = np.abs(ones / classes.sizes - population[attribute])
        largest[attribute] = float(distance.max())
        mean[attribute] = float((distance * classes.sizes).sum() / classes.sizes.sum())
    return largest, mean


# ---- the dataset mode ---------------------------------------------------------------------------------


def hamming(codes: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Differences between each row and ``pattern`` (unknown differs from a value, equals unknown)."""
    return (np.asarray(codes) != np.asarray(pattern)[None, :]).sum(axis=1)


def majority_pattern(codes: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Per column the majority known value of the rows; ``tie`` where 1s and 0s are as many; -1 where none is known."""
    ones, zeros = (codes == 1).sum(axis=0), (codes == 0).sum(axis=0)
    pattern = np.where(ones > zeros, 1, np.where(zeros > ones, 0, tie)).astype(np.int8)
    pattern[ones + zeros == 0] = UNKNOWN
    return pattern


@dataclass(frozen=True)
class Requirements:
    """What the dataset mode must reach: k over the quasi-identifiers, and l / t on the sensitive values."""

    k: int
    l: int | None = None  # distinct-l
    t: float | None = None  # per sensitive attribute, and joint when there are several


@dataclass(frozen=True)
class Recoding(Selection):
    groups: np.ndarray = None  # type: ignore[assignment]  # [faces] the group each face was recoded with
    strategy: str = ""  # "k-member grouping" | "nearest large class" | "already k-anonymous"
    merges: int = 0  # classes merged to reach l and t


def _recode(codes: np.ndarray, groups: np.ndarray, tie: np.ndarray) -> np.ndarray:
    recoded = codes.copy()
    for group in np.unique(groups):
        members = groups == group
        recoded[members] = majority_pattern(codes[members], tie)
    return recoded


def _k_member_groups(codes: np.ndarray, small: np.ndarray, large_patterns: list[np.ndarray], k: int,
                     first_group: int, groups: np.ndarray, tie: np.ndarray) -> None:
    """Greedy k-member grouping of the ``small`` faces (in place in ``groups``)."""
    remaining = [int(face) for face in small]
    new_patterns: list[np.ndarray] = []
    seed = remaining[0] if remaining else None
    group = first_group
    while len(remaining) >= k and seed is not None:
        distances = hamming(codes[remaining], codes[seed])
        chosen = [remaining[i] for i in np.argsort(distances, kind="stable")[:k]]
        groups[chosen] = group
        new_patterns.append(majority_pattern(codes[chosen], tie))
        group += 1
        remaining = [face for face in remaining if face not in set(chosen)]
        if remaining:  # the next seed: the face least like the last one
            seed = remaining[int(np.argmax(hamming(codes[remaining], codes[seed])))]
    patterns = large_patterns + new_patterns
    targets = list(range(first_group - len(large_patterns), first_group)) + list(range(first_group, group))
    for face in remaining:  # fewer than k left: each joins the nearest group
        distances = [int(hamming(codes[face][None, :], pattern)[0]) for pattern in patterns]
        groups[face] = targets[int(np.argmin(distances))]


def _initial_groups(codes: np.ndarray, k: int, tie: np.ndarray) -> tuple[np.ndarray, str]:
    classes = equivalence_classes(codes)
    large = np.flatnonzero(classes.sizes >= k)
    small = np.flatnonzero(classes.sizes[classes.labels] < k)
    if small.size == 0:
        return classes.labels.copy(), "already k-anonymous"
    candidates: list[tuple[np.ndarray, str]] = []
    grouped = np.full(codes.shape[0], -1, np.int64)
    for position, label in enumerate(large):
        grouped[classes.labels == label] = position
    large_patterns = [classes.patterns[label].astype(np.int8) for label in large]
    k_member = grouped.copy()
    _k_member_groups(codes, small, large_patterns, k, len(large), k_member, tie)
    candidates.append((k_member, "k-member grouping"))
    if large.size:
        nearest = grouped.copy()
        for face in small:
            nearest[face] = int(np.argmin([hamming(codes[face][None, :], pattern)[0] for pattern in large_patterns]))
        candidates.append((nearest, "nearest large class"))
    flips = [int((_recode(codes, groups, tie) != codes).sum()) for groups, _ in candidates]
    return candidates[int(np.argmin(flips))]


def _violation(classes, sensitive: np.ndarray | None, requirements: Requirements,
               reference: np.ndarray | None) -> np.ndarray:
    """[classes] how far each class is from meeting l and t (0: it meets them)."""
    gap = np.zeros(classes.sizes.size)
    if sensitive is None:
        return gap
    if requirements.l is not None:
        for index in range(classes.sizes.size):
            members = classes.labels == index
            distinct = len({tuple(row) for row in sensitive[members] if (row >= 0).all()})
            gap[index] += max(0, requirements.l - distinct)
    if requirements.t is not None:
        closeness = [t_closeness(classes, sensitive[:, column], None if reference is None else reference[:, column])
                     for column in range(sensitive.shape[1])]
        if sensitive.shape[1] > 1:
            closeness.append(joint_t_closeness(classes, sensitive, reference))
        for result in closeness:
            gap += np.nan_to_num(np.maximum(result.distances - requirements.t, 0.0), nan=0.0)
    return gap


def _check_reachable(sensitive: np.ndarray | None, requirements: Requirements, faces: int,
                     reference: np.ndarray | None) -> None:
    if requirements.k < 1 or requirements.k > faces:
        raise SelectionError(f"k={requirements.k}: must lie between 1 and the number of faces ({faces})")
    if (requirements.l is not None or requirements.t is not None) and sensitive is None:
        raise SelectionError("l and t need sensitive attributes")
    if sensitive is None:
        return
    whole = equivalence_classes(np.zeros((faces, 1), np.int8))
    if requirements.l is not None and distinct_l(whole, sensitive) < requirements.l:
        raise SelectionError(f"l={requirements.l}: the whole set holds only {distinct_l(whole, sensitive)} distinct sensitive values")
    if requirements.t is not None:
        if not 0 <= requirements.t <= 1:
            raise SelectionError(f"t={requirements.t:g}: must lie in [0, 1]")
        if reference is not None and _violation(whole, sensitive, Requirements(1, None, requirements.t), reference)[0] > 0:
            raise SelectionError(f"t={requirements.t:g}: even the whole set lies farther than t from the reference")


def _merge_target(codes: np.ndarray, recoded: np.ndarray, classes, worst: int, sensitive: np.ndarray,
                  requirements: Requirements, reference: np.ndarray | None, tie: np.ndarray) -> int:
    """The class to merge ``worst`` into: one whose union meets l and t if any, then the fewest new flips, then the largest."""
    target_values = sensitive if reference is None else reference  # the distribution t is measured against
    best: tuple[bool, int, int] | None = None
    chosen = -1
    for index in range(classes.sizes.size):
        if index == worst:
            continue
        members = (classes.labels == worst) | (classes.labels == index)
        merged = majority_pattern(codes[members], tie)
        added = int((merged[None, :] != codes[members]).sum() - (recoded[members] != codes[members]).sum())
        single = equivalence_classes(np.zeros((int(members.sum()), 1), np.int8))
        still = bool(_violation(single, sensitive[members], requirements, target_values)[0] > 0)
        key = (still, added, -int(classes.sizes[index]))
        if best is None or key < best:
            best, chosen = key, index
    return chosen


def k_member_recoding(qi_codes: np.ndarray, requirements: Requirements, sensitive: np.ndarray | None = None,
                      reference: np.ndarray | None = None) -> Recoding:
    """Recode the quasi-identifiers so that every class has k faces and meets l and t (see the module doc)."""
    codes = np.asarray(qi_codes, np.int8)
    if codes.ndim != 2:
        raise SelectionError(f"quasi-identifiers: expected [faces, attributes] codes, got shape {codes.shape}")
    if sensitive is not None:
        sensitive = np.asarray(sensitive).reshape(codes.shape[0], -1)
    _check_reachable(sensitive, requirements, codes.shape[0], reference)
    tie = (np.nan_to_num(population_shares(codes), nan=0.0) >= 0.5).astype(np.int8)  # ties go to the population's majority
    groups, strategy = _initial_groups(codes, requirements.k, tie)
    recoded = _recode(codes, groups, tie)
    merges = 0
    while True:
        classes = equivalence_classes(recoded)
        gap = _violation(classes, sensitive, requirements, reference)
        if not (gap > 0).any() or classes.sizes.size < 2:
            break
        worst = int(np.argmax(gap))
        target = _merge_target(codes, recoded, classes, worst, sensitive, requirements, reference, tie)
        members = (classes.labels == worst) | (classes.labels == target)
        groups[members] = groups[classes.labels == target][0]
        recoded[members] = majority_pattern(codes[members], tie)
        merges += 1
        if merges == 1 and strategy == "already k-anonymous":
            strategy = "merged for l and t"
    return Recoding(recoded, recoded != codes, groups, strategy, merges)


# ---- randomised response --------------------------------------------------------------------------


def keep_probability(epsilon: float) -> float:
    """e^eps / (1 + e^eps): the chance randomised response keeps a value."""
    if not math.isfinite(epsilon) or epsilon < 0:
        raise SelectionError(f"epsilon={epsilon}: must be a finite number >= 0")
    return 1.0 / (1.0 + math.exp(-epsilon))


def randomized_response(codes: np.ndarray, epsilon: float, seed: int = 0) -> Selection:
    """Keep each known value with probability e^eps / (1 + e^eps), else flip it; unknown values stay unknown."""
    codes = np.asarray(codes, np.int8)
    keep = keep_probability(epsilon)
    flip = (np.random.default_rng(seed).random(codes.shape) >= keep) & (codes >= 0)
    selected = codes.copy()
    selected[flip] = 1 - codes[flip]
    return Selection(selected, flip)
