"""Re-identification with dlib's 128-d recogniser, and the check that it can tell people apart at all.

* Verification: an anonymized face still "matches" its own original when their descriptors are
  closer than the threshold (0.6, dlib's own).
* Identification (rank-1, as FALCO's tables report): the anonymized face is looked up among all
  original faces of the dataset; it is re-identified when the nearest one is its own original or,
  where the originals carry identity labels, another photo of the same person.
* Sanity check: on originals grouped by identity, same-person distances must be small and
  different-person distances large, or the re-identification numbers above mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from anonymize.metrics.identity import SAME_PERSON_DISTANCE


@dataclass(frozen=True)
class Identification:
    nearest: np.ndarray  # index into the gallery of each probe's nearest original
    nearest_distance: np.ndarray
    hits: np.ndarray  # bool: rank-1 re-identified
    chance: float  # expected hit rate of a random guess


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """len(a) x len(b) Euclidean distances."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def identify(probes: np.ndarray, gallery: np.ndarray, own: Sequence[int],
             labels: Sequence[str | None] | None = None) -> Identification:
    """Rank-1 identification of ``probes[i]`` (whose original is ``gallery[own[i]]``) in ``gallery``."""
    if len(probes) == 0:
        empty = np.zeros(0)
        return Identification(empty.astype(int), empty, empty.astype(bool), 0.0)
    distances = pairwise_distances(probes, gallery)
    nearest = distances.argmin(axis=1)
    own_index = np.asarray(own)
    hits = nearest == own_index
    if labels is not None:
        gallery_labels = np.array([label if label is not None else f"\0{i}" for i, label in enumerate(labels)], dtype=object)
        hits |= gallery_labels[nearest] == gallery_labels[own_index]
        chance = float(np.mean([(gallery_labels == gallery_labels[i]).mean() for i in own_index]))
    else:
        chance = 1.0 / len(gallery)
    return Identification(nearest, distances[np.arange(len(probes)), nearest], hits, chance)


@dataclass(frozen=True)
class IdentitySeparation:
    """How well the recogniser separates the originals' identities (one face per image)."""

    identities: int
    faces: int
    same_pairs: int
    different_pairs: int
    mean_same: float
    mean_different: float
    roc_auc: float  # chance that a different-person pair is farther apart than a same-person pair
    same_below_threshold: float  # share of same-person pairs closer than the threshold
    different_above_threshold: float  # share of different-person pairs at or beyond it
    threshold: float
    same_distances: list[float]
    different_distances: list[float]

    @property
    def separated(self) -> bool:
        """The recogniser is fit for this data: clearly better than chance, and the threshold sits between."""
        return self.roc_auc >= 0.9 and self.mean_same < self.threshold <= self.mean_different

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("same_distances")
        data.pop("different_distances")
        data["separated"] = self.separated
        return data


def identity_separation(descriptors: np.ndarray, labels: Sequence[str],
                        threshold: float = SAME_PERSON_DISTANCE) -> IdentitySeparation | None:
    """Same- vs different-person distances over all pairs; None without both kinds of pair."""
    if len(descriptors) < 2:
        return None
    labels_array = np.asarray(labels, dtype=object)
    distances = pairwise_distances(descriptors, descriptors)
    upper = np.triu_indices(len(labels_array), 1)
    same_mask = (labels_array[:, None] == labels_array[None, :])[upper]
    values = distances[upper]
    same, different = values[same_mask], values[~same_mask]
    if len(same) == 0 or len(different) == 0:
        return None
    return IdentitySeparation(
        identities=len(set(labels)),
        faces=len(labels_array),
        same_pairs=len(same),
        different_pairs=len(different),
        mean_same=float(same.mean()),
        mean_different=float(different.mean()),
        roc_auc=_auc(same, different),
        same_below_threshold=float((same < threshold).mean()),
        different_above_threshold=float((different >= threshold).mean()),
        threshold=threshold,
        same_distances=[float(v) for v in same],
        different_distances=[float(v) for v in different],
    )


def _auc(same: np.ndarray, different: np.ndarray) -> float:
    """Mann-Whitney estimate of P(different > same), ties counting one half."""
    ordered = np.sort(same)
    below = np.searchsorted(ordered, different, side="left")
    at_or_below = np.searchsorted(ordered, different, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (len(same) * len(different)))
