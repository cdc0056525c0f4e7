"""FaRL image encoder: loads the published layout, gives FALCO's two features, stays differentiable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anonymize.models.checkpoint import CheckpointError, load_state_dict_strict
from anonymize.models.farl import FaRLEncoder
from anonymize.models.legacy.farl import infer_vision_config, load_farl, visual_state_dict
from anonymize.models.registry import CLIP_MEAN, CLIP_STD
from anonymize.models.images import CanonicalImages
from tests.tiny.farl import TINY_EMBED, TINY_GRID, TINY_PATCH, TINY_WIDTH, farl_state_dict, write_tiny_farl


@pytest.fixture(scope="module")
def tiny_farl_path(tmp_path_factory):
    return write_tiny_farl(tmp_path_factory.mktemp("farl") / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")


@pytest.fixture(scope="module")
def encoder(tiny_farl_path) -> FaRLEncoder:
    return load_farl(tiny_farl_path)


def _faces(n: int = 2, size: int = 96, seed: int = 1) -> CanonicalImages:
    g = torch.Generator().manual_seed(seed)
    return CanonicalImages(torch.rand(n, 3, size, size, generator=g) * 2 - 1)


def test_cls_is_a_unit_vector_and_tokens_cover_cls_plus_every_patch(encoder):
    features = encoder(_faces(n=3))
    assert features.cls.shape == (3, TINY_EMBED)
    assert torch.allclose(features.cls.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert features.tokens.shape == (3, 1 + TINY_GRID**2, TINY_WIDTH)


def test_real_vit_b16_layout_means_224_px_input_12_heads_and_197_tokens():
    state = visual_state_dict({"state_dict": farl_state_dict(seed=None, width=768, layers=12, patch=16, grid=14, embed_dim=512)}, "real-size")
    config = infer_vision_config(state, "real-size")
    assert (config.width, config.layers, config.heads, config.input_size, config.embed_dim) == (768, 12, 12, 224, 512)
    with torch.device("meta"):
        encoder = FaRLEncoder(config)
    load_state_dict_strict(encoder, state, "real-size")  # every key and shape of the published layout fits
    assert config.grid**2 + 1 == 197


def test_same_image_gives_identical_features_across_calls_and_loads(encoder, tiny_farl_path):
    faces = _faces()
    first, second = encoder(faces), load_farl(tiny_farl_path)(faces)
    assert torch.equal(first.cls, second.cls)
    assert torch.equal(first.tokens, second.tokens)


def test_different_faces_give_different_embeddings(encoder):
    features = encoder(_faces(n=2))
    assert not torch.allclose(features.cls[0], features.cls[1], atol=1e-3)


def test_gradients_flow_to_the_input_but_not_into_the_frozen_weights(encoder):
    pixels = (torch.rand(1, 3, 80, 80) * 2 - 1).requires_grad_(True)
    features = encoder(CanonicalImages.from_generator(pixels))
    (features.tokens.abs().mean() + features.cls[:, 0].sum()).backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in encoder.parameters())
    assert not encoder.training


def test_preprocessing_maps_the_canonical_range_to_clip_statistics(encoder):
    value = 0.5  # canonical 0.5 is 0.75 in [0, 1]
    pixels = encoder.preprocess(CanonicalImages(torch.full((1, 3, 100, 100), value)))
    assert pixels.shape == (1, 3, TINY_PATCH * TINY_GRID, TINY_PATCH * TINY_GRID)
    expected = (0.75 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pixels[0, :, 10, 10], expected, atol=1e-5)


def test_uint8_photos_and_generator_outputs_of_the_same_pixels_give_the_same_features(encoder):
    photo = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    real = CanonicalImages.from_uint8(photo)
    generated = CanonicalImages.from_generator(real.tensor.clone())
    assert torch.allclose(encoder(real).cls, encoder(generated).cls, atol=1e-6)


def test_attention_block_matches_torch_multihead_attention(encoder):
    block = encoder.transformer.resblocks[0].attn
    reference = nn.MultiheadAttention(TINY_WIDTH, TINY_WIDTH // 64, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(block.in_proj_weight)
        reference.in_proj_bias.copy_(block.in_proj_bias)
        reference.out_proj.weight.copy_(block.out_proj.weight)
        reference.out_proj.bias.copy_(block.out_proj.bias)
    x = torch.randn(2, 5, TINY_WIDTH, generator=torch.Generator().manual_seed(4))
    expected, _ = reference(x, x, x, need_weights=False)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_a_misnamed_visual_key_is_reported_by_name(tmp_path):
    state = farl_state_dict(seed=0)
    state["visual.ln_post.gamma"] = state.pop("visual.ln_post.weight")
    path = tmp_path / "renamed.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: ln_post\.weight.*unexpected keys: ln_post\.gamma"):
        load_farl(path)


def test_a_checkpoint_without_an_image_tower_is_refused(tmp_path):
    state = {key: value for key, value in farl_state_dict(seed=0).items() if not key.startswith("visual.")}
    path = tmp_path / "text_only.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="visual"):
        load_farl(path)
