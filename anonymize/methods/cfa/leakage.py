"""CFA's leakage screen: a new identity must not land on anybody who exists.

CFA-Net asks that the anonymized identity be far from every real face, not only from the face it
replaces. The index holds the unit ArcFace embeddings of every original face of the run (plus an
optional gallery of other people); a target is screened against everyone except the person it
belongs to (its own photos are what the angle keeps it away from). Exact inner-product search
(faiss ``IndexFlatIP``) on unit vectors gives cosines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

NOBODY = -1  # the person id of gallery faces: they are never the person being screened
NO_NEIGHBOUR = -1.0  # the nearest cosine when the index holds nobody else


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    array = array.reshape(len(array), -1) if array.ndim != 2 else array
    return np.ascontiguousarray(array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12))


@dataclass
class LeakageIndex:
    """Unit identity embeddings [N, E] with the person id of each (NOBODY for gallery faces)."""

    embeddings: np.ndarray
    persons: np.ndarray
    index: faiss.IndexFlatIP = field(init=False)

    def __post_init__(self) -> None:
        self.embeddings = _unit_rows(self.embeddings)
        self.persons = np.asarray(self.persons, dtype=np.int64)
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)

    def nearest(self, queries: np.ndarray, persons: np.ndarray) -> np.ndarray:
        """For each query, the highest cosine to a face of another person than ``persons[i]`` ([Q] float)."""
        queries = _unit_rows(queries)
        persons = np.asarray(persons, dtype=np.int64)
        result = np.full(len(queries), NO_NEIGHBOUR, dtype=np.float64)
        if len(queries) == 0 or self.index.ntotal == 0:
            return result
        own = max((int(np.sum(self.persons == person)) for person in set(persons.tolist())), default=0)
        cosines, indices = self.index.search(queries, min(self.index.ntotal, own + 1))  # one beyond the own faces
        for row, (found, scores) in enumerate(zip(indices, cosines)):
            others = [score for neighbour, score in zip(found, scores)
                      if neighbour >= 0 and self.persons[neighbour] != persons[row]]
            if others:
                result[row] = float(others[0])
        return result
