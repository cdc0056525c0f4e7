"""Camouflage on the tiny networks: the objective, the starting code, frozen layers, batching, references, K outputs, people.

Sources are smooth synthetic 256 px crops (no ../shared needed), the bank a few dozen fakes; the CLI
run on real photos is in test_camouflage_cli.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anonymize.io.storage import plan_storage, work_storage
from anonymize.methods.base import FaceCrop, MethodContext, MethodError
from anonymize.methods.camouflage.method import CamouflageMethod, keep_best
from anonymize.methods.camouflage.objective import CamouflageLoss, pooled_tokens, psnr_db, source_targets
from anonymize.methods.latent.optimize import mix_codes, optimise_codes
from anonymize.models.arcface import arcface_input
from anonymize.models.images import CanonicalImages

SMALL_BANK = "24"
CAMO_METRICS = {"camo_reference_index", "camo_reference_kind", "camo_id_cos", "camo_psnr_db", "camo_output_kept", "camo_passed"}


def synthetic_face(seed: int, size: int = 256) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def faces() -> list[FaceCrop]:
    return [FaceCrop(synthetic_face(seed), None, f"person{seed % 2}/face {seed}.jpg#0") for seed in range(3)]


@pytest.fixture
def make_method(tiny_weights, tmp_path):
    def make(**options: str) -> CamouflageMethod:
        context = MethodContext(tiny_weights.store(), work=work_storage(tmp_path / "out"), plan=plan_storage(tmp_path / "out", "camouflage"),
                                identity_from="folder")
        return CamouflageMethod(context, {"bank_size": SMALL_BANK, "steps": "6", **options})

    return make


def loop_inputs(method: CamouflageMethod, faces: list[FaceCrop], fake: int = 0):
    """The starting code and the loss of a batch, as CamouflageMethod.anonymize builds them (reference ``fake``)."""
    references = method.ensure_references()
    networks, generator = method.models.networks, method.models.networks.generator
    real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]))
    with torch.no_grad():
        inversion = method.models.encoder(real)
    indices = [fake] * len(faces)
    start = mix_codes(references.codes(indices, generator.num_ws, method.device), inversion, method.params.source_layers)
    loss = CamouflageLoss(networks, source_targets(real, networks, generator.resolution), method._appearance(indices), method.weights)
    return inversion, start, loss


# ---- the objective --------------------------------------------------------------------------------


def test_farl_tokens_are_max_pooled_to_four_horizontal_bands_of_the_14_by_14_grid():
    rows = torch.arange(14.0).view(14, 1).expand(14, 14).reshape(1, 196, 1)  # each patch token holds its row index
    tokens = torch.cat([torch.full((1, 1, 1), 99.0), rows], dim=1)  # the CLS token (99) takes no part
    # adaptive pooling bins of 14 rows into 4: [0, 4), [3, 7), [7, 11), [10, 14): the max row of each
    assert pooled_tokens(tokens).tolist() == [[3.0, 6.0, 10.0, 13.0]]
    two_channels = torch.cat([tokens, -tokens], dim=2)
    assert pooled_tokens(two_channels).tolist() == [[3.0, 6.0, 10.0, 13.0, -0.0, -3.0, -7.0, -10.0]]


def test_psnr_is_measured_on_the_unit_scale_and_an_exact_copy_is_capped():
    image = torch.zeros(1, 3, 8, 8)
    assert psnr_db(image + 0.2, image).item() == pytest.approx(20.0, abs=1e-4)  # 0.1 on [0, 1]: MSE 0.01
    assert psnr_db(image, image).item() == pytest.approx(100.0)


def test_the_loss_is_the_specs_sum_of_identity_hinge_feature_map_appearance_and_pixel_hinge(make_method, faces):
    method = make_method(id_margin="0.9", psnr_ceiling="5")
    _, start, loss = loop_inputs(method, faces[:2])
    networks = method.models.networks
    with torch.no_grad():
        images = networks.generator(start, noise_mode="const")
        total, parts = loss(images, start, False)
        cosine = F.cosine_similarity(networks.arcface(images), loss.source.identity, dim=1)
        trunk = networks.arcface.body(networks.arcface.input_layer(arcface_input(images, networks.arcface.input_size)))
        feature = (trunk - loss.source.feature_map).square().mean(dim=(1, 2, 3))
        appearance = (pooled_tokens(networks.farl(images).tokens) - loss.appearance).square().mean(dim=1)  # Eq. 4: squared L2
        psnr = psnr_db(images.tensor, loss.source.pixels)
    expected = 10 * (0.9 - cosine).clamp_min(0) + feature + appearance + 0.1 * (psnr - 5).clamp_min(0)
    assert torch.allclose(parts["id_cos"], cosine, atol=1e-6) and torch.allclose(parts["psnr"], psnr)
    assert torch.allclose(total, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(psnr > 5)  # the pixel hinge is active here, so it is part of the checked sum
    # dif=l2: the paper's Eq. 5 in place of the hinge, -lambda_pix * mean squared difference on the [0, 1] scale
    paper = make_method(id_margin="0.9", dif="l2")
    _, _, eq5 = loop_inputs(paper, faces[:2])
    with torch.no_grad():
        total5, parts5 = eq5(images, start, False)
    mse = ((images.tensor - loss.source.pixels) / 2).square().mean(dim=(1, 2, 3))
    assert torch.allclose(total5, expected - 0.1 * (psnr - 5).clamp_min(0) - 0.1 * mse, rtol=1e-5, atol=1e-6)
    assert torch.allclose(parts5["dif"], -mse) and torch.allclose(10 * torch.log10(1 / mse), psnr, rtol=1e-5)



def test_the_loss_falls_for_every_face(make_method, faces):
    method = make_method()
    _, start, loss = loop_inputs(method, faces)
    result = optimise_codes(start, method.params.trainable_layers, method.models.networks.generator, loss,
                            CamouflageMethod.Params(steps=15))
    assert result.loss_history.shape == (16, len(faces))
    assert torch.all(result.loss_history[-1] < result.loss_history[0])


def test_the_start_takes_the_coarse_layers_from_the_source_and_only_trainable_layers_move(make_method, faces):
    method = make_method()
    inversion, start, loss = loop_inputs(method, faces[:2], fake=3)
    reference = method.ensure_references().codes([3, 3], start.shape[1], method.device)
    source_layers, trainable = [0, 1, 2], list(method.params.trainable_layers)
    others = [layer for layer in range(start.shape[1]) if layer not in source_layers]
    assert torch.equal(start[:, source_layers], inversion[:, source_layers])
    assert torch.equal(start[:, others], reference[:, others])
    result = optimise_codes(start, trainable, method.models.networks.generator, loss, method.params)
    frozen = [layer for layer in range(start.shape[1]) if layer not in trainable]
    assert torch.equal(result.ws[:, frozen], start[:, frozen])
    assert not torch.equal(result.ws[:, trainable], start[:, trainable])


# ---- the method -----------------------------------------------------------------------------------


def test_a_batch_gives_what_one_face_at_a_time_gives(make_method, faces):
    method = make_method()
    batched = method.anonymize(faces)
    for face, together in zip(faces, batched):
        alone = method.anonymize([face])[0]
        assert alone.metrics["camo_reference_index"] == together.metrics["camo_reference_index"]
        assert np.abs(alone.crop.astype(int) - together.crop.astype(int)).max() <= 2
        for name in ("camo_id_cos", "camo_psnr_db"):
            assert alone.metrics[name] == pytest.approx(together.metrics[name], abs=1e-3)


def test_every_metric_is_a_manifest_column_and_the_run_records_the_human_goal(make_method, faces):
    method = make_method(steps="1")
    assert method.privacy_goal == "human" and method.loss_recognisers == ("arcface-ir-se50",)
    assert not method.dataset_level  # consistency=face: one pass
    for face in method.anonymize(faces[:2]):
        assert CAMO_METRICS <= set(face.metrics) and CAMO_METRICS <= set(CamouflageMethod.metric_columns)
        assert face.metrics["camo_reference_kind"] == "bank" and face.metrics["camo_output_kept"] == 0
        assert face.metrics["camo_passed"] == (face.metrics["camo_id_cos"] >= 0.5)
        assert face.crop.shape == (32, 32, 3)


def test_references_are_chosen_at_random_by_face_nearest_farthest_or_fixed(make_method, faces):
    method = make_method()
    references = method.ensure_references()
    query = references.features[5:6] + 0.01  # closest to fake 5
    similarity = references.features @ query[0] / np.linalg.norm(references.features, axis=1)
    keys = ["a.jpg#0"]
    assert references.select(query, keys, "nearest", 2, 0, 0)[0].tolist() == np.argsort(-similarity)[:2].tolist()
    assert references.select(query, keys, "farthest", 1, 0, 0)[0, 0] == int(np.argmin(similarity))
    assert references.select(query, keys * 2, "fixed", 2, 0, 7).tolist() == [[7, 8], [7, 8]]
    drawn = references.select(None, ["a.jpg#0", "b.jpg#0"], "random", 3, 0, 0)
    assert len(set(drawn[0].tolist())) == 3 and not np.array_equal(drawn[0], drawn[1])
    assert np.array_equal(drawn, references.select(None, ["a.jpg#0", "b.jpg#0"], "random", 3, 0, 0))
    assert not np.array_equal(drawn, references.select(None, ["a.jpg#0", "b.jpg#0"], "random", 3, 1, 0))


def test_of_k_outputs_the_one_furthest_from_the_source_among_those_reaching_tau_is_kept(make_method, faces):
    assert keep_best(np.array([0.9, 0.6, 0.4]), np.array([30.0, 18.0, 10.0]), 0.5) == (1, True)
    assert keep_best(np.array([0.2, 0.4, 0.3]), np.array([30.0, 18.0, 10.0]), 0.5) == (1, False)
    result = make_method(outputs="3", select="nearest", steps="2").anonymize(faces[:1])[0]
    assert result.metrics["camo_output_kept"] in (0, 1, 2)


def test_real_references_come_from_a_folder(make_method, faces, tmp_path):
    folder = tmp_path / "references"
    folder.mkdir()
    for index in range(2):
        cv2.imwrite(str(folder / f"ref{index}.png"), synthetic_face(10 + index))
    result = make_method(reference=str(folder), select="fixed", reference_index="1", steps="2").anonymize(faces[:1])[0]
    assert result.metrics["camo_reference_kind"] == "folder:ref1.png" and result.metrics["camo_reference_index"] == 1
    with pytest.raises(MethodError, match="reference_index 5 is out of range"):
        make_method(reference=str(folder), select="fixed", reference_index="5").anonymize(faces[:1])
    with pytest.raises(MethodError, match="not a folder"):
        make_method(reference=str(tmp_path / "absent"))


def test_consistency_person_gives_every_photo_of_a_person_one_reference_and_a_copy_reads_the_plan(make_method, faces):
    method = make_method(consistency="person", steps="1")
    assert method.dataset_level
    method.survey(faces)
    assert method.plan()["people"] == 2  # person0: faces 0 and 2; person1: face 1 (folders)
    results = method.anonymize(faces)
    assert results[0].metrics["camo_reference_index"] == results[2].metrics["camo_reference_index"]
    assert [r.metrics["camo_person"] for r in results] == [0, 1, 0]
    copy = make_method(consistency="person", steps="1")  # e.g. a Ray actor: reads the stored plan
    assert copy.anonymize(faces[1:2])[0].metrics["camo_reference_index"] == results[1].metrics["camo_reference_index"]


def test_bad_options_are_refused_in_one_line(make_method):
    for options, message in (({"select": "closest"}, "select must be one of"),
                             ({"consistency": "person", "outputs": "2"}, "outputs must be 1"),
                             ({"source_layers": "0,99"}, "do not exist"), ({"dif": "l1"}, "dif must be")):
        with pytest.raises(MethodError, match=message):
            make_method(**options)
