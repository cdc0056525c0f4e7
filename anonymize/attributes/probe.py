"""The ``probe`` source: one logistic-regression head per attribute on FaRL image features.

Features: FaRL's projected, L2-normalised CLS embedding of the aligned crop (the image tower the
FALCO method and the audit already load, :func:`~anonymize.models.registry.load_farl_model`).
``anonymize attributes fit DIR --labels FILE`` fits one scikit-learn ``LogisticRegression`` per
attribute that has both classes among the labelled faces and saves the heads as plain arrays (an
``.npz`` read with ``allow_pickle=False``: no code can hide in it): ``names`` [A] (unicode),
``coef`` [A, D] and ``intercept`` [A] (float32), ``farl_sha256`` (the FaRL file the features came
from), ``positives`` / ``labelled`` [A] (the training counts). The source refuses heads fitted on
another FaRL file, since their features would mean something else.

Options: ``heads=FILE`` (default: ``attribute_heads.npz`` in the weights folder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.errors import AnonymizeError
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

DEFAULT_HEADS_NAME = "attribute_heads.npz"
FARL_ARTEFACT = "farl_ep64"
FEATURE_BATCH = 32


class ProbeError(AnonymizeError, ValueError):
    """Heads that cannot be fitted, read or used (one line, naming the file)."""


@dataclass(frozen=True)
class ProbeHeads:
    """Logistic heads, one per attribute, on features of one FaRL file."""

    names: tuple[str, ...]
    coef: np.ndarray  # [A, D] float32
    intercept: np.ndarray  # [A] float32
    farl_sha256: str
    positives: np.ndarray  # [A] int64: labelled faces with the attribute
    labelled: np.ndarray  # [A] int64: faces with a label for it

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """[N, A] probabilities: the logistic of each head's score."""
        if features.shape[1] != self.coef.shape[1]:
            raise ProbeError(f"heads take {self.coef.shape[1]} features, FaRL gives {features.shape[1]}")
        scores = np.asarray(features, np.float64) @ self.coef.T.astype(np.float64) + self.intercept.astype(np.float64)
        return (1.0 / (1.0 + np.exp(-scores))).astype(np.float32)


def farl_features(faces: Sequence[FaceCrop], weights: WeightsStore, device: str = "cpu") -> np.ndarray:
    """[N, D] FaRL CLS embeddings (L2-normalised) of the aligned crops."""
    import torch

    from anonymize.models.images import CanonicalImages
    from anonymize.models.registry import load_farl_model

    model = load_farl_model(weights, device)
    out: np.ndarray | None = None
    by_size: dict[tuple[int, ...], list[int]] = {}  # crops of one size share batches (FaRL resizes each batch)
    for index, face in enumerate(faces):
        by_size.setdefault(face.image.shape, []).append(index)
    with torch.no_grad():
        for indices in by_size.values():
            for start in range(0, len(indices), FEATURE_BATCH):
                chunk = indices[start:start + FEATURE_BATCH]
                batch = np.stack([faces[index].image for index in chunk])
                features = model(CanonicalImages.from_uint8(batch, device)).cls.float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(faces), features.shape[1]), np.float32)
                out[chunk] = features
    return out if out is not None else np.zeros((0, 0), np.float32)


def fit_heads(features: np.ndarray, labels: AttributeTable, farl_sha256: str, c: float = 1.0) -> ProbeHeads:
    """One logistic regression per attribute that has both classes among the faces labelled for it."""
    from sklearn.linear_model import LogisticRegression

    names, coefs, intercepts, positives, labelled = [], [], [], [], []
    for column, name in enumerate(labels.names):
        values = labels.probabilities[:, column]
        known = ~np.isnan(values)
        targets = values[known] >= 0.5
        if known.sum() < 2 or targets.all() or not targets.any():
            continue  # one class only: nothing to learn, the attribute stays unknown
        model = LogisticRegression(C=c, max_iter=1000).fit(features[known], targets)
        names.append(name)
        coefs.append(model.coef_[0])
        intercepts.append(model.intercept_[0])
        positives.append(int(targets.sum()))
        labelled.append(int(known.sum()))
    if not names:
        raise ProbeError(f"no attribute has both classes among the {len(labels.keys)} labelled faces: nothing to fit")
    return ProbeHeads(tuple(names), np.asarray(coefs, np.float32), np.asarray(intercepts, np.float32), farl_sha256,
                      np.asarray(positives, np.int64), np.asarray(labelled, np.int64))


def save_heads(path: Path, heads: ProbeHeads) -> None:
    """Plain arrays only, written atomically."""
    import io

    from anonymize.io.write import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(heads.names, dtype=str), coef=heads.coef, intercept=heads.intercept,
             farl_sha256=np.array(heads.farl_sha256, dtype=str), positives=heads.positives, labelled=heads.labelled)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_heads(path: Path) -> ProbeHeads:
    """Heads saved by :func:`save_heads` (``allow_pickle=False``: an object array is refused, not run)."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no attribute heads here; fit them with `anonymize attributes fit DIR --labels FILE --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as data:
            heads = ProbeHeads(tuple(str(name) for name in data["names"]), data["coef"].astype(np.float32),
                               data["intercept"].astype(np.float32), str(data["farl_sha256"]),
                               data["positives"].astype(np.int64), data["labelled"].astype(np.int64))
    except (ValueError, KeyError, OSError) as exc:
        raise ProbeError(f"{path}: not attribute heads ({' '.join(str(exc).split())})") from None
    unknown = [name for name in heads.names if name not in CELEBA_ATTRIBUTES]
    if unknown or heads.coef.shape != (len(heads.names), heads.coef.shape[1]) or heads.intercept.shape != (len(heads.names),):
        raise ProbeError(f"{path}: not attribute heads (unknown names {unknown} or arrays of the wrong shape)")
    return heads


class ProbeSource:
    """CelebA attributes from logistic heads on FaRL features (fitted by ``anonymize attributes fit``)."""

    name = "probe"
    heuristic = False

    def __init__(self, weights: WeightsStore, device: str = "cpu", options: Mapping[str, str] | None = None) -> None:
        options = dict(options or {})
        path = Path(options.pop("heads", "") or weights.root / DEFAULT_HEADS_NAME)
        if options:
            raise ProbeError(f"attribute source probe: unknown option(s) {', '.join(sorted(options))} (known: heads)")
        self.heads = load_heads(path)
        self.weights, self.device = weights, device
        farl = weights.sha256(FARL_ARTEFACT)
        if farl != self.heads.farl_sha256:
            raise ProbeError(f"{path}: heads were fitted on FaRL {self.heads.farl_sha256[:12]}, "
                             f"this weights folder holds {(farl or 'none')[:12]}: fit them again")

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        values = np.full((len(faces), len(CELEBA_ATTRIBUTES)), np.nan, dtype=np.float32)
        if faces:
            columns = [CELEBA_ATTRIBUTES.index(name) for name in self.heads.names]
            values[:, columns] = self.heads.probabilities(farl_features(faces, self.weights, self.device))
        return AttributeTable(tuple(face.key for face in faces), CELEBA_ATTRIBUTES, values, self.name, self.heuristic)
