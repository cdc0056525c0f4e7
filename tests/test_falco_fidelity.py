"""FALCO as its authors weigh it: the loss, the resizing and the precision, checked against the reference's formulas.

The reference is chi0tzp/FALCO (branch cvpr23): ``lib/attr_loss.py`` adds one ``nn.L1Loss`` per FaRL
token (each a mean over the batch and the channels), ``lib/id_loss.py`` resizes with
``transforms.Resize(256, antialias=True)`` and pools the inner face with ``AdaptiveAvgPool2d``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anonymize.methods.falco.loss import OptimSettings, face_losses, optimise_latents
from anonymize.methods.latent import optimize
from anonymize.methods.latent.optimize import attribute_loss, real_targets
from anonymize.models import registry
from anonymize.models.images import CanonicalImages, resize_by_matrices, separable_resize


def test_the_attribute_loss_is_the_channel_mean_l1_summed_over_tokens_as_the_reference():
    generated = torch.tensor([[[1.0, 3.0], [0.0, 2.0], [4.0, 0.0]],
                              [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])  # [faces=2, tokens=3, channels=2]
    target = torch.zeros_like(generated)
    # by hand: face 0 has token means (1+3)/2=2, (0+2)/2=1, (4+0)/2=2 -> 5; face 1: 0 + 1 + 0 -> 1
    assert attribute_loss(generated, target).tolist() == [5.0, 1.0]
    # the reference's weighting at its batch size (1): lambda_attr = 0.1 applies to the sum, 0.5 here
    assert 0.1 * attribute_loss(generated[:1], target[:1]).item() == pytest.approx(0.5)
    # the reference's batch formula (sum over tokens of the batch-and-channel mean) is the mean of ours
    l1 = torch.nn.L1Loss()
    reference = sum(l1(generated[:, token], target[:, token]) for token in range(generated.shape[1]))
    assert reference.item() == pytest.approx(attribute_loss(generated, target).mean().item()) == 3.0


def test_197_tokens_weigh_197_times_their_mean():
    tokens, target = torch.rand(1, 197, 768), torch.rand(1, 197, 768)
    mean = (tokens - target).abs().mean()
    assert attribute_loss(tokens, target).item() == pytest.approx(197 * mean.item(), rel=1e-5)


def test_the_total_loss_weighs_identity_and_attributes_as_the_reference(tiny_weights):
    store = tiny_weights.store()
    networks = optimize.LossNetworks(registry.load_generator(store, "genforce", torch.device("cpu")),
                                     registry.load_arcface_model(store, torch.device("cpu")),
                                     registry.load_farl_model(store, torch.device("cpu")))
    real = CanonicalImages(torch.rand(2, 3, 64, 64) * 2 - 1)
    generated = CanonicalImages(torch.rand(2, 3, 64, 64) * 2 - 1)
    targets = real_targets(real, networks)
    settings = OptimSettings(lambda_id=10.0, lambda_attr=0.1, margin=0.3)
    total, cosine, attribute = face_losses(generated, targets, networks, settings)
    tokens = networks.farl(generated).tokens
    expected_attribute = (tokens - targets.tokens).abs().mean(dim=2).sum(dim=1)
    torch.testing.assert_close(attribute, expected_attribute)
    torch.testing.assert_close(total, 10.0 * (cosine - 0.3).abs() + 0.1 * expected_attribute)


@pytest.mark.parametrize(("source", "target"), [(1024, 256), (1024, 224), (256, 224), (188, 112)])
def test_resizing_is_torchvisions_antialiased_bilinear_and_its_matrix_form_is_the_same(source, target):
    images = torch.rand(2, 3, source, source, dtype=torch.float64)
    resized = CanonicalImages(images).resized(target).tensor
    torch.testing.assert_close(resized, F.interpolate(images, size=(target, target), mode="bilinear", antialias=True))
    torch.testing.assert_close(resize_by_matrices(images, (target, target), "bilinear"), resized, rtol=0, atol=1e-12)
    pooled = F.adaptive_avg_pool2d(images, (target, target))
    torch.testing.assert_close(resize_by_matrices(images, (target, target), "area"), pooled, rtol=0, atol=1e-12)
    assert torch.equal(separable_resize(images, (target, target), "area"), pooled)


def test_the_final_face_is_rendered_in_float32_even_under_bf16(tiny_weights, monkeypatch):
    store = tiny_weights.store()
    generator = registry.load_generator(store, "genforce", torch.device("cpu"))
    networks = optimize.LossNetworks(generator, registry.load_arcface_model(store, torch.device("cpu")),
                                     registry.load_farl_model(store, torch.device("cpu")))
    calls = []
    original_render = optimize.render
    monkeypatch.setattr(optimize, "render", lambda g, ws, bf16, *clamp: calls.append(bf16) or original_render(g, ws, bf16, *clamp))
    real = CanonicalImages(torch.rand(1, 3, 64, 64) * 2 - 1)
    initial = torch.zeros(1, generator.num_ws, generator.w_dim)
    result = optimise_latents(initial, (3, 4), real_targets(real, networks), networks, OptimSettings(steps=2, bf16=True))
    assert calls == [True, True, False]  # two optimisation steps under bf16, then the written face in float32
    assert result.images.tensor.dtype == torch.float32


def test_deterministic_mode_sets_every_torch_switch(monkeypatch):
    from anonymize.models.determinism import deterministic_settings, use_deterministic_algorithms

    before = deterministic_settings()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms()
        assert deterministic_settings() == {
            "deterministic_algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
            "matmul_tf32": False, "cudnn_tf32": False, "cublas_workspace": ":4096:8",
        }
        # the CPU FALCO path has no op that deterministic mode refuses
        images = CanonicalImages(torch.rand(1, 3, 64, 64, requires_grad=True) * 2 - 1)
        images.resized(32).tensor.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before["deterministic_algorithms"])
        torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = before["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = before["cudnn_tf32"]
