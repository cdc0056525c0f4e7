"""The TensorFlow.js graph-model reader: TensorFlow's semantics on hand-computed examples, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymize.models.tfjs import GraphModelError, load_graph_model, read_graph_model
from tests.tiny.tfjs import node, write_graph_model

GRID = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]], NHWC


def run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in load_graph_model(path)(torch.from_numpy(x)).items()}


def test_same_padding_puts_the_odd_pixel_after_as_tensorflow_does(tmp_path: Path) -> None:
    # 3x3 input, 2x2 kernel of ones, stride 2, SAME: output 2x2, one row/column of zeros padded after only.
    path = write_graph_model(tmp_path, "conv", [-1, 3, 3, 1],
                             [node("conv", "Conv2D", ["input", "k"], strides=[1, 2, 2, 1], padding="SAME", data_format="NHWC")],
                             {"k": np.ones((2, 2, 1, 1), np.float32)}, ["conv"])
    out = run(path, GRID)["conv"]
    assert out.shape == (1, 2, 2, 1)
    assert out[0, :, :, 0].tolist() == [[12.0, 9.0], [15.0, 9.0]]


def test_depthwise_multiplier_orders_channels_input_major(tmp_path: Path) -> None:
    kernel = np.array([1, 2, 3, 4], np.float32).reshape(1, 1, 2, 2)  # [h, w, in, multiplier]
    path = write_graph_model(tmp_path, "dw", [-1, 1, 1, 2],
                             [node("dw", "DepthwiseConv2dNative", ["input", "k"], strides=[1, 1, 1, 1], padding="VALID")],
                             {"k": kernel}, ["dw"])
    out = run(path, np.array([1, 10], np.float32).reshape(1, 1, 1, 2))["dw"]
    assert out.reshape(-1).tolist() == [1.0, 2.0, 30.0, 40.0]


def test_fused_conv_adds_bias_then_clips_like_relu6(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "fused", [-1, 1, 1, 1],
                             [node("f", "_FusedConv2D", ["input", "k", "b"], strides=[1, 1, 1, 1], padding="VALID",
                                   fused_ops=["BiasAdd", "Relu6"], num_args=1)],
                             {"k": np.array([2.0, -2.0], np.float32).reshape(1, 1, 1, 2), "b": np.array([5.0, 1.0], np.float32)},
                             ["f"])
    assert run(path, np.full((1, 1, 1, 1), 3.0, np.float32))["f"].reshape(-1).tolist() == [6.0, 0.0]  # 11 -> 6, -5 -> 0


def test_same_pooling_ignores_the_padding(tmp_path: Path) -> None:
    pool = {"ksize": [1, 2, 2, 1], "strides": [1, 2, 2, 1], "padding": "SAME"}
    path = write_graph_model(tmp_path, "pool", [-1, 3, 3, 1],
                             [node("avg", "AvgPool", ["input"], **pool), node("max", "MaxPool", ["neg"], **pool),
                              node("neg", "Neg", ["input"])],
                             {}, ["avg", "max"])
    out = run(path, GRID)
    assert out["avg"][0, :, :, 0].tolist() == [[3.0, 4.5], [7.5, 9.0]]  # averages over the cells inside only
    assert out["max"][0, :, :, 0].tolist() == [[-1.0, -3.0], [-7.0, -9.0]]  # a padded zero never wins


def test_reductions_reshape_and_slices_keep_tensorflow_axes(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "shape", [-1, 3, 3, 1], [
        node("mean", "Mean", ["input", "axes"], keep_dims=False),
        node("flat", "Reshape", ["input", "shape"]),
        node("col", "StridedSlice", ["flat", "begin", "end", "step"], shrink_axis_mask=2, begin_mask=1, end_mask=1),
        node("soft", "Softmax", ["flat"]),
    ], {"axes": np.array([1, 2], np.int32), "shape": np.array([-1, 9], np.int32), "begin": np.array([0, 4], np.int32),
        "end": np.array([0, 5], np.int32), "step": np.array([1, 1], np.int32)}, ["mean", "col", "soft"])
    out = run(path, GRID)
    assert out["mean"].tolist() == [[5.0]]
    assert out["col"].tolist() == [5.0]
    expected = np.exp(np.arange(1, 10)) / np.exp(np.arange(1, 10)).sum()
    np.testing.assert_allclose(out["soft"][0], expected, rtol=1e-5)


def test_quantised_weights_are_dequantised(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "q", [-1, 4], [node("h", "Mul", ["input", "half"]), node("u", "Mul", ["input", "byte"])],
                             {"half": np.array([0.0, 0.1, 0.5, 1.0], np.float32), "byte": np.array([-1.0, 0.2, 0.6, 1.0], np.float32)},
                             ["h", "u"], quantize={"half": "float16", "byte": "uint8"})
    graph = read_graph_model(path)
    assert graph.constants["half"].tolist() == [0.0, 0.0999755859375, 0.5, 1.0]  # float16's nearest to 0.1
    # uint8: min -1, scale 2/255; the bytes 0, 153, 204, 255 read back as byte * scale + min
    assert graph.constants["byte"] == pytest.approx([-1.0, 153 * 2 / 255 - 1, 204 * 2 / 255 - 1, 1.0], abs=1e-6)
    out = run(path, np.ones((1, 4), np.float32))
    assert out["h"].dtype == np.float32 and out["u"].shape == (1, 4)


def test_gradients_flow_to_the_input(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "grad", [-1, 3, 3, 1],
                             [node("conv", "Conv2D", ["input", "k"], strides=[1, 1, 1, 1], padding="SAME"),
                              node("sum", "Sum", ["conv", "axes"])],
                             {"k": np.ones((3, 3, 1, 1), np.float32), "axes": np.array([1, 2, 3], np.int32)}, ["sum"])
    model = load_graph_model(path)
    x = torch.from_numpy(GRID.copy()).requires_grad_(True)
    model(x)["sum"].sum().backward()
    # each pixel is counted once per 3x3 window covering it: 4 at corners, 6 at edges, 9 in the centre
    assert x.grad[0, :, :, 0].tolist() == [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]
    assert not any(buffer.requires_grad for buffer in model.buffers())


def test_a_batch_gives_each_item_its_own_result(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "batch", [-1, 3, 3, 1],
                             [node("conv", "Conv2D", ["input", "k"], strides=[1, 2, 2, 1], padding="SAME")],
                             {"k": np.ones((2, 2, 1, 1), np.float32)}, ["conv"])
    batch = np.concatenate([GRID, 2 * GRID])
    out = run(path, batch)["conv"]
    np.testing.assert_array_equal(out[1], 2 * out[0])


# ---- one-line errors ----------------------------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_an_unknown_op_names_the_node(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "bad", [-1, 2], [node("mystery", "FancyOp", ["input"])], {}, ["mystery"])
    with pytest.raises(GraphModelError) as exc:
        load_graph_model(path)
    assert "'mystery'" in one_line(exc) and "FancyOp" in one_line(exc)


def test_a_truncated_weight_file_names_the_weight_and_byte_offset(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "short", [-1, 2], [node("m", "Mul", ["input", "b"]), node("n", "Mul", ["m", "c"])],
                             {"b": np.ones(2, np.float32), "c": np.ones(3, np.float32)}, ["n"])
    bin_path = path.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-4])
    with pytest.raises(GraphModelError) as exc:
        read_graph_model(path)
    assert "'c'" in one_line(exc) and "bytes 8..20" in one_line(exc) and "16" in one_line(exc)


def test_a_missing_shard_a_dangling_input_and_bad_json_are_one_line_each(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "m", [-1, 2], [node("m", "Mul", ["input", "b"])], {"b": np.ones(2, np.float32)}, ["m"])
    path.with_suffix(".bin").unlink()
    with pytest.raises(GraphModelError) as exc:
        read_graph_model(path)
    assert "m.bin" in one_line(exc) and "not found" in one_line(exc)

    dangling = write_graph_model(tmp_path / "d", "d", [-1, 2], [node("m", "Mul", ["input", "nowhere"])], {}, ["m"])
    with pytest.raises(GraphModelError) as exc:
        read_graph_model(dangling)
    assert "'nowhere'" in one_line(exc)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(GraphModelError) as exc:
        read_graph_model(broken)
    assert str(broken) in one_line(exc)

    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps({"modelTopology": {"class_name": "Sequential"}}), encoding="utf-8")
    with pytest.raises(GraphModelError) as exc:
        read_graph_model(layers)
    assert "graph model" in one_line(exc)


def test_a_wrongly_shaped_input_is_refused_with_the_expected_shape(tmp_path: Path) -> None:
    path = write_graph_model(tmp_path, "m", [-1, 2], [node("m", "Mul", ["input", "b"])], {"b": np.ones(2, np.float32)}, ["m"])
    with pytest.raises(GraphModelError) as exc:
        load_graph_model(path)(torch.ones(1, 3))
    assert "(1, 3)" in one_line(exc) and "(-1, 2)" in one_line(exc)
