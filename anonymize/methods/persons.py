"""Which faces show the same person: one folder per person, or clusters of identity embeddings.

Dataset-level methods make promises about people, not photos (k-Same never groups two photos of
one person; CFA gives every photo of a person the same new identity), so they share this one
definition of "person".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Literal

import numpy as np

from anonymize.methods.base import IdentityFrom

Metric = Literal["cosine", "euclidean"]


def folder_of(key: str) -> str:
    """The folder of a face key ``"<relative path>#<face index>"`` ("" for the top folder)."""
    parent = str(PurePosixPath(key.rpartition("#")[0]).parent)
    return "" if parent == "." else parent


def cluster_people(embeddings: np.ndarray, max_distance: float, metric: Metric = "cosine") -> np.ndarray:
    """Person ids from identity embeddings: average-linkage clusters no wider than ``max_distance``.

    Ids are numbered in order of first appearance, so the same embeddings always give the same ids.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(embeddings) == 1:
        return np.zeros(1, dtype=np.int64)
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=None, metric=metric, linkage="average",
                                     distance_threshold=max_distance).fit_predict(embeddings)
    return _in_order_of_appearance(labels)


def person_ids(keys: Sequence[str], embeddings: np.ndarray, identity_from: IdentityFrom, max_distance: float,
               metric: Metric = "cosine") -> np.ndarray:
    """One person id per face: by folder (``--identity-from folder``) or by clustering the embeddings."""
    if identity_from == "folder":
        return _in_order_of_appearance(np.asarray([folder_of(key) for key in keys], dtype=object))
    if identity_from == "cluster":
        return cluster_people(embeddings, max_distance, metric)
    raise ValueError(f"unknown identity source {identity_from!r}: expected cluster or folder")


def _in_order_of_appearance(labels: np.ndarray) -> np.ndarray:
    first: dict[object, int] = {}
    return np.asarray([first.setdefault(label, len(first)) for label in labels.tolist()], dtype=np.int64)


def stable_person_ids(groups: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Person ids for faces grouped as ``groups`` whose first ``len(stored)`` faces already have ids.

    Stored faces keep theirs (they may already be written); a new face in a stored face's group takes
    that face's id, a new face in a new group a new id. So a resumed run never renumbers anyone.
    """
    count = len(stored)
    persons = np.empty(len(groups), dtype=np.int64)
    persons[:count] = stored
    known = {int(groups[i]): int(stored[i]) for i in range(count)}
    next_id = int(stored.max()) + 1 if count else 0
    for i in range(count, len(groups)):
        group = int(groups[i])
        if group not in known:
            known[group], next_id = next_id, next_id + 1
        persons[i] = known[group]
    return persons
