"""FALCO's parts on the tiny networks: optimisation, frozen layers, pairing, bank cache, determinism, batching.

Real faces are smooth synthetic 256 px crops (no ../shared needed); the CLI tests on real photos
are in test_falco_cli.py. Banks stay small (tens of fakes) so every test runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymize.io.storage import work_storage
from anonymize.methods.base import FaceCrop, MethodContext, MethodError
from anonymize.methods.falco.loss import OptimSettings, optimise_latents
from anonymize.methods.falco.method import FalcoMethod
from anonymize.methods.latent import bank as bank_module
from anonymize.methods.latent.bank import BankKey, bank_dir, default_bank_size, sample_z
from anonymize.methods.latent.optimize import lr_at, mix_codes, real_targets
from anonymize.methods.latent.pairing import FakePairer, PairingError
from anonymize.methods.registry import no_download_alternative
from anonymize.models import registry
from anonymize.models.images import CanonicalImages
from anonymize.weights import WeightsError
from tests.helpers import FALCO_ARTEFACTS, synthetic_face

SMALL_BANK = "48"
FALCO_METRICS = {"fake_index", "pairing_similarity", "id_cos_before", "id_cos_after", "id_margin_gap",
                 "attr_loss_start", "attr_loss_end", "steps", "seed", "latent_path"}


@pytest.fixture(scope="module")
def faces() -> list[FaceCrop]:
    return [FaceCrop(synthetic_face(seed), None, f"folder/face {seed}.jpg#0") for seed in range(3)]


@pytest.fixture
def make_method(tiny_weights, tmp_path):
    def make(seed: int = 0, margin: float = 0.0, **options: str) -> FalcoMethod:
        options.setdefault("margin", str(margin))
        context = MethodContext(tiny_weights.store(), seed=seed, work=work_storage(tmp_path / "out"), expected_faces=3)
        return FalcoMethod(context, {"bank_size": SMALL_BANK, "steps": "8", **options})

    return make


def optimisation_inputs(method: FalcoMethod, faces: list[FaceCrop]):
    """The real targets and the mixed starting code, as FalcoMethod.anonymize builds them."""
    bank = method.ensure_bank()
    real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]))
    with torch.no_grad():
        real_ws = method.models.encoder(real)
        pairs = method.pairer.pair(method.models.networks.farl(real).cls.numpy())
    fake_ws = torch.from_numpy(bank.ws[[pair.fake_index for pair in pairs]])
    initial = mix_codes(real_ws, fake_ws, method.params.trainable_layers)
    return real_targets(real, method.models.networks), initial


def test_the_loss_falls_and_the_identity_cosine_moves_toward_the_margin(make_method, faces):
    method = make_method()
    targets, initial = optimisation_inputs(method, faces)
    settings = OptimSettings(steps=25, margin=0.5)
    result = optimise_latents(initial, method.params.trainable_layers, targets, method.models.networks, settings)
    assert result.loss_history.shape == (26, len(faces))
    assert torch.all(result.loss_history[-1] < result.loss_history[0])
    assert torch.all((result.id_cos_end - 0.5).abs() < (result.id_cos_start - 0.5).abs())


def test_frozen_layers_never_change_and_trainable_layers_do(make_method, faces):
    method = make_method()
    targets, initial = optimisation_inputs(method, faces)
    layers = method.params.trainable_layers
    result = optimise_latents(initial, layers, targets, method.models.networks, OptimSettings(steps=5))
    frozen = [layer for layer in range(initial.shape[1]) if layer not in layers]
    assert torch.equal(result.ws[:, frozen], initial[:, frozen])
    assert not torch.equal(result.ws[:, list(layers)], initial[:, list(layers)])


def test_the_starting_code_takes_trainable_layers_from_the_fake_and_the_rest_from_the_inversion():
    real, fake = torch.randn(2, 9, 4), torch.randn(2, 4)  # a fake's W code is the same on every layer
    mixed = mix_codes(real, fake, (3, 4, 5, 6, 7))
    assert torch.equal(mixed[:, :3], real[:, :3]) and torch.equal(mixed[:, 8:], real[:, 8:])
    assert torch.equal(mixed[:, 3:8], fake.unsqueeze(1).expand(2, 5, 4))


def test_the_learning_rate_decays_by_gamma_at_75_and_90_percent_of_the_steps():
    settings = OptimSettings(steps=50, lr=0.01, lr_gamma=0.8)
    assert [lr_at(step, settings) for step in (0, 36, 37, 44, 45, 49)] == pytest.approx([0.01, 0.01, 0.008, 0.008, 0.0064, 0.0064])


def test_pairing_picks_the_true_nearest_neighbour_by_cosine():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, 24)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(500, 1)).astype(np.float32)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
    pairs = FakePairer(bank).pair(queries)
    assert [pair.fake_index for pair in pairs] == list(cosine.argmax(axis=1))
    assert [pair.similarity for pair in pairs] == pytest.approx(list(cosine.max(axis=1)), abs=1e-5)


def test_unique_pairs_give_every_face_its_own_fake_across_calls_best_match_first():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(30, 8)).astype(np.float32)
    pairer = FakePairer(bank)
    same_face = np.repeat(bank[7:8] + 0.01, 4, axis=0)  # four faces that all want fake 7
    first_keys, second_keys = [f"a#{i}" for i in range(4)], [f"b#{i}" for i in range(4)]
    first = pairer.pair(same_face, unique=True, keys=first_keys)
    pairer.reserve(first_keys, first)
    second = pairer.pair(same_face, unique=True, keys=second_keys)
    indices = [pair.fake_index for pair in first + second]
    assert len(set(indices)) == 8
    assert first[0].fake_index == 7
    assert [pair.similarity for pair in first] == sorted((pair.similarity for pair in first), reverse=True)
    pairer.reserve(second_keys, second)
    with pytest.raises(PairingError, match="raise bank_size"):
        pairer.pair(rng.normal(size=(23, 8)).astype(np.float32), unique=True)


def test_unique_pairs_reserve_nothing_until_the_batch_succeeds_and_a_retried_face_keeps_its_fake():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(30, 8)).astype(np.float32)
    pairer = FakePairer(bank)
    queries = bank[[3, 9]] + 0.01
    keys = ["x.jpg#0", "x.jpg#1"]
    tentative = pairer.pair(queries, unique=True, keys=keys)
    assert pairer.used == set()  # the batch failed before reserve(): no fake is burnt
    assert pairer.pair(queries, unique=True, keys=keys) == tentative
    pairer.reserve(keys, tentative)
    assert pairer.used == {3, 9}
    again = pairer.pair(queries, unique=True, keys=keys)  # the same faces, retried image by image
    assert again == tentative
    pairer.reserve(keys, again)
    assert pairer.used == {3, 9}  # nothing burnt by the retry
    other = pairer.pair(queries, unique=True, keys=["y.jpg#0", "y.jpg#1"])
    assert {pair.fake_index for pair in other}.isdisjoint({3, 9})


def test_unique_pairs_hold_over_a_whole_run_of_batches(make_method, faces):
    method = make_method(unique_pairs="true", steps="0")
    renamed = [FaceCrop(face.image, face.landmarks, face.key + "-second") for face in faces]
    results = method.anonymize(faces) + method.anonymize(renamed)
    assert len({face.metrics["fake_index"] for face in results}) == 2 * len(faces)


def test_a_failed_falco_batch_reserves_no_fake(make_method, faces, monkeypatch):
    method = make_method(unique_pairs="true", steps="0")
    method.ensure_bank()

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("anonymize.methods.falco.method.optimise_latents", failing)
    with pytest.raises(RuntimeError):
        method.anonymize(faces)
    assert method.pairer.used == set()


def test_the_bank_is_built_once_then_served_from_the_cache(make_method, monkeypatch):
    first = make_method(seed=4242)
    built = first.ensure_bank()
    assert built.path.parent == bank_dir(first.context.weights.root) and built.ws.shape == (48, 32)
    stamp = built.path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the bank was rebuilt instead of read from the cache")

    monkeypatch.setattr(bank_module, "build_bank_arrays", no_build)
    again = make_method(seed=4242).ensure_bank()
    assert again.path == built.path and built.path.stat().st_mtime_ns == stamp
    assert np.array_equal(again.ws, built.ws) and np.array_equal(again.features, built.features)
    smaller = make_method(seed=4242, bank_size="20").ensure_bank()  # a prefix of the cached bank serves it
    assert smaller.path == built.path and np.array_equal(smaller.ws, built.ws[:20])


def test_a_larger_bank_starts_with_the_smaller_banks_fakes():
    rows = torch.cat(list(sample_z(seed=3, size=1500, z_dim=4)))
    assert torch.equal(rows[:40], torch.cat(list(sample_z(seed=3, size=40, z_dim=4))))
    assert not torch.equal(rows[:40], torch.cat(list(sample_z(seed=4, size=40, z_dim=4))))


def test_the_automatic_bank_size_does_not_depend_on_a_run_of_up_to_5000_faces(tiny_weights, tmp_path):
    def bank_size(expected_faces: int | None) -> int:
        context = MethodContext(tiny_weights.store(), work=work_storage(tmp_path), aligned_input=True, expected_faces=expected_faces)
        return FalcoMethod(context, {"steps": "0"}).bank_key.size

    # a run of 5000 aligned faces, a --limit 3 run, a size unknown: one bank (above 5000: test_falco_preprocessing.py)
    assert bank_size(5000) == bank_size(3) == bank_size(None) == default_bank_size() == 10_000


def test_the_bank_key_depends_on_generator_farl_seed_psi_and_size():
    key = BankKey("a" * 64, "b" * 64, seed=0, size=100, psi=0.7)
    variants = [BankKey("c" * 64, "b" * 64, 0, 100, 0.7), BankKey("a" * 64, "c" * 64, 0, 100, 0.7),
                BankKey("a" * 64, "b" * 64, 1, 100, 0.7), BankKey("a" * 64, "b" * 64, 0, 100, 0.5)]
    assert len({key.family, *(variant.family for variant in variants)}) == 5
    larger = BankKey("a" * 64, "b" * 64, 0, 200, 0.7)
    assert larger.family == key.family and larger.filename != key.filename


def test_the_same_seed_gives_the_same_output(make_method, faces):
    first = make_method(seed=5, steps="3").anonymize(faces)
    second = make_method(seed=5, steps="3").anonymize(faces)
    for a, b in zip(first, second):
        assert np.array_equal(a.crop, b.crop) and a.metrics == b.metrics


def test_a_batch_gives_what_one_face_at_a_time_gives(make_method, faces):
    method = make_method(steps="6")
    batched = method.anonymize(faces)
    for face, together in zip(faces, batched):
        alone = method.anonymize([face])[0]
        assert alone.metrics["fake_index"] == together.metrics["fake_index"]
        assert np.abs(alone.crop.astype(int) - together.crop.astype(int)).max() <= 2
        for name in ("id_cos_after", "attr_loss_end"):
            assert alone.metrics[name] == pytest.approx(together.metrics[name], abs=1e-3)


def test_every_falco_metric_is_filled_and_is_a_manifest_column(make_method, faces):
    method = make_method(margin=0.3, save_latents="true", steps="2")
    results = method.anonymize(faces[:2])
    for face in results:
        assert set(face.metrics) == FALCO_METRICS and FALCO_METRICS <= set(FalcoMethod.metric_columns)
        assert all(value is not None for value in face.metrics.values())
        assert face.metrics["id_margin_gap"] == pytest.approx(abs(face.metrics["id_cos_after"] - 0.3))
        assert face.metrics["steps"] == 2 and face.crop.shape == (32, 32, 3) and face.crop.dtype == np.uint8


def test_saved_latents_re_render_the_output(make_method, faces):
    method = make_method(save_latents="true", steps="3")
    result = method.anonymize(faces[:1])[0]
    path = method.context.work.root / result.metrics["latent_path"]
    assert path.parent == method.context.work.root / ".anonymize" / "latents" and path.suffix == ".npy"
    code = torch.from_numpy(np.load(path, allow_pickle=False)).unsqueeze(0)
    with torch.no_grad():
        rendered = method.models.networks.generator(code).to_uint8()[0]
    assert np.array_equal(rendered, result.crop)


def test_missing_weights_fail_at_construction_with_the_weights_managers_message(tiny_weights, tmp_path):
    store = tiny_weights.store(tmp_path / "empty-weights")
    with pytest.raises(WeightsError) as failure:
        FalcoMethod(MethodContext(store, work=work_storage(tmp_path / "out")), {"bank_size": SMALL_BANK})
    assert store.missing_message(list(FALCO_ARTEFACTS), "FALCO", no_download_alternative()) == str(failure.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "empty-weights" / "banks").exists()


def test_trainable_layers_beyond_the_generator_are_refused(make_method):
    with pytest.raises(MethodError, match=r"\[9\].*0\.\.7"):
        make_method(trainable_layers="3,9")


def test_bf16_without_cuda_is_refused(make_method):
    with pytest.raises(MethodError, match="CUDA"):
        make_method(bf16="true")


def test_the_manifest_learns_every_weight_hash_and_the_bank_key(make_method, tiny_weights):
    method = make_method()
    store = tiny_weights.store()
    assert method.weights_used() == {name: store.sha256(name) for name in FALCO_ARTEFACTS}
    described = method.describe()
    assert described["bank"]["size"] == 48 and described["bank"]["generator_sha256"] == store.sha256("stylegan2_ffhq1024_genforce")
    assert method.default_batch_size() == 4


def test_the_registry_loads_each_file_once_per_device_frozen(tiny_weights):
    store = tiny_weights.store()
    farl = registry.load_farl_model(store)
    assert registry.load_pretrained("farl", store, "cpu") is farl
    assert not farl.training and not any(p.requires_grad for p in farl.parameters())
    _, decoder = registry.load_e4e_pair(store)
    assert registry.load_generator(store, "e4e") is decoder
    genforce = registry.load_generator(store, "genforce")
    # Like the real files, e4e's decoder and GenForce's file hold one network in two layouts.
    ws = torch.randn(2, genforce.num_ws, genforce.w_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(genforce(ws).tensor, decoder(ws).tensor, atol=1e-4)
    with pytest.raises(ValueError, match="unknown pretrained model"):
        registry.load_pretrained("stylegan3", store)
