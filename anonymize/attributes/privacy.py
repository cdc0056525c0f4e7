"""k-anonymity, l-diversity and t-closeness of a table of face attributes (AnonymousNet's measurable privacy).

Everything works on integer codes, one row per face, as :meth:`AttributeTable.bits` gives them:
1 present, 0 absent, -1 unknown.

* Quasi-identifiers (QIs) are the attributes an attacker can see and link with: faces with the
  same QI values form an equivalence class. An unknown value (-1) is a value of its own: a face
  whose source said nothing about ``Eyeglasses`` only shares a class with faces for which it said
  nothing either (the gap is as visible to the attacker as the value would be).
* Sensitive attributes are what the release must not reveal about a class. Unknown sensitive
  values are left out of every distribution: a class's distribution is over its faces whose value
  is known; a class with no known value counts as diverse-less (distinct-l 0) and has no t.
* k: the size of the smallest class (Sweeney 2002). distinct-l: the fewest distinct sensitive
  values in a class; entropy-l: exp of the smallest class entropy (natural log) of the sensitive
  values (Machanavajjhala et al. 2007), so a class with two equally frequent values has
  entropy-l 2.
* t: the largest Earth Mover's Distance between a class's sensitive distribution and the whole
  set's, or a reference set's (Li, Li & Venkatasubramanian 2007). A binary attribute: |p - q| of
  the shares of 1. An ordered attribute with m levels 0..m-1: sum over levels of the absolute
  cumulative difference, divided by m - 1 (ground distance |i - j| / (m - 1)). Joint, over several
  sensitive attributes: the distribution of their value combinations with equal ground distance
  between any two different combinations, whose EMD is the total variation distance
  1/2 sum |p - q| (Li et al.'s formula for nominal values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN = -1


@dataclass(frozen=True)
class EquivalenceClasses:
    """Faces grouped by their quasi-identifier values."""

    labels: np.ndarray  # [faces] class index of each face
    patterns: np.ndarray  # [classes, quasi-identifiers] int8: the QI values of each class (-1: unknown)
    sizes: np.ndarray  # [classes] faces per class

    @property
    def faces(self) -> int:
        return int(self.labels.shape[0])

    def members(self, index: int) -> np.ndarray:
        return np.flatnonzero(self.labels == index)


def _codes(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected [faces, attributes] codes, got shape {array.shape}")
    if array.size and (array.min() < UNKNOWN):
        raise ValueError(f"{what}: codes must be -1 (unknown) or levels 0, 1, ...")
    return array.astype(np.int64)


def equivalence_classes(qi_codes: np.ndarray) -> EquivalenceClasses:
    """Group faces by their QI values ([faces, QIs]; -1 is a value of its own). Classes are in first-seen order."""
    codes = _codes(qi_codes, "quasi-identifiers")
    if codes.shape[0] == 0:
        return EquivalenceClasses(np.zeros(0, np.int64), np.zeros((0, codes.shape[1]), np.int8), np.zeros(0, np.int64))
    patterns, first, labels, sizes = np.unique(codes, axis=0, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first)  # renumber classes by first appearance, so results read in table order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return EquivalenceClasses(rank[labels.reshape(-1)], patterns[order].astype(np.int8), sizes[order])


def k_anonymity(classes: EquivalenceClasses) -> int:
    """The size of the smallest class (0 for no faces)."""
    return int(classes.sizes.min()) if classes.sizes.size else 0


def class_size_histogram(classes: EquivalenceClasses) -> dict[int, int]:
    """Class size -> how many classes have it, smallest size first."""
    sizes, counts = np.unique(classes.sizes, return_counts=True)
    return {int(size): int(count) for size, count in zip(sizes, counts)}


def share_below_k(classes: EquivalenceClasses, k: int) -> float:
    """The share of faces in classes smaller than ``k`` (k = 2: the share whose QI values are unique)."""
    if classes.faces == 0:
        return 0.0
    return float(classes.sizes[classes.sizes < k].sum() / classes.faces)


def _joint_codes(sensitive: np.ndarray) -> np.ndarray:
    """One code per face for its combination of sensitive values; -1 when any of them is unknown."""
    codes = _codes(sensitive, "sensitive attributes")
    known = (codes >= 0).all(axis=1)
    joint = np.full(codes.shape[0], UNKNOWN, np.int64)
    if known.any():
        _, joint[known] = np.unique(codes[known], axis=0, return_inverse=True)
    return joint


def _class_counts(classes: EquivalenceClasses, values: np.ndarray, levels: int) -> np.ndarray:
    """[classes, levels] counts of each known value in each class."""
    known = values >= 0
    counts = np.zeros((classes.sizes.size, levels), np.int64)
    np.add.at(counts, (classes.labels[known], values[known]), 1)
    return counts


def distinct_l(classes: EquivalenceClasses, sensitive: np.ndarray) -> int:
    """The fewest distinct known sensitive values in a class ([faces] or [faces, S]: S attributes read jointly)."""
    joint = _joint_codes(sensitive)
    if classes.sizes.size == 0:
        return 0
    counts = _class_counts(classes, joint, int(joint.max()) + 1 if joint.size else 1)
    return int((counts > 0).sum(axis=1).min())


def entropy_l(classes: EquivalenceClasses, sensitive: np.ndarray) -> float:
    """exp(the smallest class entropy of the known sensitive values); 0 when a class has no known value."""
    joint = _joint_codes(sensitive)
    if classes.sizes.size == 0:
        return 0.0
    counts = _class_counts(classes, joint, int(joint.max()) + 1 if joint.size else 1).astype(np.float64)
    totals = counts.sum(axis=1)
    if (totals == 0).any():
        return 0.0
    shares = counts / totals[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(shares > 0, shares * np.log(shares), 0.0).sum(axis=1)
    return float(np.exp(entropy.min()))


def emd_ordered(p: np.ndarray, q: np.ndarray) -> float:
    """EMD between two distributions over m ordered levels (ground distance |i - j| / (m - 1))."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape or p.ndim != 1 or p.size < 2:
        raise ValueError("ordered EMD: two distributions over the same two or more levels")
    return float(np.abs(np.cumsum(p - q)).sum() / (p.size - 1))


def emd_equal(p: np.ndarray, q: np.ndarray) -> float:
    """EMD with the same ground distance (1) between any two values: the total variation distance."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape:
        raise ValueError("EMD: two distributions over the same values")
    return float(0.5 * np.abs(p - q).sum())


def _distribution(counts: np.ndarray) -> np.ndarray | None:
    total = counts.sum()
    return counts / total if total else None


@dataclass(frozen=True)
class Closeness:
    """t of one sensitive attribute (or of their joint values): the worst class and its distance."""

    t: float | None  # None: no class has a known value
    worst_class: int | None
    distances: np.ndarray  # [classes] EMD of each class (NaN where the class has no known value)


def t_closeness(classes: EquivalenceClasses, sensitive: np.ndarray, reference: np.ndarray | None = None,
                levels: int = 2) -> Closeness:
    """The largest EMD between a class's and the whole set's (or ``reference``'s) distribution of one attribute.

    ``sensitive``: [faces] codes 0..levels-1 (-1 unknown). ``levels`` 2 is a binary attribute
    (|p - q|); more levels are ordered (the cumulative form). ``reference``: codes of another set
    of faces (e.g. the originals, or a labelled population) whose distribution is the target.
    """
    values = _codes(sensitive, "sensitive attribute")
    if values.shape[1] != 1:
        raise ValueError("t_closeness: one attribute at a time (joint_t_closeness reads several)")
    values = values[:, 0]
    if values.size and values.max() >= levels:
        raise ValueError(f"sensitive attribute: a code of {int(values.max())} with {levels} levels")
    target_codes = values if reference is None else _codes(reference, "reference")[:, 0]
    target = _distribution(np.bincount(target_codes[target_codes >= 0], minlength=levels)[:levels].astype(np.float64))
    counts = _class_counts(classes, values, levels).astype(np.float64)
    distances = np.full(classes.sizes.size, np.nan)
    if target is None:
        return Closeness(None, None, distances)
    for index, row in enumerate(counts):
        shares = _distribution(row)
        if shares is not None:
            distances[index] = emd_ordered(shares, target)
    return _worst(distances)


def joint_t_closeness(classes: EquivalenceClasses, sensitive: np.ndarray, reference: np.ndarray | None = None) -> Closeness:
    """The largest total variation distance between a class's and the target's joint sensitive values.

    ``sensitive``: [faces, S]; a face with any of them unknown is left out.
    """
    codes = _codes(sensitive, "sensitive attributes")
    target_codes = codes if reference is None else _codes(reference, "reference")
    if target_codes.shape[1] != codes.shape[1]:
        raise ValueError("reference: not the same sensitive attributes")
    combined = _joint_codes(np.concatenate([codes, target_codes]))  # one numbering for both sets
    values, target_values = combined[: codes.shape[0]], combined[codes.shape[0]:]
    combinations = int(combined.max()) + 1 if combined.size else 0
    distances = np.full(classes.sizes.size, np.nan)
    target = _distribution(np.bincount(target_values[target_values >= 0], minlength=combinations).astype(np.float64))
    if target is None:
        return Closeness(None, None, distances)
    for index, row in enumerate(_class_counts(classes, values, max(combinations, 1)).astype(np.float64)):
        shares = _distribution(row)
        if shares is not None:
            distances[index] = emd_equal(shares, target)
    return _worst(distances)


def _worst(distances: np.ndarray) -> Closeness:
    if np.isnan(distances).all():
        return Closeness(None, None, distances)
    worst = int(np.nanargmax(distances))
    return Closeness(float(distances[worst]), worst, distances)


@dataclass(frozen=True)
class PrivacyReport:
    """k / l / t of one release over chosen quasi-identifiers and sensitive attributes."""

    faces: int
    quasi_identifiers: tuple[str, ...]
    sensitive: tuple[str, ...]
    k: int
    classes: int
    class_sizes: dict[int, int]  # size -> number of classes
    below_k: float | None  # share of faces in classes smaller than the requested k (None: none requested)
    requested_k: int | None
    unique_share: float  # share of faces alone in their class
    distinct_l: int | None  # None without sensitive attributes
    entropy_l: float | None
    t: dict[str, float | None]  # per sensitive attribute, and "joint" when there are several

    def as_dict(self) -> dict[str, object]:
        return {
            "faces": self.faces, "quasi_identifiers": list(self.quasi_identifiers), "sensitive": list(self.sensitive),
            "k": self.k, "classes": self.classes, "class_sizes": {str(size): count for size, count in self.class_sizes.items()},
            "requested_k": self.requested_k, "share_below_k": self.below_k, "unique_share": self.unique_share,
            "distinct_l": self.distinct_l, "entropy_l": self.entropy_l, "t": dict(self.t),
        }


def privacy_report(qi_codes: np.ndarray, sensitive_codes: np.ndarray | None, quasi_identifiers: tuple[str, ...],
                   sensitive: tuple[str, ...] = (), requested_k: int | None = None,
                   reference_sensitive: np.ndarray | None = None) -> PrivacyReport:
    """Every figure at once; binary sensitive attributes (``sensitive_codes`` [faces, S] of 0/1/-1)."""
    classes = equivalence_classes(qi_codes)
    l_distinct = l_entropy = None
    t: dict[str, float | None] = {}
    if sensitive:
        codes = _codes(sensitive_codes, "sensitive attributes")
        reference = None if reference_sensitive is None else _codes(reference_sensitive, "reference")
        l_distinct, l_entropy = distinct_l(classes, codes), entropy_l(classes, codes)
        for column, name in enumerate(sensitive):
            t[name] = t_closeness(classes, codes[:, column], None if reference is None else reference[:, column]).t
        if len(sensitive) > 1:
            t["joint"] = joint_t_closeness(classes, codes, reference).t
    return PrivacyReport(classes.faces, tuple(quasi_identifiers), tuple(sensitive), k_anonymity(classes),
                         int(classes.sizes.size), class_size_histogram(classes),
                         None if requested_k is None else share_below_k(classes, requested_k), requested_k,
                         share_below_k(classes, 2), l_distinct, l_entropy, t)
