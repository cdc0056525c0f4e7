"""The PyTorch reader equals TensorFlow.js itself (the pinned @tensorflow/tfjs, CPU backend) on the real models.

Fixed random inputs and real face crops from ../shared/data go through both; every output agrees within
1e-5 of its own scale (the largest magnitude of the reference output). In CI a missing reference fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anonymize.io.decode import decode_image
from anonymize.models.tfjs import load_graph_model
from tests.tfjs_node import require_reference, run_reference

TOLERANCE = 1e-5
MODELS = {  # name -> outputs compared (graph node names)
    "faceres": ["global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"],
    "mobileface": ["batchnorm0/add_1"],
    "gear": ["Identity", "Identity_1", "Identity_2"],
    "emotion": ["Identity"],
    "age": ["Identity"],
    "gender": ["Identity"],
    "blazeface": ["Identity", "Identity_1", "Identity_2", "Identity_3"],
    "facemesh": ["Identity", "Identity_1", "Identity_2"],
    "blazeface-back": ["Identity", "Identity_1", "Identity_2", "Identity_3"],
    "facemesh-detection-full": ["Identity", "Identity_1"],  # DepthToSpace, ResizeBilinear, Shape
    "movenet-multipose": ["Identity"],  # int32 input of any size; TopKV2, GatherNd, Select, Split, Unpack, Tile, Range...
}
ANY_SIZE = {"movenet-multipose": (192, 256)}  # models whose input takes any height and width: the size tested


@pytest.fixture(scope="module")
def human_models(shared_dir: Path) -> Path:
    require_reference()
    return shared_dir / "weights" / "human-models"


def face_batch(shared_dir: Path, height: int, width: int, channels: int, count: int) -> np.ndarray:
    """Real CelebA photos resized to the model's input, 0..255 (gray when it takes one channel)."""
    import cv2

    photos = sorted((shared_dir / "data" / "celeba-ids").glob("*/*.jpg"))[::37][:count]
    batch = []
    for photo in photos:
        rgb = cv2.resize(decode_image(photo).rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        batch.append(rgb.mean(axis=2, keepdims=True) if channels == 1 else rgb)
    return np.stack(batch)


def assert_equal_to_reference(model_json: Path, inputs: np.ndarray, outputs: list[str]) -> None:
    model = load_graph_model(model_json, outputs)
    with torch.no_grad():
        ours = {name: value.numpy() for name, value in model(torch.from_numpy(inputs)).items()}
    reference = run_reference(model_json, {model.input_names[0]: inputs}, outputs)
    for name in outputs:
        expected, got = reference[name], ours[name]
        assert got.shape == expected.shape, f"{model_json.name} {name}: shape {got.shape} vs TF.js {expected.shape}"
        scale = max(float(np.abs(expected).max()), 1e-12)
        error = float(np.abs(got - expected).max()) / scale
        assert error <= TOLERANCE, f"{model_json.name} {name}: max difference {error:.2e} of the output's scale"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_equals_tensorflow_js_on_random_inputs_and_real_faces(name: str, human_models: Path, shared_dir: Path) -> None:
    model_json = human_models / f"{name}.json"
    shape = load_graph_model(model_json, MODELS[name]).input_shapes
    _, height, width, channels = next(iter(shape.values()))
    height, width = ANY_SIZE.get(name, (height, width))
    batch = 1 if name.startswith("blazeface") or name in ANY_SIZE else 2  # these graphs fix the batch at one
    dtype = np.int32 if name in ANY_SIZE else np.float32  # MoveNet takes int32 pixels
    rng = np.random.default_rng(0)
    random = rng.uniform(0, 255, (batch, height, width, channels)).astype(dtype)
    assert_equal_to_reference(model_json, random, MODELS[name])
    assert_equal_to_reference(model_json, face_batch(shared_dir, height, width, channels, batch).astype(dtype), MODELS[name])
