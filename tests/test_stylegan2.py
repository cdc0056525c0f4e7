"""StyleGAN2 generator: one module, three published file layouts, identical images."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from anonymize.models.checkpoint import CheckpointError
from anonymize.models.images import CanonicalImages
from anonymize.models.legacy.stylegan2 import infer_config, load_stylegan2, stylegan2_from_state_dict
from anonymize.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from tests.tiny.stylegan2 import (
    TINY_RESOLUTION,
    TINY_W_DIM,
    tiny_generator_state,
    tiny_w_avg,
    write_tiny_genforce,
    write_tiny_rosinality,
)

TINY_NUM_WS = 8  # 2 * log2(32) - 2


def _write_tiny_e4e(path: Path, seed: int = 0) -> Path:
    """e4e's file structure, with only a token encoder tensor: the encoder is loaded elsewhere."""
    state = {f"decoder.{key}": value for key, value in tiny_generator_state("rosinality", seed=seed).items()}
    state["encoder.input_layer.0.weight"] = torch.zeros(4, 3, 3, 3)
    opts = argparse.Namespace(encoder_type="Encoder4Editing", stylegan_size=TINY_RESOLUTION, start_from_latent_avg=True)
    latent_avg = tiny_w_avg(seed=seed).repeat(TINY_NUM_WS, 1)  # e4e repeats the mean w once per W+ layer
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": opts}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks: thread hand-offs cost more than the convolutions, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WRITERS = {"rosinality": write_tiny_rosinality, "genforce": write_tiny_genforce, "e4e": _write_tiny_e4e}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stylegan2")
    return {layout: write(folder / f"{layout}.pt") for layout, write in WRITERS.items()}


@pytest.fixture(scope="module")
def generator(files: dict[str, Path]) -> StyleGAN2Generator:
    return load_stylegan2(files["rosinality"])


def _ws(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, TINY_NUM_WS, TINY_W_DIM, generator=torch.Generator().manual_seed(seed))


def test_config_f_is_the_published_1024_px_generator() -> None:
    config = StyleGAN2Config.config_f()
    assert config.num_ws == 18
    assert config.channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}


@pytest.mark.parametrize("layout", ["rosinality", "genforce"])
def test_full_size_key_layouts_are_read_as_config_f(layout: str) -> None:
    state = tiny_generator_state(layout, 1024, seed=None, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512)
    assert infer_config(state, layout, "full-size layout") == StyleGAN2Config.config_f()


@pytest.mark.parametrize("layout", ["rosinality", "genforce", "e4e"])
def test_every_layout_loads_with_the_documented_shapes(files: dict[str, Path], layout: str) -> None:
    g = load_stylegan2(files[layout])
    assert (g.resolution, g.z_dim, g.w_dim, g.num_ws) == (TINY_RESOLUTION, TINY_W_DIM, TINY_W_DIM, TINY_NUM_WS)
    assert g.w_avg.shape == (TINY_W_DIM,)
    assert g.mapping(torch.randn(3, g.z_dim)).shape == (3, TINY_W_DIM)
    assert g.synthesis(_ws(batch=3)).shape == (3, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    images = g(_ws(batch=3))
    assert isinstance(images, CanonicalImages) and images.size == (TINY_RESOLUTION, TINY_RESOLUTION)
    assert images.tensor.min() >= -1.0 and images.tensor.max() <= 1.0


def test_layout_is_detected_from_the_file_and_can_be_named(files: dict[str, Path]) -> None:
    for layout, path in files.items():
        named = load_stylegan2(path, layout=layout)
        assert torch.equal(named.synthesis(_ws()), load_stylegan2(path).synthesis(_ws()))
    with pytest.raises(CheckpointError, match="g_ema"):
        load_stylegan2(files["genforce"], layout="rosinality")


def test_rosinality_and_genforce_files_of_the_same_weights_render_the_same_image(files: dict[str, Path]) -> None:
    rosinality, genforce = load_stylegan2(files["rosinality"]), load_stylegan2(files["genforce"])
    z = torch.randn(4, TINY_W_DIM, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rosinality.w_avg, genforce.w_avg)
    torch.testing.assert_close(rosinality.mapping(z, truncation_psi=0.7), genforce.mapping(z, truncation_psi=0.7))
    for mode in ("const", "none"):
        torch.testing.assert_close(rosinality.synthesis(_ws(), mode), genforce.synthesis(_ws(), mode), atol=1e-5, rtol=1e-5)


def test_e4e_decoder_renders_like_rosinality_and_takes_row_zero_of_latent_avg(files: dict[str, Path]) -> None:
    e4e, rosinality = load_stylegan2(files["e4e"]), load_stylegan2(files["rosinality"])
    torch.testing.assert_close(e4e.w_avg, tiny_w_avg(seed=0))
    torch.testing.assert_close(e4e.synthesis(_ws()), rosinality.synthesis(_ws()))


def test_renders_the_values_the_genforce_reference_computes() -> None:
    # Numbers produced once by GenForce's own StyleGAN2Generator (the FALCO copy) on this tiny network;
    # rosinality's Generator agrees with it to 1e-5 on the same weights.
    state = tiny_generator_state("genforce", seed=7)
    g = stylegan2_from_state_dict(state, "genforce", "tiny")
    z = torch.randn(2, TINY_W_DIM, generator=torch.Generator().manual_seed(11))
    w = g.mapping(z)
    image = g.synthesis(g.mapping(z, truncation_psi=0.5)[:, None].repeat(1, TINY_NUM_WS, 1), "const")
    expected_w = torch.tensor([[-0.288372, 2.534628, 0.110467, 0.772744], [1.017914, 3.978377, 0.161793, 0.848282]])
    expected_means = torch.tensor([[0.310923, -0.314075, -0.719259], [1.037761, -0.890153, -1.441493]])
    torch.testing.assert_close(w[:, :4], expected_w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(image.mean(dim=(2, 3)), expected_means, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(image[0, :, 5, 9], torch.tensor([0.196043, -1.423386, -0.576144]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(image[1, :, 30, 2], torch.tensor([0.831691, -0.800731, -0.494957]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["rosinality", "genforce"])
def test_the_averaged_generator_is_loaded_not_the_training_one(files: dict[str, Path], layout: str) -> None:
    loaded = load_stylegan2(files[layout]).synthesis(_ws())
    averaged = stylegan2_from_state_dict(tiny_generator_state(layout, seed=0), layout, "seed 0", w_avg=tiny_w_avg(seed=0))
    training = stylegan2_from_state_dict(tiny_generator_state(layout, seed=1), layout, "seed 1", w_avg=tiny_w_avg(seed=1))
    torch.testing.assert_close(loaded, averaged.synthesis(_ws()))
    assert not torch.allclose(loaded, training.synthesis(_ws()))


def test_const_noise_is_reproducible_random_noise_varies_and_none_removes_it(generator: StyleGAN2Generator) -> None:
    ws = _ws()
    const = generator.synthesis(ws, "const")
    assert torch.equal(const, generator.synthesis(ws, "const"))
    first, second = generator.synthesis(ws, "random"), generator.synthesis(ws, "random")
    assert not torch.allclose(first, second)
    none = generator.synthesis(ws, "none")
    assert torch.equal(none, generator.synthesis(ws, "none"))
    assert not torch.allclose(none, const)
    with pytest.raises(ValueError, match="noise_mode"):
        generator.synthesis(ws, "fixed")


def test_truncation_pulls_w_toward_w_avg(generator: StyleGAN2Generator) -> None:
    z = torch.randn(5, generator.z_dim)
    assert torch.equal(generator.mapping(z, truncation_psi=0.0), generator.w_avg.expand(5, -1))
    w = generator.mapping(z)
    torch.testing.assert_close(generator.mapping(z, truncation_psi=0.5), (w + generator.w_avg) / 2)


def test_w_avg_is_estimated_reproducibly_when_the_file_has_none(tmp_path: Path) -> None:
    path = write_tiny_rosinality(tmp_path / "no_avg.pt", with_latent_avg=False)
    first, second = load_stylegan2(path), load_stylegan2(path)
    assert torch.equal(first.w_avg, second.w_avg)
    assert not torch.allclose(first.w_avg, tiny_w_avg(seed=0))
    sample_mean = first.mapping(torch.randn(4000, first.z_dim, generator=torch.Generator().manual_seed(99))).mean(0)
    torch.testing.assert_close(first.w_avg, sample_mean, atol=0.15, rtol=0.0)


def test_gradients_reach_every_w_plus_layer_but_not_the_frozen_weights(generator: StyleGAN2Generator) -> None:
    ws = _ws().requires_grad_(True)
    generator(ws).tensor.square().mean().backward()
    assert ws.grad is not None
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()
    assert all(parameter.grad is None for parameter in generator.parameters())


def test_wrongly_shaped_codes_are_refused(generator: StyleGAN2Generator) -> None:
    with pytest.raises(ValueError, match="ws of shape"):
        generator.synthesis(torch.zeros(2, TINY_NUM_WS - 1, TINY_W_DIM))
    with pytest.raises(ValueError, match="z of shape"):
        generator.mapping(torch.zeros(2, TINY_W_DIM + 1))


MISSING = {"rosinality": "convs.2.conv.modulation.weight", "genforce": "synthesis.layer3.noise"}
RENAMED = {
    "rosinality": ("noises.noise_4", "noises.noise4"),
    "genforce": ("synthesis.output2.style.bias", "synthesis.output2.style_bias"),
}


def _write_with(path: Path, layout: str, state: dict[str, torch.Tensor]) -> Path:
    if layout == "rosinality":
        torch.save({"g_ema": state, "latent_avg": tiny_w_avg()}, path)
    else:
        torch.save({"generator_smooth": state}, path)
    return path


@pytest.mark.parametrize("layout", ["rosinality", "genforce"])
def test_a_missing_tensor_fails_naming_it(tmp_path: Path, layout: str) -> None:
    state = tiny_generator_state(layout)
    del state[MISSING[layout]]
    with pytest.raises(CheckpointError, match=f"missing keys: {MISSING[layout]}"):
        load_stylegan2(_write_with(tmp_path / "g.pt", layout, state))


@pytest.mark.parametrize("layout", ["rosinality", "genforce"])
def test_a_renamed_tensor_fails_naming_the_missing_and_the_unexpected_key(tmp_path: Path, layout: str) -> None:
    old, new = RENAMED[layout]
    state = tiny_generator_state(layout)
    state[new] = state.pop(old)
    with pytest.raises(CheckpointError) as error:
        load_stylegan2(_write_with(tmp_path / "g.pt", layout, state))
    assert f"missing keys: {old}" in str(error.value) and f"unexpected keys: {new}" in str(error.value)


WRONG_SHAPES = {
    "rosinality": ("noises.noise_3", torch.zeros(1, 1, 8, 8), "wrong shapes: synthesis_net.convs.3.noise_const"),  # 16 x 16
    "genforce": ("synthesis.layer2.noise_strength", torch.zeros(2), "synthesis.layer2.noise_strength has an unusable shape"),
}


@pytest.mark.parametrize("layout", ["rosinality", "genforce"])
def test_a_tensor_of_the_wrong_shape_fails_naming_it(tmp_path: Path, layout: str) -> None:
    key, value, message = WRONG_SHAPES[layout]
    state = tiny_generator_state(layout)
    state[key] = value
    with pytest.raises(CheckpointError, match=message):
        load_stylegan2(_write_with(tmp_path / "g.pt", layout, state))


def test_a_different_resampling_filter_is_refused(tmp_path: Path) -> None:
    state = tiny_generator_state("genforce")
    state["synthesis.upsample.kernel"] = torch.full((1, 1, 4, 4), 0.25)
    with pytest.raises(CheckpointError, match=r"synthesis.upsample.kernel is not the \[1,3,3,1\]"):
        load_stylegan2(_write_with(tmp_path / "g.pt", "genforce", state))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _RunsCode(marker), "latent_avg": tiny_w_avg()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_stylegan2(path)
    assert not marker.exists()


def test_an_unknown_checkpoint_is_refused_listing_its_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="top-level keys: model"):
        load_stylegan2(path)
