"""ArcFace IR-SE50 and the e4e encoder: loading the published layouts, preprocessing, outputs."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymize.models.arcface import ArcFace
from anonymize.models.checkpoint import CheckpointError, load_checkpoint, sub_state_dict
from anonymize.models.e4e import E4EEncoder
from anonymize.models.images import CanonicalImages
from anonymize.models.irse import STAGE_WIDTHS, UNITS_PER_STAGE, block_specs
from anonymize.models.legacy.arcface import arcface_from_state_dict, load_arcface
from anonymize.models.legacy.e4e import e4e_encoder_from_state_dict, load_e4e
from anonymize.models.legacy.irse import infer_block_specs
from tests.tiny.irse import TINY_EMBEDDING, arcface_state, e4e_encoder_state, write_tiny_arcface, write_tiny_e4e


class NotAllowListed:
    """Stands for any pickled object a hostile checkpoint could smuggle in."""


def random_faces(count: int, size: int = 256, seed: int = 0) -> CanonicalImages:
    generator = torch.Generator().manual_seed(seed)
    return CanonicalImages(torch.rand(count, 3, size, size, generator=generator) * 2 - 1)


@pytest.fixture(scope="module")
def arcface_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_arcface(tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth")


@pytest.fixture(scope="module")
def arcface(arcface_path: Path) -> ArcFace:
    return load_arcface(arcface_path)


@pytest.fixture(scope="module")
def e4e_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_e4e(tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt")


@pytest.fixture(scope="module")
def e4e(e4e_path: Path):
    return load_e4e(e4e_path)


def resave_e4e(source: Path, target: Path, edit) -> Path:
    checkpoint = load_checkpoint(source)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


# ArcFace ----------------------------------------------------------------------------------------


def test_arcface_embeds_faces_as_unit_vectors_of_the_checkpoint_width(arcface: ArcFace) -> None:
    embeddings = arcface(random_faces(3))
    assert embeddings.shape == (3, TINY_EMBEDDING)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_arcface_is_deterministic_and_cannot_be_switched_to_training(arcface: ArcFace) -> None:
    faces = random_faces(2)
    first = arcface(faces)
    arcface.train()
    assert not arcface.training and not arcface.output_layer[4].training
    torch.testing.assert_close(arcface(faces), first, rtol=0, atol=0)


def test_arcface_passes_gradients_to_the_image_but_keeps_its_weights_frozen(arcface: ArcFace) -> None:
    pixels = random_faces(2).tensor.requires_grad_(True)
    arcface(CanonicalImages(pixels)).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in arcface.parameters())


def test_a_real_photo_and_the_same_pixels_from_the_generator_embed_identically(arcface: ArcFace) -> None:
    photo = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    real = CanonicalImages.from_uint8(photo)
    generator_output = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    generated = CanonicalImages.from_generator(generator_output)
    torch.testing.assert_close(arcface(real), arcface(generated))


def test_arcface_brings_any_size_to_256_by_antialiased_bilinear_resizing_before_cropping(arcface: ArcFace) -> None:
    large = random_faces(1, size=1024)
    # the reference's transforms.Resize(256, antialias=True) on a tensor is this call
    at_256 = CanonicalImages(torch.nn.functional.interpolate(large.tensor, size=(256, 256), mode="bilinear", antialias=True))
    torch.testing.assert_close(arcface(large), arcface(at_256), rtol=1e-5, atol=1e-5)


def test_arcface_sees_only_the_inner_face_crop_of_a_256_pixel_face(arcface: ArcFace) -> None:
    faces = random_faces(1)
    reference = arcface(faces)
    outside = faces.tensor.clone()
    outside[:, :, :35] = 1.0
    outside[:, :, 223:] = -1.0
    outside[:, :, :, :32] = 1.0
    outside[:, :, :, 220:] = -1.0
    torch.testing.assert_close(arcface(CanonicalImages(outside)), reference, rtol=0, atol=0)
    inside = faces.tensor.clone()
    inside[:, :, 35:223, 32:220] = 0.0
    assert not torch.allclose(arcface(CanonicalImages(inside)), reference)


def test_arcface_refuses_bare_tensors_so_ranges_cannot_be_mixed(arcface: ArcFace) -> None:
    with pytest.raises(TypeError, match="CanonicalImages"):
        arcface(random_faces(1).tensor)


def test_the_published_ir_se50_layout_is_recognised_from_its_tensors() -> None:
    state = arcface_state(STAGE_WIDTHS, UNITS_PER_STAGE[50], embedding_dim=512, seed=None)
    assert infer_block_specs(state, "ir_se50") == block_specs(50)
    with torch.device("meta"):
        model = arcface_from_state_dict(state, "ir_se50")
    assert (model.input_size, model.embedding_dim, model.stage_widths) == (112, 512, [64, 128, 256, 512])
    assert sum(p.numel() for p in model.parameters()) == 43_797_696


def test_arcface_checkpoints_without_batchnorm_counters_still_load(tmp_path: Path) -> None:
    state = OrderedDict((k, v) for k, v in arcface_state().items() if not k.endswith("num_batches_tracked"))
    torch.save(state, tmp_path / "old.pth")
    assert load_arcface(tmp_path / "old.pth").embedding_dim == TINY_EMBEDDING


def test_arcface_with_a_misnamed_tensor_is_refused_naming_both_keys(tmp_path: Path) -> None:
    state = arcface_state()
    state["body.1.res_layer.5.fc_1.weight"] = state.pop("body.1.res_layer.5.fc1.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as error:
        load_arcface(tmp_path / "bad.pth")
    assert "missing keys: body.1.res_layer.5.fc1.weight" in str(error.value)
    assert "unexpected keys: body.1.res_layer.5.fc_1.weight" in str(error.value)


def test_arcface_with_a_missing_embedding_bias_is_refused(tmp_path: Path) -> None:
    state = arcface_state()
    del state["output_layer.3.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing keys: output_layer.3.bias"):
        load_arcface(tmp_path / "bad.pth")


# e4e ---------------------------------------------------------------------------------------------


def test_e4e_encodes_faces_to_w_plus_codes_the_decoder_accepts(e4e) -> None:
    encoder, generator = e4e
    assert (encoder.num_ws, encoder.w_dim) == (generator.num_ws, generator.w_dim) == (8, 32)
    codes = encoder(random_faces(2, size=48))
    assert codes.shape == (2, 8, 32)


def test_e4e_round_trip_gives_an_image_at_the_generator_resolution(e4e) -> None:
    encoder, generator = e4e
    with torch.no_grad():
        images = generator(encoder(random_faces(2, size=100)))
    assert isinstance(images, CanonicalImages)
    assert images.tensor.shape == (2, 3, generator.resolution, generator.resolution) == (2, 3, 32, 32)
    assert torch.isfinite(images.tensor).all()


def test_e4e_codes_are_offsets_from_the_average_latent(e4e_path: Path, tmp_path: Path) -> None:
    def silence_every_style(checkpoint: dict) -> None:
        for key, value in checkpoint["state_dict"].items():
            if ".styles." in key and ".linear." in key:
                value.zero_()

    encoder, _ = load_e4e(resave_e4e(e4e_path, tmp_path / "silent.pt", silence_every_style))
    average = load_checkpoint(e4e_path)["latent_avg"]
    codes = encoder(random_faces(2))
    torch.testing.assert_close(codes, average.expand(2, -1, -1))


def test_e4e_adds_each_layer_delta_to_the_first_code(e4e_path: Path, tmp_path: Path) -> None:
    def silence_deltas(checkpoint: dict) -> None:
        for key, value in checkpoint["state_dict"].items():
            if key.startswith("encoder.styles.") and not key.startswith("encoder.styles.0.") and ".linear." in key:
                value.zero_()

    encoder, _ = load_e4e(resave_e4e(e4e_path, tmp_path / "w0_only.pt", silence_deltas))
    offsets = encoder(random_faces(2)) - encoder.latent_avg
    assert offsets.abs().max() > 0
    torch.testing.assert_close(offsets, offsets[:, :1].expand_as(offsets))


@pytest.mark.parametrize(("lateral", "first_affected"), [("latlayer1", 3), ("latlayer2", 7)])
def test_coarse_codes_read_the_top_stage_and_finer_codes_add_lateral_features(lateral: str, first_affected: int) -> None:
    state = sub_state_dict(e4e_encoder_state(), "encoder.")
    faces = random_faces(2, size=64)
    before = e4e_encoder_from_state_dict(state, torch.zeros(32), "tiny")(faces)
    state[f"{lateral}.bias"] = state[f"{lateral}.bias"] + 1.0
    after = e4e_encoder_from_state_dict(state, torch.zeros(32), "tiny")(faces)
    torch.testing.assert_close(after[:, :first_affected], before[:, :first_affected], rtol=0, atol=0)
    assert (after[:, first_affected:] - before[:, first_affected:]).abs().amax(dim=(0, 2)).min() > 0


def test_e4e_accepts_a_single_average_latent_broadcast_to_every_layer(e4e_path: Path, tmp_path: Path) -> None:
    def keep_one_row(checkpoint: dict) -> None:
        checkpoint["latent_avg"] = checkpoint["latent_avg"][0].clone()

    per_layer, _ = load_e4e(e4e_path)
    single, _ = load_e4e(resave_e4e(e4e_path, tmp_path / "single.pt", keep_one_row))
    faces = random_faces(1)
    torch.testing.assert_close(single(faces), per_layer(faces))


def test_e4e_checkpoints_with_options_as_dict_or_namespace_load_safely(tmp_path: Path) -> None:
    for as_namespace in (False, True):
        path = write_tiny_e4e(tmp_path / f"e4e_{as_namespace}.pt", opts_as_namespace=as_namespace)
        assert isinstance(load_checkpoint(path)["opts"], argparse.Namespace if as_namespace else dict)
        encoder, _ = load_e4e(path)
        assert isinstance(encoder, E4EEncoder)


def test_e4e_checkpoint_carrying_an_arbitrary_pickled_object_is_refused(e4e_path: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(e4e_path)
    checkpoint["opts"] = NotAllowListed()
    torch.save(checkpoint, tmp_path / "hostile.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_e4e(tmp_path / "hostile.pt")


def test_e4e_with_a_misnamed_encoder_tensor_is_refused_naming_both_keys(e4e_path: Path, tmp_path: Path) -> None:
    def rename_lateral(checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        state["encoder.lat_layer1.weight"] = state.pop("encoder.latlayer1.weight")

    with pytest.raises(CheckpointError) as error:
        load_e4e(resave_e4e(e4e_path, tmp_path / "bad.pt", rename_lateral))
    assert "missing keys: latlayer1.weight" in str(error.value)
    assert "unexpected keys: lat_layer1.weight" in str(error.value)


def test_e4e_with_a_missing_decoder_tensor_is_refused(e4e_path: Path, tmp_path: Path) -> None:
    def drop_decoder_tensor(checkpoint: dict) -> None:
        del checkpoint["state_dict"]["decoder.style.1.weight"]

    with pytest.raises(CheckpointError, match="style.1.weight"):
        load_e4e(resave_e4e(e4e_path, tmp_path / "bad.pt", drop_decoder_tensor))


def test_a_psp_checkpoint_is_refused_because_its_codes_are_not_w0_plus_deltas(e4e_path: Path, tmp_path: Path) -> None:
    def make_psp(checkpoint: dict) -> None:
        checkpoint["opts"]["encoder_type"] = "GradualStyleEncoder"

    with pytest.raises(CheckpointError, match="GradualStyleEncoder"):
        load_e4e(resave_e4e(e4e_path, tmp_path / "psp.pt", make_psp))


def test_e4e_without_latent_avg_is_refused(e4e_path: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="latent_avg"):
        load_e4e(resave_e4e(e4e_path, tmp_path / "no_avg.pt", lambda checkpoint: checkpoint.pop("latent_avg")))


def test_style_blocks_that_do_not_fit_the_feature_pyramid_are_refused() -> None:
    state = sub_state_dict(e4e_encoder_state(), "encoder.")
    for suffix in ("weight", "bias"):
        del state[f"styles.7.convs.6.{suffix}"]  # a fine block one convolution short
    with pytest.raises(CheckpointError, match="styles.7 has 3 convolutions"):
        e4e_encoder_from_state_dict(state, torch.zeros(32), "tiny")


def test_the_published_e4e_layout_is_recognised_from_its_tensors() -> None:
    state = sub_state_dict(e4e_encoder_state(STAGE_WIDTHS, UNITS_PER_STAGE[50], w_dim=512, num_ws=18, coarse_convs=4, seed=None), "encoder.")
    assert infer_block_specs(state, "e4e") == block_specs(50)
    with torch.device("meta"):
        encoder = e4e_encoder_from_state_dict(state, torch.empty(18, 512), "e4e")
    assert (encoder.num_ws, encoder.w_dim, encoder.input_size) == (18, 512, 256)
    assert encoder.latent_avg.shape == (18, 512)
