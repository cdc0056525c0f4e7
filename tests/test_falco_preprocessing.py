"""FALCO's options that follow the paper or the authors' code: the loss networks' inputs
(``preprocessing``), the clamp in the loop, the pairing metric, the fake bank's size; and the
loss-balance benchmark, run on the tiny networks.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anonymize.faces.types import FaceCrop
from anonymize.io.manifest import read_manifest
from anonymize.io.storage import work_storage
from anonymize.methods.base import MethodContext, MethodError
from anonymize.methods.falco.loss import OptimSettings, face_losses
from anonymize.methods.falco.method import FalcoMethod
from anonymize.methods.falco.preprocessing import embed_for_loss, falco_targets
from anonymize.methods.latent.bank import default_bank_size
from anonymize.methods.latent.optimize import LossNetworks, render
from anonymize.methods.latent.pairing import FakePairer
from anonymize.models import registry
from anonymize.models.images import CanonicalImages
from anonymize.run.pipeline import Pipeline
from benchmarks import falco_loss_balance
from tests.helpers import cli, copy_celeba_ids, synthetic_face

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def networks(tiny_weights) -> LossNetworks:
    store, cpu = tiny_weights.store(), torch.device("cpu")
    return LossNetworks(registry.load_generator(store, "genforce", cpu), registry.load_arcface_model(store, cpu),
                        registry.load_farl_model(store, cpu))


def network_inputs(networks: LossNetworks, run) -> tuple[torch.Tensor, torch.Tensor]:
    """What ArcFace's first layer and FaRL's patch embedding receive while ``run()`` runs."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [networks.arcface.input_layer.register_forward_pre_hook(lambda _, args: seen.__setitem__("arcface", args[0])),
             networks.farl.conv1.register_forward_pre_hook(lambda _, args: seen.__setitem__("farl", args[0]))]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen["arcface"], seen["farl"]


def the_authors_inputs(pixels: torch.Tensor, networks: LossNetworks) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' transforms, written out: IDLoss's Resize(256) + crop [35:223, 32:220] + face_pool,
    and AttrLoss's Resize(224) with nothing after it, on the tensor as it comes."""
    resize = lambda x, side: F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)  # noqa: E731
    arcface = F.adaptive_avg_pool2d(resize(pixels, 256)[:, :, 35:223, 32:220], networks.arcface.input_size)
    return arcface, resize(pixels, networks.farl.config.input_size)


def test_reference_feeds_a_constant_real_face_in_0_1_and_corrected_in_minus_1_1_with_clip_statistics(networks):
    colour = np.array([51, 102, 204], np.uint8)  # 0.2, 0.4, 0.8 in [0, 1]; -0.6, -0.2, 0.6 in [-1, 1]
    real = CanonicalImages.from_uint8(np.broadcast_to(colour, (1, 64, 64, 3)).copy())
    per_channel = lambda values: torch.tensor(values).view(1, 3, 1, 1)  # noqa: E731

    arcface, farl = network_inputs(networks, lambda: falco_targets(real, networks, "reference"))
    assert torch.allclose(arcface, per_channel([0.2, 0.4, 0.8]).expand_as(arcface), atol=1e-5)
    assert torch.allclose(farl, per_channel([0.2, 0.4, 0.8]).expand_as(farl), atol=1e-5)

    arcface, farl = network_inputs(networks, lambda: falco_targets(real, networks, "corrected"))
    assert torch.allclose(arcface, per_channel([-0.6, -0.2, 0.6]).expand_as(arcface), atol=1e-5)
    clip = [(unit - mean) / std for unit, mean, std in zip((0.2, 0.4, 0.8), CLIP_MEAN, CLIP_STD)]  # 0.0573, 0.7788, 1.4206
    assert torch.allclose(farl, per_channel(clip).expand_as(farl), atol=1e-4)


def test_reference_feeds_both_networks_what_the_authors_code_feeds_them(networks):
    rng = np.random.default_rng(7)
    real_pixels = rng.integers(0, 256, size=(2, 96, 96, 3), dtype=np.uint8)
    generated = torch.from_numpy(rng.normal(0, 0.8, size=(2, 3, 96, 96)).astype(np.float32))  # overshoots [-1, 1]

    # the real face: ToTensor, [0, 1]
    seen = network_inputs(networks, lambda: falco_targets(CanonicalImages.from_uint8(real_pixels), networks, "reference"))
    unit = torch.from_numpy(real_pixels).permute(0, 3, 1, 2).float() / 255
    for got, expected in zip(seen, the_authors_inputs(unit, networks)):
        assert torch.allclose(got, expected, atol=1e-5)
    # the generated face: the generator's output as it is, not clamped
    seen = network_inputs(networks, lambda: embed_for_loss(CanonicalImages(generated), networks, "reference", False))
    for got, expected in zip(seen, the_authors_inputs(generated, networks)):
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("option", ["preprocessing=authors", "pairing_metric=manhattan"])
def test_an_unknown_preprocessing_or_pairing_metric_is_refused_in_one_line(tiny_weights, tmp_path, option):
    key, value = option.split("=")
    with pytest.raises(MethodError, match=f"method 'falco': {key} must be one of .*, got '{value}'"):
        FalcoMethod(MethodContext(tiny_weights.store(), work=work_storage(tmp_path)), {key: value})


def test_an_unchanged_face_costs_nothing_when_corrected_but_not_under_the_reference_range_shift(networks):
    real = CanonicalImages.from_uint8(synthetic_face(3, 64)[None])
    for preprocessing, zero_cost in (("corrected", True), ("reference", False)):
        settings = OptimSettings(margin=1.0, preprocessing=preprocessing)
        total, cosine, attribute = face_losses(real, falco_targets(real, networks, preprocessing), networks, settings)
        assert (float(attribute[0]) < 1e-4 and float(cosine[0]) > 0.9999) == zero_cost


def test_without_the_clamp_saturated_pixels_pass_gradients_to_the_code(networks):
    generator = networks.generator
    ws = generator.mapping(torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(0)))
    ws = ws.unsqueeze(1).repeat(1, generator.num_ws, 1).detach()
    saturated = generator.synthesis(ws).abs() > 1
    assert saturated.any()
    gradients = {}
    for clamp in (True, False):
        code = ws.clone().requires_grad_(True)
        render(generator, code, bf16=False, clamp=clamp).tensor[saturated].sum().backward()
        gradients[clamp] = code.grad.abs().sum()
    assert gradients[True] == 0 and gradients[False] > 0
    unclamped, clamped = render(generator, ws, False, clamp=False).tensor, render(generator, ws, False).tensor
    assert torch.equal(unclamped[~saturated], clamped[~saturated])  # elsewhere the clamp changes nothing


def test_pairing_by_euclidean_distance_and_by_cosine_on_a_hand_computed_example():
    # q = (1, 0); a = (10, 1): cos 10/sqrt(101) = 0.99504, distance sqrt(82) = 9.055;
    #             b = (0.9, 0.5): cos 0.9/sqrt(1.06) = 0.87416, distance sqrt(0.26) = 0.510
    bank = np.array([[10.0, 1.0], [0.9, 0.5]], np.float32)
    query = np.array([[1.0, 0.0]], np.float32)
    (by_cosine,) = FakePairer(bank).pair(query)
    (by_distance,) = FakePairer(bank, metric="euclidean").pair(query)
    assert by_cosine.fake_index == 0 and by_cosine.similarity == pytest.approx(0.99504, abs=1e-5)
    assert by_distance.fake_index == 1 and by_distance.similarity == pytest.approx(0.87416, abs=1e-5)  # reported as a cosine
    # unique pairs: q takes b; a second query (9, 1) is then left with a
    unique = FakePairer(bank, metric="euclidean").pair(np.array([[1.0, 0.0], [9.0, 1.0]], np.float32), unique=True, keys=["q", "r"])
    assert [pair.fake_index for pair in unique] == [1, 0]
    with pytest.raises(ValueError, match="pairing metric"):
        FakePairer(bank, metric="manhattan")


def test_euclidean_pairing_uses_the_raw_embeddings_and_rebuilds_a_bank_stored_without_norms(tiny_weights, tmp_path):
    context = MethodContext(tiny_weights.store(), seed=9090, work=work_storage(tmp_path / "out"))
    options = {"bank_size": "16", "steps": "0"}
    bank = FalcoMethod(context, options).ensure_bank()
    with np.load(bank.path) as data:  # the bank as an older version wrote it: no norms
        old = {name: data[name] for name in ("ws", "features", "meta")}
    np.savez(bank.path, **old)
    assert FalcoMethod(context, options).ensure_bank().norms is None  # cosine pairing still reads it

    method = FalcoMethod(context, {**options, "pairing_metric": "euclidean"})
    rebuilt = method.ensure_bank()
    assert rebuilt.norms is not None and np.allclose(rebuilt.features, bank.features, atol=1e-6)
    face = synthetic_face(9)  # a face whose nearest fake by distance is not its nearest by cosine
    pairing = method.models.networks.farl(CanonicalImages.from_uint8(face[None]))
    raw = (pairing.cls * pairing.cls_norm[:, None]).detach().numpy()
    nearest = int(np.linalg.norm(rebuilt.raw_features() - raw, axis=1).argmin())
    assert nearest != int((rebuilt.features @ pairing.cls.detach().numpy()[0]).argmax())
    (output,) = method.anonymize([FaceCrop(face, None, "f.jpg#0")])
    assert output.metrics["fake_index"] == nearest


def test_the_automatic_bank_holds_twice_the_faces_above_5000_when_the_count_is_known(tiny_weights, tmp_path):
    assert [default_bank_size(faces) for faces in (None, 3, 5000, 6000)] == [10_000, 10_000, 10_000, 12_000]

    def method(aligned: bool, expected: int, **options: str) -> FalcoMethod:
        context = MethodContext(tiny_weights.store(), work=work_storage(tmp_path), aligned_input=aligned, expected_faces=expected)
        return FalcoMethod(context, {"steps": "0", **options})

    assert method(True, 6000).bank_key.size == 12_000  # --aligned: one face per image
    assert method(False, 6000).bank_key.size == 10_000  # photos: the face count is unknown before detection
    small = method(True, 100, bank_size="48")
    assert Pipeline.privacy_note(small) == ("falco: bank_size=48 is smaller than the run's 100 faces, so several faces start "
                                            "from the same fake (the paper needs more fakes than faces); the automatic size would be 10000")
    assert method(True, 40, bank_size="48").privacy_caveat() is None
    assert method(True, 100).privacy_caveat() is None  # the automatic size never warns


def test_a_run_with_a_bank_smaller_than_its_faces_says_so(tiny_env, shared_dir, tmp_path):
    images = copy_celeba_ids(shared_dir, tmp_path / "celeba", identities=("0",), per_identity=3)
    result = cli("run", images, "--out", tmp_path / "out", "--aligned", "--method", "falco", "--device", "cpu",
                 "-p", "steps=1", "-p", "bank_size=2", "-p", "preprocessing=reference", "-p", "pairing_metric=euclidean")
    assert result.exit_code == 0, result.output
    assert "bank_size=2 is smaller than the run's 3 faces" in " ".join(result.output.split())
    params = json.loads(read_manifest(tmp_path / "out" / "manifest.parquet")[1]["method_params"])
    assert params["preprocessing"] == "reference" and params["pairing_metric"] == "euclidean"


def test_the_loss_balance_benchmark_measures_both_terms_under_both_preprocessings(tiny_weights, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for seed in range(2):
        cv2.imwrite(str(folder / f"{seed}.png"), synthetic_face(seed))
    rows = falco_loss_balance.measure(tiny_weights.store(), folder, count=2, steps=2, bank_size=8, device="cpu")
    assert [(row["preprocessing"], row["face"]) for row in rows] == [
        (preprocessing, f"{seed}.png#0") for preprocessing in ("corrected", "reference") for seed in range(2)]
    for row in rows:
        for label in ("step 0", "step 2"):
            assert row[f"id/attr {label}"] == pytest.approx(row[f"id {label}"] / row[f"attr {label}"], rel=1e-2, abs=1e-3)
    corrected, reference = rows[0], rows[2]
    assert corrected["attr step 0"] != reference["attr step 0"]  # same face, same fake: the inputs differ
    summary = falco_loss_balance.means(rows, 2)
    assert [row["preprocessing"] for row in summary] == ["corrected", "reference"]


def test_the_loss_balance_benchmark_says_what_is_missing_without_the_weights(tmp_path, capsys):
    (tmp_path / "faces").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        falco_loss_balance.main([str(tmp_path / "faces"), "--weights-dir", str(tmp_path / "empty"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "falco_loss_balance: needs FALCO's real weights" in capsys.readouterr().err
