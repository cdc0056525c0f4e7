"""`--method attributes` (AnonymousNet's stage III) on the tiny networks: targets, directions, the objective,
the shared W+ loop, batching. Faces are the smooth synthetic crops of test_falco.py."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from anonymize.attributes.io import write_attribute_table
from anonymize.attributes.ppas import randomized_response
from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.io.storage import plan_storage, work_storage
from anonymize.methods.attributes_edit.method import AttributeEditMethod
from anonymize.methods.attributes_edit.objective import AttributeEditLoss, EditWeights, IdentityTargets
from anonymize.methods.base import FaceCrop, MethodContext, MethodError
from anonymize.methods.latent.optimize import attribute_loss, real_targets
from anonymize.models.images import CanonicalImages
from tests.helpers import EDIT_COLUMNS, synthetic_face

GLASSES, SMILE = CELEBA_ATTRIBUTES.index("Eyeglasses"), CELEBA_ATTRIBUTES.index("Smiling")


@pytest.fixture(scope="module")
def faces() -> list[FaceCrop]:
    return [FaceCrop(synthetic_face(seed), None, f"folder/face {seed}.jpg#0") for seed in range(2)]


@pytest.fixture
def make_method(tiny_weights, tmp_path):
    def make(**options: str) -> AttributeEditMethod:
        context = MethodContext(tiny_weights.store(), seed=5, work=work_storage(tmp_path / "out"))
        return AttributeEditMethod(context, {"bank_size": "24", "steps": "3", "set": "Eyeglasses:1", **options})

    return make


def test_the_loss_is_target_bce_plus_kept_probabilities_plus_tokens(make_method, faces):
    method = make_method(identity="none")
    networks, prompts = method.models.networks, method.prompts
    real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]))
    originals = real_targets(real, networks)
    with torch.no_grad():
        ws = method.models.encoder(real) + 0.2
        images = networks.generator(ws, noise_mode="const")
        start = prompts.probabilities(networks.farl(real).cls)
    goals, is_target = method.goals(start)
    weights = EditWeights(lambda_target=2.0, lambda_keep=3.0, lambda_tokens=0.5)
    loss = AttributeEditLoss(networks, prompts, goals, is_target, start, originals.tokens, IdentityTargets("none", originals.identity), weights)
    total, parts = loss(images, ws, False)
    features = networks.farl(images)
    p = prompts.probabilities(features.cls)
    target = -torch.log(p[:, GLASSES])  # BCE toward 1
    others = [column for column in range(40) if column != GLASSES]
    keep = (p[:, others] - start[:, others]).abs().mean(dim=1)
    expected = 2.0 * target + 3.0 * keep + 0.5 * attribute_loss(features.tokens, originals.tokens)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
    assert set(parts) == {"target", "keep", "tokens", "probabilities"}


def test_set_and_flip_decide_the_targets_from_the_faces_estimate(make_method):
    method = make_method(set="Eyeglasses:0.8", flip="Smiling")
    start = torch.full((2, 40), 0.3)
    start[1, SMILE] = 0.7
    goals, is_target = method.goals(start)
    assert goals[:, GLASSES].tolist() == pytest.approx([0.8, 0.8]) and goals[:, SMILE].tolist() == [1.0, 0.0]
    assert is_target.sum().item() == 4 and torch.equal(goals[~is_target], start[~is_target])


@pytest.mark.parametrize("goal", [1.0, 0.0])
def test_the_edit_starts_on_the_linear_step_keeps_frozen_layers_and_moves_the_target_most(make_method, faces, goal):
    method = make_method(steps="8", lr="0.05", identity="none", strength="2", set=f"Eyeglasses:{goal:g}")
    edit = method.edit(faces)
    direction = torch.from_numpy(method.ensure_directions()["Eyeglasses"])
    step = 2.0 * (goal - edit.start[:, GLASSES])
    torch.testing.assert_close(edit.initial, edit.inversion + step[:, None, None] * direction)
    frozen = [layer for layer in range(edit.initial.shape[1]) if layer not in method.params.trainable_layers]
    assert torch.equal(edit.loop.ws[:, frozen], edit.initial[:, frozen])
    assert not torch.equal(edit.loop.ws, edit.initial)
    history = edit.loop.loss_history
    assert (history[-1] < history[0]).all()
    assert (edit.loop.end["target"] < edit.loop.start["target"]).all()
    change = edit.loop.end["probabilities"] - edit.start
    others = [column for column in range(40) if column != GLASSES]
    sign = 1.0 if goal else -1.0
    assert (sign * change[:, GLASSES] > 0).all()  # toward the target side
    assert (sign * change[:, GLASSES] > change[:, others].abs().mean(dim=1)).all()  # more than the others move


def test_bank_boundaries_are_cached_beside_the_bank_and_conditioned_on_the_other_attributes(make_method, faces):
    method = make_method(flip="Smiling", condition="Male,Young")
    directions = method.ensure_directions()
    assert method.bank is not None
    assert list(method.bank.path.parent.glob(f"{method.bank_key.filename[:-4]}.boundaries-*.npz"))
    normals = dict(zip(("Eyeglasses", "Smiling", "Male", "Young"), method.bank_boundaries(("Eyeglasses", "Smiling", "Male", "Young"))))
    for name, others in (("Eyeglasses", ("Smiling", "Male", "Young")), ("Smiling", ("Eyeglasses", "Male", "Young"))):
        assert np.allclose(directions[name], directions[name][0])  # the same on every layer
        assert np.linalg.norm(directions[name][0]) == pytest.approx(1.0, abs=1e-5)
        assert max(abs(float(directions[name][0] @ normals[other])) for other in others) < 1e-5


def test_a_user_direction_file_replaces_the_bank(make_method, faces, tmp_path):
    direction = np.random.default_rng(0).normal(size=method_w_dim(make_method)).astype(np.float32)
    np.save(tmp_path / "glasses.npy", direction)
    method = make_method(direction_files=f"Eyeglasses:{tmp_path / 'glasses.npy'}", steps="0")
    edit = method.edit(faces[:1])
    assert method.bank is None  # no boundary fitted, no bank built
    step = 3.0 * (1.0 - edit.start[0, GLASSES])
    torch.testing.assert_close(edit.initial[0], edit.inversion[0] + step * torch.from_numpy(direction))
    with pytest.raises(MethodError, match=r"missing\.pt: cannot read"):
        make_method(direction_files=f"Eyeglasses:{tmp_path / 'missing.pt'}")


def method_w_dim(make_method) -> int:
    return make_method(steps="0").models.networks.generator.w_dim


def test_a_face_gets_the_same_edit_alone_or_in_a_batch(make_method, faces):
    method = make_method(identity="cfa")
    together = method.edit(faces)
    alone = method.edit(faces[1:])
    torch.testing.assert_close(alone.loop.ws[0], together.loop.ws[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("identity,extra", [("falco", {"id_cos"}), ("cfa", {"id_cos", "cos_target"}), ("none", set())])
def test_every_identity_mode_runs_and_every_metric_is_a_manifest_column(make_method, faces, identity, extra):
    method = make_method(identity=identity, steps="1")
    assert method.loss_recognisers == (() if identity == "none" else ("arcface-ir-se50",))
    edit = method.edit(faces[:1])
    assert set(edit.loop.end) == {"target", "keep", "tokens", "probabilities"} | extra
    [face] = method.anonymize(faces[:1])
    assert set(face.metrics) <= set(AttributeEditMethod.metric_columns) and EDIT_COLUMNS <= set(face.metrics)
    assert json.loads(face.metrics["attr_edit_targets"]) == {"Eyeglasses": 1.0}
    assert face.metrics["attr_edit_identity"] == identity and 0 <= json.loads(face.metrics["attr_edit_achieved"])["Eyeglasses"] <= 1


@pytest.mark.parametrize("options,message", [
    ({"set": ""}, "no target attribute"),
    ({"set": "Glasses:1"}, "unknown attribute.*Glasses"),
    ({"set": "Eyeglasses:2"}, "probability in \\[0, 1\\]"),
    ({"flip": "Eyeglasses"}, "Eyeglasses: both in set and flip"),
    ({"identity": "arcface"}, "identity must be one of falco, cfa, none"),
    ({"trainable_layers": "2,99"}, "trainable_layers \\[99\\] do not exist"),
])
def test_bad_options_are_refused_in_one_line(make_method, options, message):
    with pytest.raises(MethodError, match=message):
        make_method(**options)


def test_randomize_draws_each_faces_side_by_randomised_response_seeded_by_its_key(make_method):
    start = torch.full((3, 40), 0.3)
    start[1, SMILE] = 0.7
    kept = make_method(set="", randomize="Smiling,Eyeglasses", epsilon="40")  # keep probability 1 - 4e-18
    goals, is_target = kept.goals(start, ["a#0", "b#0", "c#0"])
    assert goals[:, SMILE].tolist() == [0.0, 1.0, 0.0] and goals[:, GLASSES].tolist() == [0.0, 0.0, 0.0]
    assert is_target[:, [SMILE, GLASSES]].all() and is_target.sum().item() == 6
    coin = make_method(set="", randomize="Smiling", epsilon="0")  # a fair coin per face
    first, _ = coin.goals(start, ["a#0", "b#0", "c#0"])
    alone, _ = coin.goals(start[2:], ["c#0"])
    assert alone[0, SMILE] == first[2, SMILE]  # the draw follows the face, not its place in the batch
    with pytest.raises(MethodError, match="epsilon"):
        make_method(randomize="Smiling", epsilon="-1")
    with pytest.raises(MethodError, match="in randomize and in set or flip"):
        make_method(flip="Smiling", randomize="Smiling")


def test_stage_two_chooses_the_quasi_identifiers_over_the_dataset_before_any_face_is_rendered(make_method, faces, tmp_path):
    """select=k: pass 1 estimates every face, the plan recodes the qi values to classes of at least k."""
    plan = plan_storage(tmp_path / "out", "attributes")
    method = make_method(select="k", qi="Male,Young", k="2")
    method.context = replace(method.context, plan=plan)
    assert method.dataset_level
    method.survey(faces[:1])
    method.survey(faces[1:])
    figures = method.plan()
    assert figures["faces"] == 2 and figures["smallest class"] >= 2
    keys = [face.key for face in faces]
    chosen = method.chosen_values(keys)
    assert np.array_equal(chosen[0], chosen[1])  # k=2 over two faces: one class
    start = torch.from_numpy(np.stack([method.surveyed[key] for key in keys]))
    goals, is_target = method.goals(start, keys)
    columns = [CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Young")]
    assert torch.equal(goals[:, columns], torch.from_numpy(chosen.astype(np.float32)))
    assert is_target[:, columns].all() and is_target[:, GLASSES].all()
    copy = make_method(select="k", qi="Male,Young", k="2")  # a copy that did not plan (a Ray actor) reads the plan
    copy.context = replace(copy.context, plan=plan)
    assert np.array_equal(copy.chosen_values(keys), chosen)


# The eight faces of test_attribute_selection.py's hand-computed Algorithm 1 example, as Male (A) and Young (B).
ALGORITHM_1_FACES = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 1], [0, 1], [0, 1], [1, 1]])
MALE, YOUNG = CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Young")


def _planned(method, codes: np.ndarray) -> np.ndarray:
    """Plan stage II over faces whose surveyed Male / Young are ``codes`` (everything else 0.5); the chosen values."""
    keys = [f"f{row}.jpg#0" for row in range(len(codes))]
    for key, (male, young) in zip(keys, codes):
        row = np.full(len(CELEBA_ATTRIBUTES), 0.5, np.float32)
        row[MALE], row[YOUNG] = 0.9 if male else 0.1, 0.9 if young else 0.1
        method.surveyed[key] = row
    method.plan()
    return method.chosen_values(keys)


def test_algorithm_one_in_the_method_is_the_class_reading_then_line_eleven_at_epsilon(make_method, tmp_path):
    """select=closeness chooses the hand-computed values (faces 0 and 4 flip Male); line 11 then perturbs each face
    by randomised response at epsilon, seeded by the run seed and the face key; perturb=false stops after line 10."""
    exact = _planned(make_method(select="closeness", qi="Male,Young", t="0.2", perturb="false"), ALGORITHM_1_FACES)
    assert np.argwhere(exact != ALGORITHM_1_FACES).tolist() == [[0, 0], [4, 0]]
    almost = _planned(make_method(select="closeness", qi="Male,Young", t="0.2", epsilon="40"), ALGORITHM_1_FACES)
    assert np.array_equal(almost, exact)  # keep probability 1 - 4e-18
    coin = _planned(make_method(select="closeness", qi="Male,Young", t="0.2", epsilon="0"), ALGORITHM_1_FACES)
    expected = [randomized_response(row, 0.0, [5, zlib.crc32(f"f{index}.jpg#0".encode())]).codes for index, row in enumerate(exact)]
    assert np.array_equal(coin, np.stack(expected)) and not np.array_equal(coin, exact)
    literal = _planned(make_method(select="literal", qi="Male,Young", t="0.5", perturb="false"), ALGORITHM_1_FACES)
    assert np.array_equal(literal, ALGORITHM_1_FACES)  # every value lies 0.5 from S: the literal reading keeps all


def test_stage_two_takes_a_reference_distribution_and_stage_one_s_labels(make_method, faces, tmp_path):
    """reference=TABLE is S (Male 3/4, Young 1/2: the hand-computed flips of face 0's Young and face 4's Male);
    source=labels reads stage II's values from the labels file instead of zero-shot FaRL, and a value it lacks stops the plan."""
    reference = tmp_path / "reference.parquet"
    values = np.full((4, 2), 0.1, np.float32)
    values[:3, 0], values[:2, 1] = 0.9, 0.9
    write_attribute_table(reference, AttributeTable(tuple(f"r{i}#0" for i in range(4)), ("Male", "Young"), values, "labels"))
    chosen = _planned(make_method(select="closeness", qi="Male,Young", t="0.2", perturb="false", reference=str(reference)),
                      ALGORITHM_1_FACES)
    assert np.argwhere(chosen != ALGORITHM_1_FACES).tolist() == [[0, 1], [4, 0]]
    labels = tmp_path / "labels.csv"
    labels.write_text("key,Male,Young\n" + "".join(f"{face.key},{sign},-1\n" for face, sign in zip(faces, ("1", "-1"))))
    method = make_method(select="k", qi="Male,Young", k="2", source="labels", labels=str(labels))
    method.survey(faces)
    assert [method.surveyed[face.key][[MALE, YOUNG]].tolist() for face in faces] == [[1.0, 0.0], [0.0, 0.0]]
    assert method.plan()["smallest class"] == 2
    lacking = make_method(select="k", qi="Male,Smiling", k="2", source="labels", labels=str(labels))
    lacking.survey(faces)
    with pytest.raises(MethodError, match="source=labels gives no Smiling for folder/face 0.jpg#0"):
        lacking.plan()
    with pytest.raises(MethodError, match="source and reference are stage II's"):
        make_method(source="labels", labels=str(labels))
    with pytest.raises(MethodError, match="reference=.*no such file"):
        make_method(select="k", qi="Male", reference=str(tmp_path / "none.parquet"))


def test_stage_two_options_are_checked_before_anything_runs(make_method):
    with pytest.raises(MethodError, match="needs the quasi-identifiers"):
        make_method(select="k")
    with pytest.raises(MethodError, match="in qi and in set"):
        make_method(select="k", qi="Eyeglasses")
    with pytest.raises(MethodError, match="needs Algorithm 1's t"):
        make_method(select="literal", qi="Male")
    assert not make_method().dataset_level
