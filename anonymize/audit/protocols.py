"""The papers' re-identification protocols, on descriptors of original and anonymized faces.

* verification at a recogniser's threshold (FALCO Tables 1-2, "face re-ID" with FaceNet CASIA-WebFace
  and VGGFace2: the share of images whose identity is still recognised): an anonymized face "is" its
  original when their distance is under the recogniser's own same-person threshold (dlib 0.6, FaceNet 1.1);
* TPR at a fixed FAR (CFA-Net Table 1, after Gafni et al. 2019; FALCO reports no TPR at a FAR): the
  LFW pairs-file form, 10 folds and mean +- std, is :mod:`anonymize.audit.lfw_pairs`; here, on any
  labelled folder, the threshold is set on the originals, as
  the distance below which only FAR of the different-person pairs fall; TPR is the share of
  (anonymized, own original) pairs under it. The threshold is the k-th smallest different-person
  distance, k = floor(FAR x pairs), so the realised FAR never exceeds the nominal one; with fewer
  than 1 / FAR pairs the figure is marked as not resolved;
* rank of the true identity (CFA-Net Table 2): each anonymized face is ranked against the gallery
  of every original face; its rank is 1 + the number of gallery faces of other people closer than
  the nearest face of its own person (its own original included); rank-1 rate and mean rank;
* "parrot" re-identification (Newton et al. 2005): the gallery is anonymized by the same method;
  each anonymized face, left out of the gallery, is identified by its nearest other anonymized
  face; needs identity labels, since only other photos of the same person can be found.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymize.audit.reid import pairwise_distances
from anonymize.audit.summary import ParrotResult, TprAtFar  # the protocols' results, as the summary records them

FARS = (0.001, 0.01, 0.1)


def different_person_distances(descriptors: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Distances of every pair of original faces with different identity labels."""
    labels_array = np.asarray(labels, dtype=object)
    upper = np.triu_indices(len(labels_array), 1)
    different = (labels_array[:, None] != labels_array[None, :])[upper]
    return pairwise_distances(descriptors, descriptors)[upper][different]


def tpr_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> TprAtFar:
    """TPR of ``genuine`` distances at the threshold where ``impostor`` distances reach ``far`` (see module doc)."""
    impostor = np.sort(np.asarray(impostor, np.float64))
    genuine = np.asarray(genuine, np.float64)
    if len(impostor) == 0 or len(genuine) == 0:
        return TprAtFar(far, None, None, None, False)
    k = min(int(np.floor(far * len(impostor) + 1e-9)), len(impostor) - 1)  # 1e-9: 0.3 x 10 is 3, not 2.99..
    threshold = float(impostor[k])
    return TprAtFar(far, threshold, float((genuine < threshold).mean()), float((impostor < threshold).mean()),
                    len(impostor) * far >= 1.0)


def true_identity_ranks(probes: np.ndarray, gallery: np.ndarray, own: Sequence[int],
                        labels: Sequence[str | None] | None = None) -> np.ndarray:
    """1-based rank of each probe's true identity in the gallery (see module doc)."""
    if len(probes) == 0:
        return np.zeros(0, int)
    distances = pairwise_distances(probes, gallery)
    if labels is None:
        keys = np.arange(len(gallery))
    else:
        keys = np.array([label if label is not None else f"\0{i}" for i, label in enumerate(labels)], dtype=object)
    ranks = []
    for probe, own_index in enumerate(own):
        same = keys == keys[own_index]
        nearest_same = distances[probe, same].min()
        ranks.append(1 + int((distances[probe, ~same] < nearest_same).sum()))
    return np.asarray(ranks, int)


def parrot_identification(anonymized: np.ndarray, labels: Sequence[str]) -> ParrotResult:
    """Leave-one-out identification among anonymized faces of labelled people (see module doc)."""
    labels_array = np.asarray(labels, dtype=object)
    distances = pairwise_distances(anonymized, anonymized) if len(anonymized) else np.zeros((0, 0))
    ranks, chances = [], []
    for probe in range(len(labels_array)):
        others = np.arange(len(labels_array)) != probe
        same = (labels_array == labels_array[probe]) & others
        if not same.any():
            continue
        different = (labels_array != labels_array[probe])
        ranks.append(1 + int((distances[probe, different] < distances[probe, same].min()).sum()))
        chances.append(float(same.sum() / others.sum()))
    if not ranks:
        return ParrotResult(0, None, None, None)
    ranks_array = np.asarray(ranks)
    return ParrotResult(len(ranks), float((ranks_array == 1).mean()), float(ranks_array.mean()), float(np.mean(chances)))
