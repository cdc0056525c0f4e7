"""Stage II: Algorithm 1 read literally, the dataset k-member mode and randomised response, on hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anonymize.attributes.ppas import (
    Requirements, SelectionError, closeness_over_others, k_member_recoding, keep_probability, randomized_response, select_attributes_closeness,
    select_attributes_literal,
)
from anonymize.attributes.privacy import distinct_l, equivalence_classes, k_anonymity

# Male, Eyeglasses of four faces: Male present in 3/4, Eyeglasses in 1/4 of the population.
LITERAL = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])


def test_literal_algorithm_flips_values_farther_than_t_from_the_population():
    # t = 0.3: a Male face lies |1 - 0.75| = 0.25 away (kept), a woman 0.75 (flipped); Eyeglasses 0.25 / 0.75.
    selection = select_attributes_literal(LITERAL, 0.3, ("Male", "Eyeglasses"))
    assert selection.codes.tolist() == [[1, 0], [1, 0], [1, 0], [1, 0]]
    assert selection.flips == 2 and selection.changed[1, 1] and selection.changed[2, 0]
    assert select_attributes_literal(LITERAL, 0.8, ("Male", "Eyeglasses")).flips == 0
    # Against a reference population where a quarter are men, the men are now the ones flipped.
    against = select_attributes_literal(LITERAL, 0.3, ("Male", "Eyeglasses"), population=np.array([0.25, 0.25]))
    assert against.codes[:, 0].tolist() == [0, 0, 0, 0]


def test_literal_algorithm_refuses_a_t_that_flips_majority_values():
    # t = 0.2 < 0.25: the majority value of Male (present, 75 %) would be flipped, making faces rarer.
    with pytest.raises(SelectionError, match=r"flips the majority value of Male .*t >= 0.250"):
        select_attributes_literal(LITERAL, 0.2, ("Male", "Eyeglasses"))
    with pytest.raises(SelectionError, match="lies in"):
        select_attributes_literal(LITERAL, 1.5, ("Male", "Eyeglasses"))


# Eight faces, quasi-identifiers A and B, each present in half of them. Over the other attribute (B), the
# class B=0 holds A in 3/4 and the class B=1 in 1/4: both 0.25 from S = 0.5.
CLASSES = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 1], [0, 1], [0, 1], [1, 1]])


def test_algorithm_one_by_default_pulls_each_class_over_the_other_attributes_toward_the_population():
    """By hand, t = 0.2, faces in order, A then B per face:
    face 0, A: its class B=0 has A in 3/4, 0.25 > t from 0.5; flipping its 1 gives 2/4 (closer), marginal of A
    4/8 -> 3/8 (0.125 <= t): flip. Face 0, B: its class A=0 (faces 0, 3, 4, 5, 6) has B in 3/5, 0.1: keep.
    Faces 1-3 find their classes within t. Face 4, A: class B=1 has A in 1/4; its 0 -> 1 gives 2/4 and the
    marginal 3/8 -> 4/8: flip. Every later class lies at 0.5 (or 1/3, 0.17 away): keep. Two flips; marginals 0.5."""
    selection = select_attributes_closeness(CLASSES, 0.2)
    assert np.argwhere(selection.changed).tolist() == [[0, 0], [4, 0]]
    assert selection.codes[:, 0].tolist() == [0, 1, 1, 0, 1, 0, 0, 1] and selection.codes[:, 1].tolist() == CLASSES[:, 1].tolist()
    assert selection.codes.mean(axis=0).tolist() == [0.5, 0.5]
    # Before, every class over the other attribute lay 0.25 from S (B over A: A=1 has B in 1/4, A=0 in 3/4); after, none.
    assert [values.tolist() for values in closeness_over_others(CLASSES, np.array([0.5, 0.5]))] == [[0.25, 0.25], [0.25, 0.25]]
    assert [values.tolist() for values in closeness_over_others(selection.codes, np.array([0.5, 0.5]))] == [[0.0, 0.0], [0.0, 0.0]]
    assert select_attributes_closeness(CLASSES, 0.25).flips == 0  # every class already within t
    # The literal reading cannot even be asked for t < 0.5 here (it would flip a majority value) and keeps all at 0.5.
    with pytest.raises(SelectionError, match="flips the majority value"):
        select_attributes_literal(CLASSES, 0.2, ("A", "B"))
    # Against S = (0.75, 0.5): face 0's A class (3/4) is at S, but its B class A=1 (faces 0 1 2 7) has B in 1/4:
    # its 0 -> 1 (class 2/4, marginal of B 5/8). Face 3's B class A=0 has B in 3/4 but its 0 would only move it
    # away: kept. Face 4's A class B=1 (faces 0 4 5 6 7) has A in 2/5: 0 -> 1 (3/5; A's marginal 4/8 -> 5/8, closer to 0.75).
    toward = select_attributes_closeness(CLASSES, 0.2, population=np.array([0.75, 0.5]))
    assert np.argwhere(toward.changed).tolist() == [[0, 1], [4, 0]]


def test_algorithm_one_by_default_never_takes_a_marginal_farther_than_t_from_the_population():
    """The literal reading erases a 30 % attribute (every face gets its majority value); the default keeps it near 30 %."""
    codes = (np.random.default_rng(3).random((200, 4)) < np.array([0.3, 0.5, 0.2, 0.6])).astype(np.int8)
    codes[::17, 1] = -1  # unknown values stay unknown and count in no share
    shares = np.array([(codes[codes[:, c] >= 0, c] == 1).mean() for c in range(4)])
    for t in (0.05, 0.1, 0.3):
        selection = select_attributes_closeness(codes, t)
        released = np.array([(selection.codes[selection.codes[:, c] >= 0, c] == 1).mean() for c in range(4)])
        assert (np.abs(released - shares) <= t + 1e-9).all()
        assert (selection.codes[codes < 0] == -1).all()
    literal = select_attributes_literal(codes, 0.5, ("a", "b", "c", "d"))
    assert (literal.codes[:, 0] == 0).all()  # the 30 % attribute collapsed to 0 %
    with pytest.raises(SelectionError, match="lies in"):
        select_attributes_closeness(codes, 1.5)


# Six faces, three quasi-identifiers; faces 0 and 1 already form a class of two.
QI = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0], [0, 0, 1], [0, 1, 1]])
SENSITIVE = np.array([1, 1, 0, 1, 0, 1])


def test_dataset_mode_reaches_k_with_few_flips():
    # Faces 2..5 are alone. k-member grouping from face 2 (111): nearest is face 5 (011) -> majority 111
    # (column 0 ties, the population's share is 1/2 so the tie goes to 1): one flip. Next seed, farthest
    # from face 2: face 3 (000) with face 4 (001) -> 001 (tie to 1): one flip. Two flips in all, while
    # moving each lonely face to the class 110 would flip far more.
    result = k_member_recoding(QI, Requirements(k=2))
    assert result.codes.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1], [0, 0, 1], [1, 1, 1]]
    assert result.flips == 2 and result.strategy == "k-member grouping" and result.merges == 0
    assert k_anonymity(equivalence_classes(result.codes)) == 2


@pytest.mark.parametrize("requirements", [Requirements(k=2, l=2), Requirements(k=2, t=0.3)])
def test_dataset_mode_merges_classes_until_l_and_t_hold(requirements):
    # After the k step, class {0, 1} holds Smiling 1, 1: one value (l = 1) and share 1 against the
    # population's 4/6 (t = 1/3 > 0.3). Merged with 111 = {2, 5}, the union 110, 110, 111, 011 recodes
    # to 111 (column 2 ties to 1): two more flips, Smiling 1, 1, 0, 1 (l 2, t 1/12). Merged with
    # 001 = {3, 4}, the union 110, 110, 000, 001 recodes to 110: six more flips. The first wins: four in all.
    result = k_member_recoding(QI, requirements, SENSITIVE)
    assert result.codes.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1], [1, 1, 1]]
    assert result.flips == 4 and result.merges == 1
    classes = equivalence_classes(result.codes)
    assert k_anonymity(classes) == 2 and distinct_l(classes, SENSITIVE) == 2


def test_dataset_mode_refuses_what_cannot_be_reached():
    with pytest.raises(SelectionError, match="k=7"):
        k_member_recoding(QI, Requirements(k=7))
    with pytest.raises(SelectionError, match="only 2 distinct"):
        k_member_recoding(QI, Requirements(k=2, l=3), SENSITIVE)
    with pytest.raises(SelectionError, match="farther than t from the reference"):
        k_member_recoding(QI, Requirements(k=2, t=0.1), SENSITIVE, reference=np.zeros((4, 1), int))


def test_randomized_response_keeps_each_value_at_the_promised_rate():
    codes = np.random.default_rng(1).integers(0, 2, size=(400, 250)).astype(np.int8)
    codes[::7, 3] = -1
    expected = math.exp(1.0) / (1 + math.exp(1.0))  # 0.731
    assert keep_probability(1.0) == pytest.approx(expected)
    released = randomized_response(codes, 1.0, seed=3)
    known = codes >= 0
    # 99 600 known values: the keep rate's standard error is 0.0014; 0.01 is seven of them.
    assert (released.codes[known] == codes[known]).mean() == pytest.approx(expected, abs=0.01)
    assert (released.codes[~known] == -1).all()
    assert np.array_equal(randomized_response(codes, 1.0, seed=3).codes, released.codes)
    assert (randomized_response(codes, 0.0, seed=4).codes[known] == codes[known]).mean() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(SelectionError, match="epsilon"):
        randomized_response(codes, -1.0)
