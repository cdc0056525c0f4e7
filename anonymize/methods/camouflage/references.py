"""Where a camouflaged face's appearance comes from: a fake of the bank, or a folder of real faces.

The default is the fake bank, so no real person's appearance is moved onto another; ``reference=DIR``
takes aligned real faces instead (each image one reference, read as CFA's gallery is:
:mod:`anonymize.methods.latent.references`). A reference brings its W+ code (the bank's W on every layer, or the e4e inversion of
the real face), its FaRL CLS feature (for choosing it) and its appearance target (pooled FaRL tokens
of the rendered fake, or of the real image itself).

Choosing (``select``), K references per face, in order of preference:

* ``random``: K distinct references drawn from a generator seeded by (run seed, face key), as the
  paper pairs a source with a randomly drawn target;
* ``nearest`` / ``farthest``: the K references whose FaRL CLS feature is most / least similar to the
  source's (cosine, exact faiss search as FALCO's pairing; farthest searches with the negated query);
* ``fixed``: reference ``reference_index`` for every face (and the next ones for K > 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from anonymize.methods.latent.pairing import FakePairer

SELECTIONS = ("random", "nearest", "farthest", "fixed")
def face_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"camouflage:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass
class ReferenceSet:
    """The references of a run: codes, CLS features and (lazily) appearance targets."""

    kind: str  # "bank" or "folder"
    ws: np.ndarray  # [R, w_dim] (bank: one W per fake) or [R, num_ws, w_dim] (folder: e4e inversions)
    features: np.ndarray  # [R, E] FaRL CLS features
    labels: list[str]  # what the manifest records per reference: "bank" or "folder:<relative path>"
    appearance: dict[int, torch.Tensor] = field(default_factory=dict)  # index -> pooled FaRL tokens [C * 4]
    use_gpu: bool = False

    def __post_init__(self) -> None:
        self.pairer = FakePairer(self.features, use_gpu=self.use_gpu)

    def __len__(self) -> int:
        return len(self.ws)

    def codes(self, indices: Sequence[int], num_ws: int, device: torch.device) -> torch.Tensor:
        """W+ codes [N, num_ws, w_dim] of the given references."""
        codes = torch.from_numpy(np.ascontiguousarray(self.ws[list(indices)])).to(device).float()
        return codes.unsqueeze(1).repeat(1, num_ws, 1) if codes.ndim == 2 else codes

    def select(self, queries: np.ndarray, keys: Sequence[str], how: str, count: int, seed: int, fixed_index: int) -> np.ndarray:
        """[B, count] reference indices for B faces (CLS features ``queries``), best first (see module doc)."""
        size = len(self)
        if count > size:
            raise ValueError(f"{count} references per face wanted but only {size} are available")
        if how == "fixed":
            return np.tile((fixed_index + np.arange(count)) % size, (len(keys), 1))
        if how == "random":
            return np.stack([np.random.default_rng(face_seed(seed, key)).choice(size, count, replace=False) for key in keys])
        signed = queries if how == "nearest" else -queries
        _, indices = self.pairer.search(np.asarray(signed, dtype=np.float32), count)
        return indices.astype(np.int64)
