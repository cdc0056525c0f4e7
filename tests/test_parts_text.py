"""FaRL's text tower and the zero-shot attribute targets of `--method parts`, on the tiny FaRL."""

from __future__ import annotations

import math

import pytest
import torch

from anonymize.methods.parts.attributes import ATTRIBUTES, PROMPT, AttributeTexts, tokenize
from anonymize.models.checkpoint import CheckpointError
from anonymize.models.legacy.farl import load_farl_text
from anonymize.models.registry import load_farl_model, load_farl_text_model
from tests.tiny.farl import farl_state_dict

START, END = 49406, 49407  # CLIP's <start_of_text> and <end_of_text>


@pytest.fixture(scope="module")
def text_encoder(tiny_weights):
    return load_farl_text_model(tiny_weights.store())


def test_the_text_tower_loads_from_the_same_file_as_the_image_tower(tiny_weights, text_encoder):
    image_encoder = load_farl_model(tiny_weights.store())
    assert text_encoder is not image_encoder  # the registry caches them apart
    assert text_encoder.config.vocab_size == 49408 and text_encoder.text_projection.shape[1] == image_encoder.proj.shape[1]
    assert text_encoder.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_a_misnamed_text_key_is_reported_by_name(tmp_path):
    state = farl_state_dict(seed=0)
    state["ln_final_typo.weight"] = state.pop("ln_final.weight")
    path = tmp_path / "farl.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: ln_final\.weight; unexpected keys: ln_final_typo\.weight"):
        load_farl_text(path)


def test_clip_bpe_tokens_frame_the_prompt_and_pad_with_zeros():
    tokens = tokenize([PROMPT.format("a big nose")], context_length=16)[0].tolist()
    assert tokens[0] == START
    end = tokens.index(END)
    assert 1 < end < 16 and all(token == 0 for token in tokens[end + 1:])
    assert len(tokenize(["a " * 40], context_length=16)[0]) == 16  # truncated to the model's context, end kept
    assert tokenize(["a " * 40], context_length=16)[0, -1].item() == END


def test_the_text_embedding_reads_the_end_token_through_causal_attention(text_encoder):
    tokens = tokenize([PROMPT.format("thin lips")], context_length=16)
    end = int(tokens[0].argmax())
    changed = tokens.clone()
    changed[0, end + 1:] = 320  # tokens after the end cannot reach it: attention is causal
    with torch.no_grad():
        embedding, same = text_encoder(tokens), text_encoder(changed)
        other = text_encoder(tokenize([PROMPT.format("big lips")], context_length=16))
    assert torch.allclose(embedding, same, atol=1e-6)
    assert embedding.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(embedding, other, atol=1e-3)


def test_the_target_is_always_the_attribute_the_paper_names_and_the_loss_is_clips_zero_shot_cross_entropy():
    e1, e2, e3 = torch.eye(3)
    texts = AttributeTexts(("nose",), torch.stack([e1, e2])[None], logit_scale=10.0)  # e1: "a big nose", e2: "a small nose"
    pairs = texts.targets(["nose"])
    assert torch.equal(pairs[0, 0], e1) and torch.equal(pairs[0, 1], e2)  # target: "a big nose", whatever the face
    small = torch.nn.functional.normalize(torch.tensor([0.6, 0.8, 0.0]), dim=0)  # closer to "a small nose"
    expected = -math.log(math.exp(10 * 0.6) / (math.exp(10 * 0.6) + math.exp(10 * 0.8)))
    assert texts.loss(small[None], [pairs]).item() == pytest.approx(expected, rel=1e-5)
    big = torch.nn.functional.normalize(torch.tensor([0.8, 0.6, 0.0]), dim=0)  # already big: still pulled further
    assert 0 < texts.loss(big[None], [pairs]).item() < expected


def test_every_part_has_two_prompts_embedded_by_farl(text_encoder):
    texts = AttributeTexts.build(text_encoder)
    assert texts.parts == tuple(ATTRIBUTES) and texts.embeddings.shape == (4, 2, text_encoder.text_projection.shape[1])
    assert torch.allclose(texts.embeddings.norm(dim=-1), torch.ones(4, 2), atol=1e-5)
