"""CFA on ArcFace's sphere, on the tiny networks: target geometry, the objective, directions, leakage, people.

Faces are the smooth synthetic crops of test_falco.py (no ../shared needed); the CLI run on real
aligned photos is in test_cfa_cli.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anonymize.methods.base import FaceCrop, MethodContext, MethodError
from anonymize.methods.cfa.leakage import NOBODY, LeakageIndex
from anonymize.methods.cfa.method import CfaMethod
from anonymize.methods.cfa.objective import CfaLoss, CfaWeights
from anonymize.methods.cfa.sphere import (
    DegenerateDirection,
    angle_between,
    direction_seed,
    orthogonal_direction,
    random_direction,
    target_on_sphere,
)
from anonymize.methods.falco.loss import OptimSettings, optimise_latents
from anonymize.methods.latent.optimize import Targets, optimise_codes, real_targets
from anonymize.io.storage import plan_storage, work_storage
from anonymize.models.images import CanonicalImages
from tests.helpers import CFA_COLUMNS, synthetic_face


# -- the sphere ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [10.0, 40.0, 70.0, 90.0, 135.0])
def test_the_target_is_a_unit_vector_at_exactly_the_angle_from_e(angle):
    rng = np.random.default_rng(0)
    e, f = rng.normal(size=512), rng.normal(size=512)
    u = orthogonal_direction(e, f)
    target = target_on_sphere(e, u, angle)
    assert np.linalg.norm(target) == pytest.approx(1.0, abs=1e-12)
    assert target @ (e / np.linalg.norm(e)) == pytest.approx(math.cos(math.radians(angle)), abs=1e-12)
    assert angle_between(target, e) == pytest.approx(angle, abs=1e-6)


def test_the_bank_direction_is_the_fakes_identity_with_e_removed_so_the_target_lies_toward_it():
    e = np.array([1.0, 0.0, 0.0])
    f = np.array([0.6, 0.8, 0.0])  # by hand: f - (f.e) e = (0, 0.8, 0) -> u = (0, 1, 0)
    assert orthogonal_direction(e, f) == pytest.approx([0.0, 1.0, 0.0])
    target = target_on_sphere(e, orthogonal_direction(e, f), 30.0)
    assert target == pytest.approx([math.cos(math.radians(30)), math.sin(math.radians(30)), 0.0])
    # on the great circle from e to f: the target is a combination of e and f only
    assert np.linalg.matrix_rank(np.stack([e, f, target])) == 2
    with pytest.raises(DegenerateDirection):
        orthogonal_direction(e, 2 * e)


def test_random_variants_are_mutually_orthogonal_so_their_targets_meet_at_cos_squared_alpha():
    e = np.random.default_rng(1).normal(size=64)
    directions: list[np.ndarray] = []
    for variant in range(4):
        directions.append(random_direction(e, direction_seed(7, "a.jpg#0", variant, 0), directions))
    alpha = 70.0
    targets = [target_on_sphere(e, u, alpha) for u in directions]
    for i in range(4):
        assert directions[i] @ e == pytest.approx(0.0, abs=1e-12)
        for j in range(i):
            assert targets[i] @ targets[j] == pytest.approx(math.cos(math.radians(alpha)) ** 2, abs=1e-12)


def test_a_random_direction_is_a_function_of_seed_key_variant_and_attempt():
    e = np.ones(16)
    base = random_direction(e, direction_seed(0, "a.jpg#0", 0, 0))
    assert np.array_equal(base, random_direction(e, direction_seed(0, "a.jpg#0", 0, 0)))
    for other in (direction_seed(1, "a.jpg#0", 0, 0), direction_seed(0, "b.jpg#0", 0, 0),
                  direction_seed(0, "a.jpg#0", 1, 0), direction_seed(0, "a.jpg#0", 0, 1)):
        assert not np.allclose(base, random_direction(e, other))


# -- leakage ------------------------------------------------------------------------------------------
def test_the_leakage_screen_gives_the_nearest_face_of_another_person():
    embeddings = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    index = LeakageIndex(embeddings, np.array([0, 0, 1, NOBODY]))
    query = np.array([[0.8, 0.6, 0.0], [0.0, 0.6, 0.8]])
    nearest = index.nearest(query, np.array([0, 1]))
    # by hand: person 0 ignores its own two faces -> nearest is person 1 at 0.6; person 1 -> gallery at 0.8
    assert nearest == pytest.approx([0.6, 0.8], abs=1e-6)


# -- the objective ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces() -> list[FaceCrop]:
    return [FaceCrop(synthetic_face(seed), None, f"person{seed % 2}/face {seed}.jpg#0") for seed in range(4)]


@pytest.fixture
def make_method(tiny_weights, tmp_path):
    def make(identity_from: str = "folder", **options: str) -> CfaMethod:
        context = MethodContext(tiny_weights.store(), seed=3, work=work_storage(tmp_path / "out"), plan=plan_storage(tmp_path / "out", "cfa"),
                                identity_from=identity_from)  # type: ignore[arg-type]
        return CfaMethod(context, {"bank_size": "48", "steps": "4", "direction": "random", **options})

    return make


def planned(method: CfaMethod, faces: list[FaceCrop]) -> CfaMethod:
    method.survey(faces)
    method.plan()
    return method


def loss_inputs(method: CfaMethod, faces: list[FaceCrop]):
    networks = method.models.networks
    real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]))
    with torch.no_grad():
        inversion = method.models.encoder(real).float()
    originals = real_targets(real, networks)
    return networks, inversion, originals


def test_the_loss_is_the_specs_sum_of_target_angle_attribute_and_latent_terms(make_method, faces):
    method = make_method()
    networks, inversion, originals = loss_inputs(method, faces[:2])
    anchors = originals.identity
    targets = torch.nn.functional.normalize(torch.randn(anchors.shape, generator=torch.Generator().manual_seed(1)), dim=1)
    weights = CfaWeights(lambda_tgt=2.0, lambda_ang=3.0, lambda_attr=0.5, lambda_lat=0.25)
    cos_alpha = torch.tensor([0.2, -0.1])
    loss = CfaLoss(networks, anchors, targets, cos_alpha, originals.tokens, inversion, weights)
    ws = inversion + 0.1
    images = networks.generator(ws, noise_mode="const")
    total, parts = loss(images, ws, False)
    identity = networks.arcface(images)
    cos_e = (identity * anchors).sum(1) / identity.norm(dim=1) / anchors.norm(dim=1)
    cos_t = (identity * targets).sum(1) / identity.norm(dim=1)
    attribute = (networks.farl(images).tokens - originals.tokens).abs().mean(2).sum(1)
    latent = torch.full((2,), 0.01 * ws[0].numel())
    expected = 2.0 * (1 - cos_t) + 3.0 * (cos_e - cos_alpha).abs() + 0.5 * attribute + 0.25 * latent
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["latent"], latent)


def test_with_lambda_tgt_zero_cfa_is_falco_with_margin_cos_alpha_bit_for_bit(make_method, faces):
    method = make_method()
    networks, inversion, originals = loss_inputs(method, faces[:3])
    angle = 70.0
    margin = math.cos(math.radians(angle))
    anchors = originals.identity  # unit already (ArcFace normalises)
    targets = torch.nn.functional.normalize(torch.randn(anchors.shape, generator=torch.Generator().manual_seed(0)), dim=1)
    layers = (3, 4, 5, 6, 7)
    falco = optimise_latents(inversion, layers, Targets(anchors, originals.tokens), networks,
                             OptimSettings(steps=6, lambda_id=10.0, lambda_attr=0.1, margin=margin))
    loss = CfaLoss(networks, anchors, targets, torch.full((3,), margin), originals.tokens, inversion,
                   CfaWeights(lambda_tgt=0.0, lambda_ang=10.0, lambda_attr=0.1, lambda_lat=0.0))
    cfa = optimise_codes(inversion, layers, networks.generator, loss, OptimSettings(steps=6))
    assert torch.equal(cfa.ws, falco.ws)
    assert torch.equal(cfa.loss_history, falco.loss_history)
    assert torch.equal(cfa.end["cos_anchor"], falco.id_cos_end)


def test_the_loss_falls_and_the_angle_error_shrinks_with_steps(make_method, faces):
    before = planned(make_method(steps="0", angle="60"), faces).anonymize(faces)
    after = planned(make_method(steps="30", angle="60", lr="0.03"), faces).anonymize(faces)
    for start, end in zip(before, after):
        assert abs(end.metrics["cfa_angle_error"]) < abs(start.metrics["cfa_angle_error"])
        assert end.metrics["cfa_target_cos"] > start.metrics["cfa_target_cos"]
    networks, inversion, originals = loss_inputs(make_method(), faces[:2])
    method = planned(make_method(), faces)
    plan = method.state
    anchors = plan.anchors[plan.units[:2]]
    targets = np.stack([target_on_sphere(a, plan.directions[u, 0], 60.0) for a, u in zip(anchors, plan.units[:2])])
    loss = CfaLoss(networks, torch.as_tensor(anchors, dtype=torch.float32), torch.as_tensor(targets, dtype=torch.float32),
                   torch.full((2,), 0.5), originals.tokens, inversion, CfaWeights())
    result = optimise_codes(inversion, (3, 4, 5, 6, 7), networks.generator, loss, OptimSettings(steps=20, lr=0.03))
    assert torch.all(result.loss_history[-1] < result.loss_history[0])


# -- the method -----------------------------------------------------------------------------------------
def test_every_metric_is_a_manifest_column_and_the_main_row_describes_the_first_render(make_method, faces):
    method = planned(make_method(angles="40,70", variants="2"), faces)
    results = method.anonymize(faces[:2])
    for face in results:
        assert CFA_COLUMNS <= set(face.metrics) and set(face.metrics) <= set(CfaMethod.metric_columns)
        assert face.metrics["cfa_target_angle"] == 40.0 and face.metrics["cfa_variant"] == 0
        assert face.metrics["cfa_angle_error"] == pytest.approx(face.metrics["cfa_achieved_angle"] - 40.0)
        assert list(face.renders) == ["a70-v0", "a40-v1", "a70-v1"]
        assert face.crop.shape == (32, 32, 3) and all(crop.shape == (32, 32, 3) for crop in face.renders.values())
    listed = __import__("json").loads(results[0].metrics["cfa_renders"])
    assert [entry["label"] for entry in listed] == ["a70-v0", "a40-v1", "a70-v1"]
    assert listed[0]["path"] == "person0/face 0.cfa-a70-v0.jpg" and listed[1]["variant"] == 1


def test_variants_give_different_new_identities(make_method, faces):
    method = planned(make_method(variants="3", angle="70"), faces)
    directions = method.state.directions[0]
    gram = directions @ directions.T
    assert np.allclose(gram, np.eye(3), atol=1e-10)  # random variants: orthonormal, so targets meet at cos^2(alpha)
    face = method.anonymize(faces[:1])[0]
    crops = [face.crop, face.renders["a70-v1"], face.renders["a70-v2"]]
    assert all(not np.array_equal(crops[i], crops[j]) for i in range(3) for j in range(i))


def test_consistency_person_gives_every_photo_of_a_person_the_same_target(make_method, faces):
    by_person = planned(make_method(consistency="person"), faces).state
    assert by_person.persons.tolist() == [0, 1, 0, 1]  # folders person0, person1
    assert by_person.units.tolist() == [0, 1, 0, 1] and len(by_person.anchors) == 2
    mean = by_person.embeddings[[0, 2]].mean(axis=0)
    assert by_person.anchors[0] == pytest.approx(mean / np.linalg.norm(mean))
    by_face = planned(make_method(consistency="face"), faces).state
    assert by_face.units.tolist() == [0, 1, 2, 3]
    assert not np.allclose(by_face.directions[0], by_face.directions[2])


def test_a_target_too_close_to_another_person_is_redrawn_and_the_tries_are_recorded(make_method, faces):
    strict = planned(make_method(tau_leak="-1", max_tries="4"), faces)  # no target can pass: every try is used
    assert strict.state.tries.tolist() == [[4]] * 4
    assert strict.plan()["leaky targets"] == 4
    lenient = planned(make_method(tau_leak="1"), faces)  # every target passes at once
    assert lenient.state.tries.tolist() == [[1]] * 4
    face = lenient.anonymize(faces[:1])[0].metrics
    assert face["cfa_leak_tries"] == 1 and -1 <= face["cfa_leak_cos"] <= 1 and -1 <= face["cfa_leak_cos_after"] <= 1


def test_bank_directions_point_to_the_paired_fakes_identity(make_method, faces):
    method = planned(make_method(direction="bank", variants="2"), faces)
    plan = method.state
    for unit in range(len(plan.anchors)):
        fakes = plan.fakes[unit]
        assert len(set(fakes.tolist())) == 2 and min(fakes) >= 0
        for variant, fake in enumerate(fakes):
            expected = orthogonal_direction(plan.anchors[unit], method._fake_identity(int(fake)))
            assert plan.directions[unit, variant] == pytest.approx(expected)
    assert method.anonymize(faces[:1])[0].metrics["fake_index"] == int(plan.fakes[0, 0])


def test_a_resumed_plan_keeps_the_stored_faces_and_a_copy_reads_it(make_method, faces):
    first = planned(make_method(consistency="person"), faces[:2])
    stored = first.state
    second = planned(make_method(consistency="person"), faces[2:])
    state = second.state
    assert state.keys == [face.key for face in faces]
    assert np.array_equal(state.directions[:2], stored.directions) and np.array_equal(state.anchors[:2], stored.anchors)
    assert state.units.tolist() == [0, 1, 0, 1]  # the new photos joined their stored persons
    copy = make_method(consistency="person")  # a Ray actor's copy: it did not plan
    assert np.array_equal(copy.anonymize(faces[2:3])[0].crop, second.anonymize(faces[2:3])[0].crop)
    assert copy.context.plan.read_plan()[1]["consistency"] == "person"


def test_a_face_outside_the_plan_and_bad_options_are_refused(make_method, faces):
    method = planned(make_method(), faces[:1])
    with pytest.raises(MethodError, match="not surveyed"):
        method.anonymize(faces[1:2])
    for options, message in (({"angles": "40,x"}, "comma-separated"), ({"angle": "0"}, r"\(0, 180\]"),
                             ({"direction": "north"}, "bank, random"), ({"variants": "0"}, "variants"),
                             ({"consistency": "all"}, "face, person"), ({"gallery": "/nonexistent"}, "not a folder")):
        with pytest.raises(MethodError, match=message):
            make_method(**options)


def test_a_gallery_joins_the_leakage_index_as_nobodys_faces(make_method, faces, tmp_path):
    from PIL import Image

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.fromarray(faces[0].image).save(gallery / "lookalike.png")  # the very face of person0, as a stranger
    method = planned(make_method(gallery=str(gallery), tau_leak="1"), faces)
    assert method.leakage.index.ntotal == len(faces) + 1 and method.leakage.persons[-1] == NOBODY
    own = method.state.embeddings[0]
    assert method.leakage.nearest(own[None], np.array([0]))[0] == pytest.approx(1.0, abs=1e-4)  # person0 meets the stranger


def test_people_come_from_arcface_clusters_unless_folders_are_asked_for(make_method, faces):
    together = planned(make_method(identity_from="cluster", consistency="person", cluster_distance="2.0"), faces).state
    assert together.persons.tolist() == [0, 0, 0, 0] and together.units.tolist() == [0, 0, 0, 0]
    apart = planned(make_method(identity_from="cluster", consistency="person", cluster_distance="0.000001"), faces).state
    assert apart.persons.tolist() == [0, 1, 2, 3] and len(apart.anchors) == 4


def test_a_run_with_no_face_left_plans_nothing_new(make_method):
    figures = make_method().plan()
    assert figures == {"people": 0, "targets": 0, "redraws": 0, "leaky targets": 0}
