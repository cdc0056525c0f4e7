"""k / l / t of hand-made attribute tables, against values computed by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anonymize.attributes.privacy import (
    class_size_histogram, distinct_l, emd_ordered, entropy_l, equivalence_classes, joint_t_closeness, k_anonymity,
    privacy_report, share_below_k, t_closeness,
)

# Quasi-identifiers (Male, Eyeglasses) and the sensitive Smiling of eight faces; -1: unknown.
QI = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, -1], [1, 0]])
SMILING = np.array([1, 0, 1, 1, 1, 0, 1, -1])
# Classes in first-seen order: (1,0) = faces 0,1,2,7; (0,1) = 3,4; (0,0) = 5; (1,-1) = 6 (unknown is its own value).


def test_classes_k_histogram_and_share_below_k():
    classes = equivalence_classes(QI)
    assert classes.labels.tolist() == [0, 0, 0, 1, 1, 2, 3, 0]
    assert classes.patterns.tolist() == [[1, 0], [0, 1], [0, 0], [1, -1]]
    assert k_anonymity(classes) == 1
    assert class_size_histogram(classes) == {1: 2, 2: 1, 4: 1}
    assert share_below_k(classes, 3) == pytest.approx(4 / 8)  # faces 3, 4, 5, 6
    assert share_below_k(classes, 2) == pytest.approx(2 / 8)  # faces 5 and 6 are unique
    assert k_anonymity(equivalence_classes(QI[:, :1])) == 3  # Male alone: 3 women (faces 3-5), 5 men


def test_distinct_and_entropy_l_leave_unknown_values_out():
    classes = equivalence_classes(QI)
    # (1,0) knows Smiling 1, 0, 1 (face 7 unknown): 2 values; every other class 1 value.
    assert distinct_l(classes, SMILING) == 1
    assert entropy_l(classes, SMILING) == pytest.approx(1.0)  # exp(0): a class with one value
    two = equivalence_classes(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]))
    sensitive = np.array([0, 1, 0, 1, 0, 0, 1, 2, 2, 2])
    # class 0: {0: 2, 1: 2} -> H = ln 2, entropy-l 2; class 1: {0: 2, 1: 1, 2: 3} -> H = 1.0114, entropy-l 2.749.
    assert distinct_l(two, sensitive) == 2
    assert entropy_l(two, sensitive) == pytest.approx(2.0)
    only_second = equivalence_classes(np.ones(6, int))
    expected = math.exp(-(2 / 6 * math.log(2 / 6) + 1 / 6 * math.log(1 / 6) + 3 / 6 * math.log(3 / 6)))
    assert entropy_l(only_second, sensitive[4:]) == pytest.approx(expected)
    assert distinct_l(equivalence_classes(np.array([0, 1])), np.array([1, -1])) == 0  # a class knows nothing


def test_binary_t_is_the_largest_share_difference():
    classes = equivalence_classes(QI)
    # The whole set knows 7 values, 5 of them 1: q = 5/7. Classes: 2/3, 1, 0, 1.
    result = t_closeness(classes, SMILING)
    assert result.distances.tolist() == pytest.approx([1 / 21, 2 / 7, 5 / 7, 2 / 7])
    assert result.t == pytest.approx(5 / 7) and result.worst_class == 2
    against_none_smiling = t_closeness(classes, SMILING, reference=np.zeros(4, int))  # q = 0
    assert against_none_smiling.t == pytest.approx(1.0) and against_none_smiling.worst_class == 1


def test_ordered_emd_is_li_et_al_salary_example():
    # Li et al. 2007: salaries 3k..11k, a class {3k, 4k, 5k} against all nine: EMD 0.375.
    class_shares = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0]) / 3
    assert emd_ordered(class_shares, np.full(9, 1 / 9)) == pytest.approx(0.375)
    # ... and {6k, 8k, 11k}: cumulative differences -1/9, -2/9, -3/9, 0, -1/9, 1/9, 0, 1/9, 0 -> 1/6.
    spread = np.array([0, 0, 0, 1, 0, 1, 0, 0, 1]) / 3
    assert emd_ordered(spread, np.full(9, 1 / 9)) == pytest.approx(1 / 6)
    salaries = np.array([0, 1, 2, 3, 5, 8, 4, 6, 7])
    classes = equivalence_classes(np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    assert t_closeness(classes, salaries, levels=9).t == pytest.approx(0.375)


def test_joint_t_is_the_total_variation_of_value_combinations():
    classes = equivalence_classes(np.array([0, 0, 0, 1]))
    smiling_young = np.array([[1, 1], [0, 0], [1, 0], [1, 1]])
    # Whole set: (1,1) 1/2, (0,0) 1/4, (1,0) 1/4. Class 0: 1/3 each -> 1/2 (1/6 + 1/12 + 1/12) = 1/6.
    # Class 1: (1,1) alone -> 1/2 (1/2 + 1/4 + 1/4) = 1/2.
    joint = joint_t_closeness(classes, smiling_young)
    assert joint.distances.tolist() == pytest.approx([1 / 6, 1 / 2])
    assert joint.t == pytest.approx(0.5)
    report = privacy_report(np.array([[0], [0], [0], [1]]), smiling_young, ("Male",), ("Smiling", "Young"), requested_k=2)
    assert report.k == 1 and report.below_k == pytest.approx(0.25) and report.unique_share == pytest.approx(0.25)
    assert report.t == pytest.approx({"Smiling": 0.25, "Young": 0.5, "joint": 0.5})  # 1 - 3/4; 1 - 1/2
    assert report.distinct_l == 1  # face 3's class holds one combination


def test_bad_codes_are_refused():
    with pytest.raises(ValueError, match="codes must be -1"):
        equivalence_classes(np.array([[0, -2]]))
    with pytest.raises(ValueError, match="2 levels"):
        t_closeness(equivalence_classes(np.array([0, 0])), np.array([0, 2]))
