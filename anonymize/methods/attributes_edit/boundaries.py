"""Attribute directions in StyleGAN2's W space: InterFaceGAN boundaries fitted on the fake bank, or files.

InterFaceGAN (Shen et al.) finds that a binary attribute is separated in W by a hyperplane; its unit
normal ``n`` is the edit direction (``w + s n`` adds the attribute for s > 0). The boundary of each
attribute is fitted here on the fake bank (:mod:`anonymize.methods.latent.bank`): its W codes, labelled
by the zero-shot source on the FaRL CLS features the bank already stores (no rendering again). As in
InterFaceGAN, only the clearest examples are used: the ``fraction`` (2%) of fakes with the highest
score are positives, the same number with the lowest negatives, and a linear SVM (or logistic
regression) separates them; the normal is its weight vector, normalised, pointing to the positives.

Conditional editing (InterFaceGAN's ``project_boundary``): to change one attribute and leave others
alone, the components of its normal along the others' normals are removed (the projection onto the
orthogonal complement of their span), and the result normalised. Moving along it changes no
conditioned attribute's signed distance to its hyperplane.

The fitted normals are cached as a plain ``.npz`` (no pickle) beside the bank, named by a key made of
the bank's file name, FaRL's sha256, the attribute list, the fraction and the classifier; an unreadable
or mismatching file is ignored and refitted.

User directions: ``.pt`` tensors (e.g. e4e's InterFaceGAN directions) read with ``weights_only=True``, or
``.npy`` read without pickle, of shape ``[w_dim]`` (every layer) or ``[num_ws, w_dim]``. They are used as
given (not normalised: their scale is the file author's).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from anonymize.io.write import atomic_write_bytes

DEFAULT_FRACTION = 0.02
# A small bank's 2% can be one fake per side: the "boundary" is then the line through two codes, and two
# attributes whose extremes are the same two fakes get the same normal. At least this many per side.
MIN_PER_SIDE = 5
CLASSIFIERS = ("svm", "logreg")
BOUNDARY_FORMAT = 1


class DirectionError(ValueError):
    """A direction that cannot be fitted or read (too few examples, a bad file)."""


def fit_boundary(codes: np.ndarray, scores: np.ndarray, fraction: float = DEFAULT_FRACTION,
                 classifier: str = "svm") -> np.ndarray:
    """The unit normal [D] of the hyperplane separating the top from the bottom ``fraction`` of ``scores``.

    At least MIN_PER_SIDE examples per side (fewer when the bank is smaller than twice that); the
    normal points toward high scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    codes, scores = np.asarray(codes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if codes.ndim != 2 or scores.shape != (len(codes),):
        raise DirectionError(f"boundary: expected codes [N, D] and scores [N], got {codes.shape} and {scores.shape}")
    if classifier not in CLASSIFIERS:
        raise DirectionError(f"boundary: classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    count = max(min(MIN_PER_SIDE, len(codes) // 2), 1, math.ceil(fraction * len(codes)))
    if 2 * count > len(codes):
        raise DirectionError(f"boundary: {len(codes)} codes cannot give {count} positives and {count} negatives")
    order = np.argsort(scores, kind="stable")
    negatives, positives = order[:count], order[-count:]
    if scores[positives].min() <= scores[negatives].max():
        raise DirectionError("boundary: the top and bottom scores do not differ; the attribute does not vary in the bank")
    x = np.concatenate([codes[positives], codes[negatives]])
    y = np.concatenate([np.ones(count), np.zeros(count)])
    model = LinearSVC(C=1.0, max_iter=10_000) if classifier == "svm" else LogisticRegression(max_iter=10_000)
    normal = model.fit(x, y).coef_.reshape(-1)
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm == 0:
        raise DirectionError("boundary: the classifier found no direction")
    return (normal / norm).astype(np.float32)


def conditional_direction(primary: np.ndarray, conditions: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """``primary`` [D] with its components along every conditioned normal ([K, D]) removed, unit length."""
    primary = np.asarray(primary, dtype=np.float64)
    conditions = np.asarray(conditions, dtype=np.float64).reshape(-1, primary.shape[0])
    if len(conditions):
        basis, _ = np.linalg.qr(conditions.T)  # orthonormal basis of their span, [D, K]
        primary = primary - basis @ (basis.T @ primary)
    norm = np.linalg.norm(primary)
    if norm < 1e-6:
        raise DirectionError("conditional direction: the normal lies in the span of the conditioned normals")
    return (primary / norm).astype(np.float32)


def boundary_cache_key(bank_filename: str, farl_sha256: str, names: Sequence[str], fraction: float, classifier: str) -> str:
    text = json.dumps({"bank": bank_filename, "farl": farl_sha256, "names": list(names), "fraction": fraction,
                       "classifier": classifier, "format": BOUNDARY_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def boundary_cache_path(bank_path: Path, key: str) -> Path:
    """Beside the bank: ``<bank stem>.boundaries-<key>.npz``."""
    return bank_path.with_name(f"{bank_path.stem}.boundaries-{key}.npz")


def read_boundaries(path: Path, key: str, names: Sequence[str]) -> np.ndarray | None:
    """The cached normals [A, D], or None when the file is absent, unreadable or another key's."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key, stored_names, normals = str(data["key"]), [str(n) for n in data["names"]], data["normals"]
    except (OSError, ValueError, KeyError):
        return None
    if stored_key != key or stored_names != list(names) or normals.ndim != 2 or len(normals) != len(names):
        return None
    return normals.astype(np.float32)


def write_boundaries(path: Path, key: str, names: Sequence[str], normals: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), names=np.asarray(list(names), dtype=str), normals=normals.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def load_or_fit_boundaries(bank_path: Path, farl_sha256: str, codes: np.ndarray, scores: np.ndarray,
                           names: Sequence[str], fraction: float = DEFAULT_FRACTION,
                           classifier: str = "svm") -> tuple[np.ndarray, bool]:
    """Unit normals [A, D] for ``names`` (scores [N, A], columns in that order); (normals, whether fitted now)."""
    key = boundary_cache_key(bank_path.name, farl_sha256, names, fraction, classifier)
    path = boundary_cache_path(bank_path, key)
    cached = read_boundaries(path, key, names)
    if cached is not None:
        return cached, False
    normals = np.stack([fit_boundary(codes, scores[:, i], fraction, classifier) for i in range(len(names))])
    write_boundaries(path, key, names, normals)
    return normals, True


def load_direction_file(path: Path, num_ws: int, w_dim: int) -> np.ndarray:
    """A user direction as [num_ws, w_dim] float32 (a [w_dim] vector is repeated on every layer)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".pt":
            tensor = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(tensor, torch.Tensor):
                raise DirectionError(f"{path}: holds a {type(tensor).__name__}, not a tensor")
            array = tensor.detach().float().numpy()
        else:
            raise DirectionError(f"{path}: a direction file must be .pt or .npy")
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, DirectionError):
            raise
        raise DirectionError(f"{path}: cannot read a direction ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]  # InterFaceGAN saves boundaries as [1, w_dim]
    if array.shape == (w_dim,):
        array = np.repeat(array[None], num_ws, axis=0)
    if array.shape != (num_ws, w_dim):
        raise DirectionError(f"{path}: direction of shape {array.shape}; expected [{w_dim}] or [{num_ws}, {w_dim}]")
    if not np.isfinite(array).all():
        raise DirectionError(f"{path}: the direction holds NaN or infinite values")
    return array
