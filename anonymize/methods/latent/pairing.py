"""Pair each real face with the fake whose FaRL CLS feature is nearest, with faiss.

By cosine (the default, as the FALCO authors' commands pair): features are L2-normalised, so the
inner product of an exact flat index (``IndexFlatIP``) is the cosine similarity. By Euclidean
distance (``metric="euclidean"``, what FALCO's paper writes): the raw, unnormalised CLS embeddings in
an exact ``IndexFlatL2`` (on unit vectors the two orders would be the same). Either way a pair's
reported ``similarity`` is the cosine of the two features. The index lives on the GPU when the run does and faiss was built with GPU
support, on the CPU otherwise; both are exact, so they pick the same fakes.

With ``unique=True`` no fake is used twice in the whole run, however the faces are split into
batches: the pairer remembers the fakes reserved for earlier faces. For a batch of B faces it asks
each face for its ``used + B`` nearest fakes, which leaves every face at least B unused candidates,
and then assigns greedily, best similarity first (ties broken by face order, then fake index), so
the result is deterministic and each face gets its nearest fake not taken by a closer pair.
Pairing reserves nothing: the caller :meth:`FakePairer.reserve` s the pairs once the batch has
succeeded, under each face's key, so a failed batch burns no fake, and a face paired again (a
failed batch retried image by image) first gives back what it held. A face's unique fake does
depend on the faces reserved before it, hence on the order of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger searches go to the CPU index
PAIRING_METRICS = ("cosine", "euclidean")


class PairingError(ValueError):
    """The bank cannot give every face of the run its own fake."""


@dataclass(frozen=True)
class Pair:
    fake_index: int
    similarity: float


def _normalised(features: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"features must be a [N, D] array, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12))


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class FakePairer:
    """A cosine (or Euclidean) k-NN index over the bank's features, plus the fakes already handed out."""

    features: np.ndarray
    use_gpu: bool = False
    holders: dict[int, str] = field(default_factory=dict)  # reserved fake -> the face key holding it
    metric: str = "cosine"  # or "euclidean": then ``features`` and the queries must be the raw embeddings

    def __post_init__(self) -> None:
        if self.metric not in PAIRING_METRICS:
            raise ValueError(f"pairing metric must be one of {', '.join(PAIRING_METRICS)}, got {self.metric!r}")
        if self.metric == "cosine":
            self.features = _normalised(self.features)
            self.cpu_index = faiss.IndexFlatIP(self.features.shape[1])
        else:
            self.features = np.ascontiguousarray(self.features, dtype=np.float32)
            self.cpu_index = faiss.IndexFlatL2(self.features.shape[1])
        self.cpu_index.add(self.features)
        self.gpu_index = None
        if self.use_gpu and faiss_gpu_available():
            self._gpu_resources = faiss.StandardGpuResources()
            self.gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu_index)

    @property
    def used(self) -> set[int]:
        return set(self.holders)

    def reserve(self, keys: Sequence[str], pairs: Sequence[Pair]) -> None:
        """Mark each pair's fake as taken by its face (after the face's batch succeeded)."""
        self.release(keys)
        for key, pair in zip(keys, pairs):
            self.holders[pair.fake_index] = key

    def release(self, keys: Sequence[str]) -> None:
        """Give back the fakes these faces held (they are being paired again)."""
        wanted = set(keys)
        self.holders = {fake: key for fake, key in self.holders.items() if key not in wanted}

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, fake indices), each [Q, k], best first: the cosine similarity, or minus the
        squared Euclidean distance."""
        k = min(k, self.size)
        index = self.gpu_index if self.gpu_index is not None and k <= GPU_MAX_K else self.cpu_index
        if self.metric == "cosine":
            return index.search(_normalised(queries), k)
        distances, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return -distances, indices

    def _with_cosines(self, queries: np.ndarray, pairs: list[Pair]) -> list[Pair]:
        """The pairs with their cosine similarity (what the manifest reports, whatever the metric)."""
        if self.metric == "cosine" or not pairs:
            return pairs
        fakes = _normalised(self.features[[pair.fake_index for pair in pairs]])
        cosines = (_normalised(queries) * fakes).sum(axis=1)
        return [Pair(pair.fake_index, float(cosine)) for pair, cosine in zip(pairs, cosines)]

    def pair(self, queries: np.ndarray, unique: bool = False, keys: Sequence[str] = ()) -> list[Pair]:
        """The chosen fake of each query (one row per real face); with ``unique``, among the fakes
        not reserved by other faces than ``keys`` (the faces being paired)."""
        if len(queries) == 0:
            return []
        if not unique:
            similarities, indices = self.search(queries, 1)
            return self._with_cosines(queries, [Pair(int(i), float(s)) for s, i in zip(similarities[:, 0], indices[:, 0])])
        wanted = set(keys)
        return self._with_cosines(queries, self._pair_unique(queries, {fake for fake, key in self.holders.items() if key not in wanted}))

    def _pair_unique(self, queries: np.ndarray, used: set[int]) -> list[Pair]:
        count = len(queries)
        if len(used) + count > self.size:
            raise PairingError(
                f"unique pairs: the fake bank has {self.size} faces, {len(used)} already used, "
                f"and {count} more are needed; raise bank_size"
            )
        similarities, indices = self.search(queries, len(used) + count)
        rows = np.repeat(np.arange(count), indices.shape[1])
        fakes, sims = indices.reshape(-1), similarities.reshape(-1)
        keep = (fakes >= 0) & ~np.isin(fakes, np.fromiter(used, dtype=np.int64, count=len(used)))
        rows, fakes, sims = rows[keep], fakes[keep], sims[keep]
        order = np.lexsort((fakes, rows, -sims))  # best similarity first, then face, then fake
        chosen: dict[int, Pair] = {}
        taken: set[int] = set()
        for position in order:
            row, fake = int(rows[position]), int(fakes[position])
            if row in chosen or fake in taken:
                continue
            chosen[row] = Pair(fake, float(sims[position]))
            taken.add(fake)
            if len(chosen) == count:
                break
        return [chosen[row] for row in range(count)]
