"""Table-level privacy figures: k / l / t before and after each stage II step, agreement and unique vectors."""

from __future__ import annotations

import numpy as np
import pytest

from anonymize.attributes.measure import attribute_agreement, measure_table, privacy_steps, unique_vector_share
from anonymize.attributes.table import AttributeTable

NAMES = ("Male", "Eyeglasses", "Young", "Smiling")
# The six faces of tests/test_attribute_selection.py: QIs Male, Eyeglasses, Young; Smiling sensitive.
BITS = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1]])


def table(bits: np.ndarray = BITS, source: str = "labels") -> AttributeTable:
    probabilities = np.where(bits == 1, 0.9, 0.2).astype(np.float32)
    probabilities[bits < 0] = np.nan
    return AttributeTable(tuple(f"{i}.jpg#0" for i in range(len(bits))), NAMES, probabilities, source)


def test_measure_table_reads_the_named_columns():
    report = measure_table(table(), ("Male", "Eyeglasses", "Young"), ("Smiling",), requested_k=2)
    # Classes 110 (2 faces: Smiling 1, 1), 111, 000, 001, 011: k 1, four unique faces.
    assert (report.k, report.classes, report.unique_share, report.below_k) == (1, 5, pytest.approx(4 / 6), pytest.approx(4 / 6))
    assert report.distinct_l == 1
    assert report.t == {"Smiling": pytest.approx(2 / 3)}  # a class with Smiling 0 against the whole set's 4/6
    nobody_smiles = table(np.zeros((3, 4), int))  # a reference population: t is measured against its 0 %
    against = measure_table(table(), ("Male", "Eyeglasses", "Young"), ("Smiling",), reference=nobody_smiles)
    assert against.t == {"Smiling": pytest.approx(1.0)}  # class 110 smiles throughout
    with pytest.raises(ValueError, match="both quasi-identifier and sensitive: Male"):
        measure_table(table(), ("Male",), ("Male",))
    with pytest.raises(KeyError, match="Beard"):
        measure_table(table(), ("Beard",))


def test_privacy_steps_report_before_and_after_each_step():
    steps, released = privacy_steps(table(), ("Male", "Eyeglasses", "Young"), ("Smiling",), k=2, l=2, epsilon=2.0, seed=1)
    assert [step["step"] for step in steps] == ["before", "k-member", "randomized-response"]
    before, recoded = steps[0], steps[1]
    assert before["k"] == 1 and recoded["k"] == 2 and recoded["distinct_l"] == 2
    assert recoded["flips"] == 4 and recoded["flip_share"] == pytest.approx(4 / 18)  # as in test_attribute_selection
    assert released.shape == (6, 3)
    literal = privacy_steps(table(), ("Male",), (), t=0.5, reading="literal")[0][1]
    assert literal["step"] == "algorithm-1 literal" and literal["flips"] == 0  # Male is half present: both values lie 0.5 away
    closeness = privacy_steps(table(), ("Male",), (), t=0.5)[0][1]  # the default reading; one QI: the class is the whole set
    assert closeness["step"] == "algorithm-1 closeness" and closeness["flips"] == 0 and closeness["marginals"] == {"Male": 0.5}
    with pytest.raises(ValueError, match="give k too"):
        privacy_steps(table(), ("Male",), ("Smiling",), l=2)


def test_agreement_and_unique_vectors():
    output_bits = BITS.copy()
    output_bits[:3, 0] = 0  # three men became women
    output_bits[0, 1] = -1  # the source says nothing about face 0's glasses in the output
    agreement = attribute_agreement(table(), table(output_bits))
    assert agreement == {"Male": pytest.approx(0.5), "Eyeglasses": pytest.approx(1.0), "Young": 1.0, "Smiling": 1.0}
    # Full vectors: faces 0 and 1 share 1101; the other four are unique.
    assert unique_vector_share(table()) == pytest.approx(4 / 6)
    assert unique_vector_share(table(), ["Male"]) == 0.0
