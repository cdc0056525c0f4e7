"""Where k-Same averages a group: the aligned crops' pixels, their PCA coefficients, or e4e W+ codes.

Each space has two halves: what the survey keeps per face (a crop, or a W+ code), spooled to a
file rather than held in memory, and how a group's kept rows become the one face every member
gets. Averaging PCA coefficients and reconstructing is the paper's k-Same-Eigen; averaging W+
codes and decoding once with StyleGAN2 is the generative variant (as in k-Same-Net's spirit, with
FALCO's e4e and generator).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from anonymize.models.images import CanonicalImages
from anonymize.weights import WeightsStore

SPACES = ("shapefree", "pixel", "eigen", "latent")  # shapefree: anonymize.methods.ksame.shapefree
EIGEN_FIT_IN_MEMORY = 1000  # faces: above this, the eigenfaces are fitted incrementally (IncrementalPCA)
DECODE_BATCH = 8


class Spool:
    """Rows of one shape appended to a raw file and read back as a memory map (the survey's memory stays flat)."""

    def __init__(self, path: Path, dtype: np.dtype | type) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape: tuple[int, ...] | None = None
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by rows() or remove()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.row_shape is None:
            self.row_shape = tuple(rows.shape[1:])
        elif tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"spooled rows of shape {rows.shape[1:]} after rows of shape {self.row_shape}")
        self._file.write(rows.tobytes())
        self.count += len(rows)

    def rows(self) -> np.ndarray:
        """Every row appended, as a read-only memory map (an empty array when none was)."""
        self._file.flush()
        if self.count == 0 or self.row_shape is None:
            return np.zeros((0,), self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count, *self.row_shape))

    def remove(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def pixel_faces(crops: np.ndarray, groups: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:
    """k-Same-Pixel: each group's face is the pixel-wise mean of its members' aligned crops."""
    for members in groups:
        yield _to_uint8(crops[sorted(members)].astype(np.float64).mean(axis=0))


def eigen_faces(crops: np.ndarray, groups: Sequence[Sequence[int]], components: int) -> Iterator[np.ndarray]:
    """k-Same-Eigen: PCA of the crops (eigenfaces), the mean of a group's coefficients, reconstructed."""
    if len(crops) < 2:  # no face space to speak of: the average is the face itself
        yield from pixel_faces(crops, groups)
        return
    shape = crops.shape[1:]
    pca = _fit_pca(crops, min(components, len(crops)))
    for members in groups:
        flat = crops[sorted(members)].reshape(len(members), -1).astype(np.float32)
        coefficients = pca.transform(flat).mean(axis=0, keepdims=True)
        yield _to_uint8(pca.inverse_transform(coefficients)[0].reshape(shape))


def _fit_pca(crops: np.ndarray, components: int):  # noqa: ANN202 - a fitted sklearn PCA or IncrementalPCA
    from sklearn.decomposition import PCA, IncrementalPCA

    count = len(crops)
    if count <= EIGEN_FIT_IN_MEMORY:
        return PCA(n_components=components, svd_solver="full").fit(crops.reshape(count, -1).astype(np.float32))
    batch = max(components, 256)
    bounds = [*range(0, count, batch), count]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < components:  # every chunk needs `components` rows
        del bounds[-2]
    pca = IncrementalPCA(n_components=components, batch_size=batch)
    for start, end in zip(bounds, bounds[1:]):
        pca.partial_fit(crops[start:end].reshape(end - start, -1).astype(np.float32))
    return pca


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class LatentSpace:
    """k-Same in StyleGAN2's W+: e4e codes of the crops, averaged per group, decoded once (FALCO's networks)."""

    def __init__(self, weights: WeightsStore, device: str) -> None:
        from anonymize.models.registry import load_e4e_pair

        self.device = torch.device(device)
        self.encoder, self.generator = load_e4e_pair(weights, self.device)

    def codes(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """N x num_ws x w_dim W+ codes of aligned crops."""
        with torch.no_grad():
            return self.encoder(CanonicalImages.from_uint8(np.stack(crops), self.device)).float().cpu().numpy()

    def faces(self, codes: np.ndarray, groups: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:
        """Each group's mean code, decoded (noise maps constant, so the same code gives the same face)."""
        for start in range(0, len(groups), DECODE_BATCH):
            chunk = groups[start:start + DECODE_BATCH]
            means = np.stack([codes[sorted(members)].astype(np.float32).mean(axis=0) for members in chunk])
            with torch.no_grad():
                images = self.generator(torch.from_numpy(means).to(self.device), noise_mode="const")
            yield from CanonicalImages.from_generator(images.tensor.float()).to_uint8()


def write_rows(path: Path, rows: Iterator[np.ndarray], count: int, first: np.ndarray | None = None) -> None:
    """Write ``first`` (earlier rows, may be None) then ``count`` new rows to an .npy file, atomically, row by row."""
    iterator = iter(rows)
    head = next(iterator) if count else None
    shape = first.shape[1:] if first is not None and len(first) else (head.shape if head is not None else (0,))
    total = (len(first) if first is not None else 0) + count
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(total, *shape))
    at = 0
    if first is not None and len(first):
        out[:len(first)] = first
        at = len(first)
    if head is not None:
        out[at] = head
        for at, row in enumerate(iterator, start=at + 1):
            out[at] = row
    out.flush()
    del out
    os.replace(temporary, path)
