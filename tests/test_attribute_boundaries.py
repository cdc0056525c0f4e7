"""InterFaceGAN directions for `--method attributes`: boundary fitting, conditional projection, caching, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymize.methods.attributes_edit.boundaries import (
    MIN_PER_SIDE,
    DirectionError,
    conditional_direction,
    fit_boundary,
    load_direction_file,
    load_or_fit_boundaries,
)

TRUE_NORMAL = np.array([1.0, 2.0, 0.0, -2.0]) / 3.0  # unit


def _separable(count: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    codes = np.random.default_rng(seed).normal(size=(count, 4))
    return codes, codes @ TRUE_NORMAL + 0.5  # the score is the signed distance to a known hyperplane


@pytest.mark.parametrize("classifier", ["svm", "logreg"])
def test_the_fitted_normal_is_the_hyperplane_that_made_the_labels(classifier):
    codes, scores = _separable()
    normal = fit_boundary(codes, scores, fraction=0.02, classifier=classifier)
    assert np.linalg.norm(normal) == pytest.approx(1.0, abs=1e-6)
    assert float(normal @ TRUE_NORMAL) > 0.97  # the same direction, pointing toward high scores
    assert float(fit_boundary(codes, -scores, classifier=classifier) @ TRUE_NORMAL) < -0.97


def test_only_the_top_and_bottom_fraction_are_used():
    codes, scores = _separable(400)
    middle = np.argsort(scores)[8:-8]  # 2% of 400 per side
    moved = codes.copy()
    moved[middle] = np.random.default_rng(9).normal(size=(len(middle), 4)) * 100  # the middle 96% say nothing
    assert np.array_equal(fit_boundary(moved, scores), fit_boundary(codes, scores))


def test_a_small_bank_still_fits_on_several_fakes_per_side():
    codes, scores = _separable(100)  # 2% would be 2 per side
    middle = np.argsort(scores)[MIN_PER_SIDE:-MIN_PER_SIDE]
    moved = codes.copy()
    moved[middle] = np.random.default_rng(9).normal(size=(len(middle), 4)) * 100
    assert np.array_equal(fit_boundary(moved, scores), fit_boundary(codes, scores))
    assert not np.array_equal(fit_boundary(codes, scores), fit_boundary(_two_per_side_only(codes, scores), scores))  # the 3rd-5th count


def _two_per_side_only(codes, scores):
    order = np.argsort(scores)
    moved = codes.copy()
    moved[order[2:MIN_PER_SIDE]] = moved[order[2:MIN_PER_SIDE]] + 50.0  # examples 3-5 of each side now differ
    moved[order[-MIN_PER_SIDE:-2]] = moved[order[-MIN_PER_SIDE:-2]] - 50.0
    return moved


def test_a_constant_attribute_has_no_boundary():
    with pytest.raises(DirectionError, match="do not differ"):
        fit_boundary(np.eye(10), np.ones(10))


def test_the_conditional_direction_is_orthogonal_to_every_conditioned_normal():
    rng = np.random.default_rng(1)
    primary, conditions = rng.normal(size=16), rng.normal(size=(3, 16))
    edited = conditional_direction(primary, conditions)
    assert np.abs(conditions @ edited).max() < 1e-5 and np.linalg.norm(edited) == pytest.approx(1.0, abs=1e-6)
    # one unit condition c: InterFaceGAN's n - (n.c) c, normalised
    c = conditions[0] / np.linalg.norm(conditions[0])
    by_hand = primary - (primary @ c) * c
    np.testing.assert_allclose(conditional_direction(primary, [c]), by_hand / np.linalg.norm(by_hand), atol=1e-6)
    np.testing.assert_allclose(conditional_direction(primary, np.zeros((0, 16))), primary / np.linalg.norm(primary), atol=1e-6)
    with pytest.raises(DirectionError, match="span"):
        conditional_direction(conditions[0] + conditions[1], conditions)


def test_boundaries_are_cached_beside_the_bank_under_their_key(tmp_path):
    codes, scores = _separable(200)
    bank = tmp_path / "bank-n200.npz"
    two = np.stack([scores, -scores], axis=1)
    normals, fitted = load_or_fit_boundaries(bank, "f" * 64, codes, two, ("A", "B"))
    assert fitted and normals.shape == (2, 4)
    cached = list(tmp_path.glob("bank-n200.boundaries-*.npz"))
    assert len(cached) == 1 and not np.load(cached[0], allow_pickle=False)["normals"].dtype.hasobject
    again, fitted_again = load_or_fit_boundaries(bank, "f" * 64, codes * 0, two, ("A", "B"))
    assert not fitted_again and np.array_equal(again, normals)  # read back, not refitted
    _, other_farl = load_or_fit_boundaries(bank, "e" * 64, codes, two, ("A", "B"))
    assert other_farl and len(list(tmp_path.glob("*.boundaries-*.npz"))) == 2
    cached[0].write_bytes(b"torn")
    _, refitted = load_or_fit_boundaries(bank, "f" * 64, codes, two, ("A", "B"))
    assert refitted


def test_direction_files_pt_and_npy_per_layer_or_shared(tmp_path):
    vector = np.arange(8, dtype=np.float32)
    torch.save(torch.from_numpy(vector)[None], tmp_path / "age.pt")  # e4e/InterFaceGAN's [1, w_dim]
    np.save(tmp_path / "smile.npy", np.stack([vector] * 3))
    assert np.array_equal(load_direction_file(tmp_path / "age.pt", 3, 8), np.stack([vector] * 3))
    assert load_direction_file(tmp_path / "smile.npy", 3, 8).shape == (3, 8)
    with pytest.raises(DirectionError, match=r"smile\.npy: direction of shape \(3, 8\); expected \[8\] or \[4, 8\]"):
        load_direction_file(tmp_path / "smile.npy", 4, 8)
    torch.save({"direction": torch.zeros(8)}, tmp_path / "dict.pt")
    with pytest.raises(DirectionError, match=r"dict\.pt: holds a dict"):
        load_direction_file(tmp_path / "dict.pt", 3, 8)
    (tmp_path / "bad.pt").write_bytes(b"not a tensor")
    with pytest.raises(DirectionError, match=r"bad\.pt: cannot read"):
        load_direction_file(tmp_path / "bad.pt", 3, 8)
    with pytest.raises(DirectionError, match=r"x\.txt: a direction file must be \.pt or \.npy"):
        load_direction_file(tmp_path / "x.txt", 3, 8)
