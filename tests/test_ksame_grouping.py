"""k-Same's groups, on embeddings small enough to group by hand (Newton et al. 2005, Fig. 3)."""

from __future__ import annotations

import numpy as np
import pytest

from anonymize.methods.ksame.grouping import k_same_groups


def line(*positions: float) -> np.ndarray:
    """Faces as points on a line: the distance between two faces is the gap between their positions."""
    return np.array([[p, 0.0] for p in positions], dtype=np.float32)


def test_the_probe_takes_its_nearest_and_the_last_group_takes_the_rest():
    # probe 0 takes 1 and 2; four faces are left, fewer than 2k = 6, so one last group of four
    grouping = k_same_groups(line(0, 1, 2, 10, 11, 12, 20), persons=range(7), k=3)
    assert grouping.groups == [[0, 1, 2], [3, 4, 5, 6]] and not grouping.unplaced


def test_the_probe_is_the_first_face_left_and_neighbours_come_by_distance_not_by_order():
    # probe 0 (at 5): nearest are 3 (at 5.5) and 1 (at 7); then probe 2 (at 0) with 4 (at 1) and 5 (at 30)
    grouping = k_same_groups(line(5, 7, 0, 5.5, 1, 30, 9), persons=range(7), k=2)
    assert grouping.groups == [[0, 3], [1, 6], [2, 4, 5]]


def test_two_photos_of_one_person_never_share_a_group():
    # persons A A B B C: probe 0 skips its twin at 0.1 and takes B at 5; the last three are A, B, C
    grouping = k_same_groups(line(0, 0.1, 5, 5.1, 10), persons=[0, 0, 1, 1, 2], k=2)
    assert grouping.groups == [[0, 2], [1, 3, 4]] and not grouping.unplaced


def test_leftovers_of_one_person_join_an_earlier_group_without_them_or_stay_unplaced():
    # A B C C, k=2: {0, 1} first; C C show one person, so each looks for a group without C with room
    # (at most 2k-1 = 3 members): the first joins {0, 1}, the second finds none
    grouping = k_same_groups(line(0, 1, 2, 3), persons=[0, 1, 2, 2], k=2)
    assert grouping.groups == [[0, 1, 2]]
    assert list(grouping.unplaced) == [3]
    assert "this person has 2 faces but the faces make only 1 k-Same group of k=2" in grouping.unplaced[3]


def test_an_unplaced_cause_is_worded_the_same_for_every_face_it_applies_to():
    # the run prints a repeated cause once with its count: the words must not name the face
    persons = [0, 1, 2, 3, 4, 4, 4, 4]  # E has four photos and the faces make two groups: two of E's fit nowhere
    grouping = k_same_groups(line(0, 1, 2, 3, 10, 11, 12, 13), persons=persons, k=2)
    causes = set(grouping.unplaced.values())
    assert sorted(grouping.unplaced) == [6, 7] and len(causes) == 1
    assert "this person has 4 faces but the faces make only 2 k-Same groups" in causes.pop()
    assert all(len({persons[face] for face in group}) == len(group) for group in grouping.groups)


def test_fewer_people_than_k_leaves_every_face_unplaced():
    grouping = k_same_groups(line(0, 1, 2), persons=[0, 0, 1], k=3)
    assert grouping.groups == [] and sorted(grouping.unplaced) == [0, 1, 2]
    assert "show 2 people, fewer than k=3" in grouping.unplaced[0]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_face_is_in_one_group_of_k_to_2k_minus_1_distinct_people(k):
    rng = np.random.default_rng(k)
    embeddings = rng.normal(size=(53, 8))
    persons = np.arange(53) // 3  # 18 people, three photos each but the last
    grouping = k_same_groups(embeddings, persons, k)
    members = sorted(face for group in grouping.groups for face in group)
    assert members == list(range(53)) and not grouping.unplaced
    assert all(k <= len(group) <= 2 * k - 1 for group in grouping.groups)
    assert all(len({persons[face] for face in group}) == len(group) for group in grouping.groups)
