"""The `zero-shot` attribute source: CelebA's attributes as FaRL softmaxes over prompt pairs, on the tiny FaRL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anonymize.attributes import CELEBA_ATTRIBUTES, create_source
from anonymize.attributes.zero_shot import PROMPTS
from anonymize.faces.types import FaceCrop
from anonymize.models.farl import tokenize
from anonymize.models.images import CanonicalImages
from anonymize.models.registry import load_farl_model, load_farl_text_model


def _faces(count: int) -> list[FaceCrop]:
    rng = np.random.default_rng(3)
    return [FaceCrop(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), None, f"img{i}.png#0") for i in range(count)]


@pytest.fixture(scope="module")
def source(tiny_weights):
    return create_source("zero-shot", tiny_weights.store())


def test_every_celeba_attribute_has_a_present_and_an_absent_prompt():
    assert tuple(PROMPTS) == CELEBA_ATTRIBUTES
    assert PROMPTS["Eyeglasses"] == ("a photo of a face with eyeglasses", "a photo of a face without eyeglasses")
    assert all(present != absent for present, absent in PROMPTS.values())


def test_one_row_per_face_one_column_per_attribute_all_probabilities(source):
    faces = _faces(3)
    table = source.estimate(faces)
    assert table.keys == tuple(face.key for face in faces) and table.names == CELEBA_ATTRIBUTES
    assert table.probabilities.shape == (3, 40) and table.source == "zero-shot" and not table.heuristic
    assert np.all((table.probabilities >= 0) & (table.probabilities <= 1)) and not np.isnan(table.probabilities).any()
    assert np.array_equal(source.estimate(faces).probabilities, table.probabilities)  # deterministic
    np.testing.assert_allclose(source.estimate(faces[1:2]).probabilities, table.probabilities[1:2], atol=1e-5)  # batch-independent
    assert source.estimate([]).probabilities.shape == (0, 40)


def test_the_probability_is_the_softmax_of_the_scaled_cosines_to_the_pair(tiny_weights):
    store = tiny_weights.store()
    face = _faces(1)
    table = create_source("zero-shot", store, options={"attributes": "Eyeglasses,Smiling"}).estimate(face)
    assert table.names == ("Eyeglasses", "Smiling")
    farl, text = load_farl_model(store), load_farl_text_model(store)
    with torch.no_grad():
        image = farl(CanonicalImages.from_uint8(face[0].image[None], "cpu")).cls[0].double()
        scale = math.exp(text.logit_scale.item())
        for column, name in enumerate(table.names):
            present, absent = (text(tokenize([prompt], text.config.context_length))[0].double() for prompt in PROMPTS[name])
            cos_present = float(image @ present / (image.norm() * present.norm()))
            cos_absent = float(image @ absent / (image.norm() * absent.norm()))
            expected = math.exp(scale * cos_present) / (math.exp(scale * cos_present) + math.exp(scale * cos_absent))
            assert table.probabilities[0, column] == pytest.approx(expected, abs=1e-5)


def test_an_unknown_attribute_or_option_is_named(tiny_weights):
    with pytest.raises(ValueError, match="unknown attribute.*Glasses"):
        create_source("zero-shot", tiny_weights.store(), options={"attributes": "Glasses"})
    with pytest.raises(ValueError, match="no option prompt"):
        create_source("zero-shot", tiny_weights.store(), options={"prompt": "x"})
