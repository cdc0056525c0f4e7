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
from anonymize.methods.cfa.angles import CalibratedThreshold, calibrated_threshold, parse_angle, parse_angles, relative_to_threshold, resolve_angles
from anonymize.methods.cfa.content import ContentTarget, content_loss, identity_region
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
    def make(identity_from: str = "folder", store=None, **options: str) -> CfaMethod:
        context = MethodContext(store or tiny_weights.store(), seed=3, work=work_storage(tmp_path / "out"),
                                plan=plan_storage(tmp_path / "out", "cfa"), identity_from=identity_from)  # type: ignore[arg-type]
        return CfaMethod(context, {"bank_size": "48", "steps": "4", **options})  # direction: the default, random

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
                             ({"direction": "north"}, "random, bank"), ({"variants": "0"}, "variants"),
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


# -- the direction: the paper's random one by default ---------------------------------------------------
def test_the_default_direction_is_the_papers_random_one_and_builds_no_bank(make_method, faces):
    assert CfaMethod.Params().direction == "random"
    method = planned(make_method(), faces)
    assert method.params.direction == "random" and method.bank is None and "bank" not in method.describe()
    assert (method.state.fakes == -1).all()
    assert method.anonymize(faces[:1])[0].metrics["fake_index"] is None


# -- angles relative to ArcFace's calibrated threshold --------------------------------------------------
@pytest.mark.parametrize("text, value, relative", [("70", 70.0, False), ("threshold", 0.0, True), ("threshold+10", 10.0, True),
                                                   ("Threshold - 2.5", -2.5, True), ("threshold+.5", 0.5, True)])
def test_an_angle_is_degrees_or_degrees_from_the_calibrated_threshold(text, value, relative):
    spec = parse_angle(text)
    assert (spec.value, spec.relative) == (value, relative)
    assert spec.resolve(60.0) == (60.0 + value if relative else value)


@pytest.mark.parametrize("text", ["threshold*2", "thresh+1", "threshold+", "nan", "10 degrees"])
def test_an_angle_that_is_neither_is_refused_in_one_line(text):
    with pytest.raises(ValueError, match="neither degrees|finite") as error:
        parse_angle(text)
    assert "\n" not in str(error.value)


def test_relative_angles_resolve_against_the_arcface_threshold_calibrate_stored(tmp_path):
    from anonymize.audit.calibrate import calibrate, write_record
    from anonymize.weights import WeightsStore

    store = WeightsStore(tmp_path / "weights")
    specs = parse_angles("40, threshold, threshold+10")
    with pytest.raises(ValueError, match=r"anonymize calibrate FACES_DIR --recognizer arcface") as error:
        resolve_angles(specs, calibrated_threshold(store), store)  # nothing calibrated: say what to run
    assert str(tmp_path / "weights" / "calibration" / "arcface.json") in str(error.value)
    # by hand: the closest different pair is 1.4 - 0.1 = 1.3 rad apart, so at FAR 0 the threshold angle is 1.3 rad
    embeddings = np.array([[1.0, 0.0], [math.cos(0.1), math.sin(0.1)], [0.0, 1.0], [math.cos(1.4), math.sin(1.4)]])
    write_record(calibrate(embeddings, [0, 0, 1, 1], far=0.0, recogniser="arcface"), tmp_path / "faces", tmp_path / "weights")
    threshold = calibrated_threshold(store)
    assert threshold is not None and threshold.angle == pytest.approx(math.degrees(1.3)) and threshold.far == 0.0
    assert resolve_angles(specs, threshold, store) == pytest.approx((40.0, math.degrees(1.3), math.degrees(1.3) + 10))
    assert relative_to_threshold((80.0,), threshold) == f"80 = threshold {80 - math.degrees(1.3):+.1f}"
    with pytest.raises(ValueError, match=r"\(0, 180\]"):
        resolve_angles(parse_angles("threshold+110"), threshold, store)


def test_the_method_resolves_threshold_angles_and_states_them_against_the_threshold(make_method, faces, monkeypatch):
    with pytest.raises(MethodError, match="calibrate .*--recognizer arcface"):
        make_method(angle="threshold+10")  # the tiny weights folder holds no ArcFace calibration
    stored = CalibratedThreshold(angle=60.0, cosine=0.5, far=0.001, faces_dir="ids", path="arcface.json")
    monkeypatch.setattr("anonymize.methods.cfa.method.calibrated_threshold", lambda store: stored)
    method = make_method(angles="threshold+10,threshold-5")
    assert method.angles == (70.0, 55.0) and [render.label for render in method.renders] == ["a70-v0", "a55-v0"]
    assert method.describe()["arcface_threshold"] == {"angle": 60.0, "far": 0.001, "faces_dir": "ids"}
    figures = planned(method, faces).plan()
    assert figures["angles"] == "70 = threshold +10.0, 55 = threshold -5.0 (ArcFace's calibrated 60.0 degrees at FAR 0.001)"
    assert "arcface_threshold" not in make_method(angle="70").describe()  # a plain run's settings ignore calibrations


# -- the content term and the e4e start -----------------------------------------------------------------
def hand_landmarks(size: int = 64) -> np.ndarray:
    """68 iBUG points of a schematic face on a 64 px crop (scaled to ``size``): eyes at (20, 25) and (44, 25)."""
    jaw = [(6 + 52 * i / 16, 34 + 24 * math.sin(math.pi * i / 16)) for i in range(17)]
    brows = [(14 + 3 * i, 19) for i in range(5)] + [(38 + 3 * i, 19) for i in range(5)]
    nose = [(32, 24 + 3 * i) for i in range(4)] + [(28 + 2 * i, 37) for i in range(5)]

    def ring(cx: float, cy: float, rx: float, ry: float, n: int) -> list[tuple[float, float]]:
        return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]

    points = jaw + brows + nose + ring(20, 25, 4, 2, 6) + ring(44, 25, 4, 2, 6) + ring(32, 46, 8, 3, 12) + ring(32, 46, 5, 1, 8)
    return np.array(points, dtype=np.float64) * size / 64


def test_the_identity_region_is_brows_eyes_nose_and_mouth_and_excludes_the_rest():
    region = identity_region(hand_landmarks(), 64)
    assert region.shape == (64, 64) and region.min() >= 0 and region.max() <= 1
    for x, y in ((20, 25), (44, 25), (20, 19), (47, 19), (32, 30), (32, 37), (32, 46), (26, 46)):  # eyes, brows, nose, mouth
        assert region[y, x] == 1.0, (x, y)
    for x, y in ((32, 4), (8, 40), (56, 40), (2, 2), (61, 2), (4, 60), (60, 60)):  # forehead, cheeks, corners
        assert region[y, x] == 0.0, (x, y)


@pytest.fixture(scope="module")
def lpips_model(audit_weights):
    from anonymize.models.registry import load_pretrained

    return load_pretrained("lpips_alex", audit_weights.store())


def test_the_content_term_is_zero_for_the_same_face_and_grows_with_changes_outside_the_region_only(lpips_model):
    original = synthetic_face(5, size=128)
    region = identity_region(hand_landmarks(128), 128)
    target = ContentTarget.from_regions(CanonicalImages.from_uint8(original), region[None])

    def content(image: np.ndarray) -> float:
        return float(content_loss(CanonicalImages.from_uint8(image), target, lpips_model)[0])

    def brighter(where: np.ndarray, amount: int) -> np.ndarray:
        return np.where(where[..., None], np.clip(original.astype(int) + amount, 0, 255), original).astype(np.uint8)

    assert content(original) == 0.0
    assert content(brighter(region == 1.0, 60)) == 0.0  # a new nose, eyes, mouth: free
    small, large = content(brighter(region == 0.0, 10)), content(brighter(region == 0.0, 40))
    assert 0 < small < large
    grey = np.full_like(original, 100)  # the pixel term by hand: +10 levels (10 / 127.5 in [-1, 1]) where the region is 0,
    changed = np.where((region == 0.0)[..., None], grey + 10, grey).astype(np.uint8)  # averaged with weights 1 - region
    no_perceptual = lambda a, b: torch.zeros(len(a))  # noqa: E731
    pixel = content_loss(CanonicalImages.from_uint8(changed), ContentTarget.from_regions(CanonicalImages.from_uint8(grey), region[None]),
                         no_perceptual)
    assert float(pixel[0]) == pytest.approx(10 / 127.5 * (region == 0.0).sum() / (1.0 - region).sum(), rel=1e-5)


def test_content_weight_adds_the_weighted_content_term_to_the_loss(make_method, faces, lpips_model):
    method = make_method()
    networks, inversion, originals = loss_inputs(method, faces[:2])
    real = CanonicalImages.from_uint8(np.stack([face.image for face in faces[:2]]))
    target = ContentTarget.from_regions(real, np.stack([identity_region(hand_landmarks(256), 256)] * 2))
    anchors = originals.identity
    targets = torch.nn.functional.normalize(anchors.flip(0) + 0.5, dim=1)
    arguments = (networks, anchors, targets, torch.tensor([0.2, 0.3]), originals.tokens, inversion)
    ws = inversion + 0.1
    images = CanonicalImages(networks.generator(ws, noise_mode="const").tensor)
    without, _ = CfaLoss(*arguments, CfaWeights())(images, ws, False)
    with_content, parts = CfaLoss(*arguments, CfaWeights(content_weight=2.0), target, lpips_model)(images, ws, False)
    torch.testing.assert_close(with_content, without + 2.0 * content_loss(images, target, lpips_model))
    assert torch.all(parts["content"] > 0)


def test_the_manifest_records_the_e4e_starting_angle_and_a_smaller_angle_warns_once(make_method, faces):
    method = planned(make_method(angle="0.5", steps="0"), faces)
    warnings = method.plan_warnings()
    assert len(warnings) == 1 and "for 4 of 4 faces the e4e reconstruction" in warnings[0]
    results = method.anonymize(faces)
    networks = method.models.networks
    with torch.no_grad():
        real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]))
        start = networks.arcface(networks.generator(method.models.encoder(real).float(), noise_mode="const")).numpy()
    for index, face in enumerate(results):
        expected = angle_between(start[index], method.state.anchors[method.state.units[index]])
        assert face.metrics["cfa_e4e_angle"] == pytest.approx(expected, abs=1e-3)
        assert face.metrics["cfa_e4e_angle"] == pytest.approx(face.metrics["cfa_achieved_angle"], abs=1e-3)  # 0 steps
        assert face.metrics["cfa_content"] is None
    assert planned(make_method(angle="180", steps="0"), faces).plan_warnings() == []


def test_with_content_weight_the_method_needs_lpips_and_records_the_term(make_method, faces, audit_weights, tiny_weights):
    with pytest.raises(MethodError, match="content_weight needs LPIPS"):
        make_method(content_weight="1")  # the tiny weights folder has no LPIPS
    method = planned(make_method(store=audit_weights.store(), content_weight="1", steps="2"), faces[:2])
    assert {"lpips_alex_linear", "torchvision_alexnet", "dlib_shape_predictor_68"} <= set(method.weights_used())
    for face in method.anonymize(faces[:2]):
        assert face.metrics["cfa_content"] > 0
