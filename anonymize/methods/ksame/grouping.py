"""k-Same's choice of groups (Newton, Sweeney and Malin 2005, Fig. 3), with one group per person at most.

The paper's loop: while faces remain, take a probe face (the first one left), put it and its k-1
nearest remaining faces in one group and remove them; when fewer than 2k faces remain, the last
group takes all of them, so every group has between k and 2k-1 members.

What this adds, because the guarantee is about people and not photos: a group never holds two
faces of one person. The probe's neighbours are taken nearest first, skipping people already in
the group. Faces that cannot be grouped so (the faces left show fewer than k people) join the
nearest earlier group that lacks their person and has fewer than 2k-1 members; a face that fits
nowhere (fewer than k people in all, or its person has more faces than there are groups) stays
unplaced, with the reason: the run gives it an error row and exits non-zero, never a weaker group.

Nearest means Euclidean distance between identity embeddings (faiss, exact search); ArcFace
embeddings are L2-normalised by the caller, which makes it the cosine order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass
class Grouping:
    groups: list[list[int]]  # indices into the faces grouped, probe first, then by distance to the probe
    unplaced: dict[int, str] = field(default_factory=dict)  # index -> why the face has no group


def k_same_groups(embeddings: np.ndarray, persons: Sequence[int], k: int) -> Grouping:
    """Groups of ``k`` to ``2k-1`` faces of distinct ``persons`` (one id per face), in the paper's order."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    persons = np.asarray(persons, dtype=np.int64)
    if len(vectors) != len(persons):
        raise ValueError(f"{len(vectors)} embeddings but {len(persons)} person ids")
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    remaining = list(range(len(vectors)))  # kept in input order: the probe is the first face left
    groups: list[list[int]] = []
    while remaining:
        if len({int(persons[i]) for i in remaining}) < k:
            break
        probe = remaining[0]
        wanted = len(remaining) if len(remaining) < 2 * k else k  # the last group takes all that fit
        group = _nearest_distinct_people(index, vectors[probe], persons, wanted, len(remaining))
        groups.append(group)
        index.remove_ids(np.asarray(group, dtype=np.int64))
        taken = set(group)
        remaining = [i for i in remaining if i not in taken]
    return Grouping(groups, _merge_leftovers(remaining, groups, vectors, persons, k))


def _nearest_distinct_people(index: faiss.Index, probe: np.ndarray, persons: np.ndarray, wanted: int,
                             available: int) -> list[int]:
    """Up to ``wanted`` faces nearest ``probe`` (itself first), one per person; searches deeper as needed."""
    depth = min(available, 4 * wanted)
    while True:
        _, ids = index.search(probe[None, :], depth)
        group: list[int] = []
        seen: set[int] = set()
        for face in ids[0]:
            if face < 0:
                continue
            person = int(persons[face])
            if person not in seen:
                seen.add(person)
                group.append(int(face))
                if len(group) == wanted:
                    return group
        if depth >= available:
            return group
        depth = min(available, depth * 2)


def _merge_leftovers(leftovers: list[int], groups: list[list[int]], vectors: np.ndarray, persons: np.ndarray,
                     k: int) -> dict[int, str]:
    """Put each leftover face in the nearest group that lacks its person and has room; the rest: why not."""
    unplaced: dict[int, str] = {}
    if not leftovers:
        return unplaced
    people = len({int(p) for p in persons.tolist()})
    for face in leftovers:
        person = int(persons[face])
        open_groups = [g for g in range(len(groups))
                       if len(groups[g]) < 2 * k - 1 and person not in {int(persons[m]) for m in groups[g]}]
        if not open_groups:
            unplaced[face] = _why_unplaced(person, persons, people, len(groups), k)
            continue
        centres = np.stack([vectors[groups[g]].mean(axis=0) for g in open_groups])
        nearest = open_groups[int(np.argmin(((centres - vectors[face]) ** 2).sum(axis=1)))]
        groups[nearest].append(face)
    return unplaced


def _why_unplaced(person: int, persons: np.ndarray, people: int, groups: int, k: int) -> str:
    """One cause, worded the same for every face it applies to (the run prints a repeated cause once)."""
    if not groups:
        return (f"the faces grouped show {people} {'person' if people == 1 else 'people'}, fewer than k={k}, so no "
                f"group of k distinct people exists (lower -p k, or add photos of other people)")
    photos = int((persons == person).sum())
    return (f"this person has {photos} faces but the faces make only {groups} k-Same "
            f"{'group' if groups == 1 else 'groups'} of k={k} and a group never holds one person twice "
            f"(lower -p k, or add photos of other people)")
