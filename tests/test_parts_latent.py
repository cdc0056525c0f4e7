"""`--method parts` with the latent backend, on the tiny networks; and the method from the CLI.

The tiny e4e, decoder, ArcFace and FaRL (both towers) are random, so these tests check the mechanics
the real networks rely on: the losses fall, only the trainable W+ layers move, with paste=parts pixels
outside the chosen parts are the original's (with the default paste=face the whole face is regenerated),
Eq. 7 keeps pulling where the hinge has stopped, a candidate comes out the same batched or alone, the
run records its choices.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from anonymize.faces.align import align_single_face
from anonymize.io.manifest import read_manifest
from anonymize.methods.base import FaceCrop, MethodContext, MethodError
from anonymize.methods.parts.masks import part_masks, union_mask
from anonymize.methods.parts.method import PartsMethod
from anonymize.models.images import CanonicalImages
from anonymize.weights import WeightsStore, read_lock
from tests.helpers import cli

TRAINABLE = (3, 4, 5)  # the tiny 32 px decoder has W+ layers 0..7
OPTIONS = {"backend": "latent", "steps": "6", "lr": "0.05", "tau": "0.0", "trainable_layers": "3,4,5", "lambda_tokens": "0.01",
           "paste": "parts", "identity": "hinge"}  # the part-outline paste and the hinge; the defaults are tested below
PARTS_COLUMNS = ("parts_backend", "parts_chosen", "parts_k", "parts_relevance", "parts_selected_by", "parts_passed")


@pytest.fixture(scope="module")
def crop(shared_dir: Path) -> np.ndarray:
    photo = sorted((shared_dir / "data" / "celeba-ids" / "0").glob("*.jpg"))[0]
    return align_single_face(np.asarray(Image.open(photo).convert("RGB")), None, 256).crop


@pytest.fixture(scope="module")
def method(tiny_weights) -> PartsMethod:
    return PartsMethod(MethodContext(tiny_weights.store()), OPTIONS)


def edit(method: PartsMethod, crop: np.ndarray, choices):
    landmarks = method.finder(crop)
    masks = part_masks(landmarks, 256)
    stacked = np.stack([union_mask([masks[part] for part in parts]) for parts in choices])
    reference = method.model.reference(crop)
    return method.latent.edit(crop, choices, stacked, method.model, reference), stacked


def test_the_losses_fall_and_only_the_chosen_parts_and_trainable_layers_change(method, crop):
    choices = [("nose",), ("nose", "lips")]
    result, masks = edit(method, crop, choices)
    loop = result.loop
    start, end = loop.start, loop.end
    assert (end["text"] < start["text"]).all(), (start["text"], end["text"])
    full = lambda parts: 10.0 * parts["hinge"] + parts["text"] + 0.01 * parts["tokens"] + 0.001 * parts["latent"]  # noqa: E731
    assert (full(end) < full(start)).all()
    with torch.no_grad():
        inversion = method.latent.encoder(CanonicalImages.from_uint8(crop))
    frozen = [layer for layer in range(loop.ws.shape[1]) if layer not in TRAINABLE]
    assert torch.equal(loop.ws[:, frozen], inversion[:, frozen].expand(2, -1, -1))
    assert not torch.equal(loop.ws[:, list(TRAINABLE)], inversion[:, list(TRAINABLE)].expand(2, -1, -1))
    for image, mask in zip(result.images, masks):
        assert np.array_equal(image[mask == 0], crop[mask == 0])
        assert np.abs(image[mask > 0.5].astype(int) - crop[mask > 0.5]).mean() > 1.0


def test_a_candidate_comes_out_the_same_in_a_batch_and_alone(method, crop):
    batched, _ = edit(method, crop, [("nose",), ("eyes", "lips")])
    alone, _ = edit(method, crop, [("eyes", "lips")])
    assert torch.allclose(batched.loop.ws[1], alone.loop.ws[0], atol=1e-5)
    assert np.abs(batched.images[1].astype(int) - alone.images[0]).max() <= 1


def test_the_identity_hinge_ramps_up_and_pulls_the_identity_back(tiny_weights, crop):
    strict = PartsMethod(MethodContext(tiny_weights.store()), {**OPTIONS, "tau": "0.9999", "lambda_text": "0", "lambda_tokens": "0"})
    result, _ = edit(strict, crop, [("nose", "lips", "eyes", "eyebrows")])
    start, end, history = result.loop.start, result.loop.end, result.loop.loss_history[:, 0]
    assert start["hinge"][0] > 0 and end["hinge"][0] < start["hinge"][0]
    # The ramp: weight 0 at the first step (only the W+ term, zero at the inversion), full at the end.
    assert float(history[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(history[-1]) == pytest.approx(float(10.0 * end["hinge"][0] + 0.001 * end["latent"][0]), rel=1e-5)
    face = strict.anonymize_one(FaceCrop(crop, None, "a#0"))
    assert face.metrics["parts_selected_by"] == "arcface" and face.metrics["parts_id_cos"] is not None


def test_by_default_the_whole_regenerated_face_is_written_and_eq7_keeps_pulling_after_the_threshold(tiny_weights, crop):
    """paste=face (the default): the written crop is G(w) everywhere, not only inside the parts; identity=layers
    (the default): Eq. 7 falls even with tau = 0, where the hinge is zero from the start and never pulls."""
    defaults = {key: value for key, value in OPTIONS.items() if key not in ("paste", "identity")}
    whole = PartsMethod(MethodContext(tiny_weights.store()), {**defaults, "lambda_text": "0", "lambda_tokens": "0"})
    assert (whole.params.paste, whole.params.identity) == ("", "layers") and whole.latent.settings.paste == "face"
    result, masks = edit(whole, crop, [("nose",)])
    outside = masks[0] == 0
    assert np.abs(result.images[0][outside].astype(int) - crop[outside]).mean() > 1.0  # hair, skin, background regenerated
    start, end = result.loop.start, result.loop.end
    assert float(start["hinge"][0]) == 0.0 and float(end["id_layers"][0]) < float(start["id_layers"][0])


def test_without_the_latent_weights_the_error_names_the_cpu_fallback(tmp_path):
    empty = WeightsStore(tmp_path, lock=read_lock(Path(__file__).resolve().parents[1] / "weights.lock"))
    with pytest.raises(MethodError, match=r"-p backend=warp") as error:
        PartsMethod(MethodContext(empty), {"backend": "latent"})
    assert "\n" not in str(error.value)


@pytest.fixture
def two_photos(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "celeba"
    source.mkdir()
    for identity in ("0", "1"):
        shutil.copy(sorted((shared_dir / "data" / "celeba-ids" / identity).glob("*.jpg"))[0], source / f"{identity}.jpg")
    return source


@pytest.mark.parametrize("backend_options, selected_by, loss_recognisers", [
    (["-p", "backend=warp", "-p", "pgd_steps=2", "-p", "k=2"], "dlib", ["dlib"]),
    (["-p", "backend=latent", "-p", "steps=2", "-p", "trainable_layers=3,4,5", "-p", "select_with=dlib"], "arcface+dlib",
     ["arcface-ir-se50", "dlib"]),
], ids=["warp", "latent-selected-with-dlib"])
def test_the_parts_method_runs_from_the_cli_and_records_its_choices(tiny_env, two_photos, tmp_path, backend_options, selected_by,
                                                                     loss_recognisers):
    out = tmp_path / "out"
    result = cli("run", two_photos, "--out", out, "--aligned", "--method", "parts", "--device", "cpu", "--json", *backend_options)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:
        assert all(row[column] is not None for column in PARTS_COLUMNS), row
        assert row["parts_k"] == len(row["parts_chosen"].split(",")) and row["parts_selected_by"] == selected_by
        if "k=2" in backend_options:  # -p k=2 fixes the number of parts; their choice stays the least relevant
            ranking = sorted(json.loads(row["parts_relevance"]).items(), key=lambda item: item[1])
            assert row["parts_chosen"].split(",") == [part for part, _ in ranking[:2]]
        assert set(json.loads(row["parts_relevance"])) == {"eyebrows", "eyes", "nose", "lips"}
        written = np.asarray(Image.open(out / row["output_path"]), float)
        original = np.asarray(Image.open(two_photos / row["source_path"]), float)
        assert written.shape == original.shape and np.abs(written - original).mean() > 0.05
    metadata = read_manifest(out / "manifest.parquet")[1]
    assert metadata["privacy_goal"] == "human" and json.loads(metadata["loss_recognisers"]) == loss_recognisers
