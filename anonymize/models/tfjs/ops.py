"""TensorFlow ops as PyTorch functions, with TensorFlow's semantics (NHWC, SAME padding, broadcasting).

Activations stay NHWC as TensorFlow holds them, so element-wise ops, reductions, reshapes and
slices keep TensorFlow's axes and broadcasting unchanged; convolutions and pooling permute to a
channels-last NCHW *view* (no copy) for PyTorch's kernels and back. Integer constants that steer an
op (axes, shapes, paddings, slice bounds) arrive as NumPy arrays and are read statically.

Each op is ``fn(node, args) -> Tensor`` (or a tuple for ops with several outputs); ``OPS`` maps
the GraphDef op name to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anonymize.models.tfjs.format import GraphModelError, Node

Value = Any  # torch.Tensor, or np.ndarray for integer constants
Op = Callable[[Node, Sequence[Value]], Value]


def static(value: Value, node: Node) -> list[int]:
    """An integer argument (axes, shape, paddings) as a flat list of Python ints."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad or value.dtype.is_floating_point:
            raise GraphModelError(f"node {node.name!r} ({node.op}): needs a constant integer argument, got a computed tensor")
        value = value.detach().cpu().numpy()
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _tensor(value: Value, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)  # np.ascontiguousarray would turn a 0-d constant (a scalar shape entry) into shape (1,)
    tensor = torch.from_numpy(array if array.flags.c_contiguous else np.ascontiguousarray(array))
    return tensor.to(like.device) if like is not None else tensor


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _check_nhwc(node: Node) -> None:
    layout = node.attr("data_format", "NHWC")
    if layout not in ("NHWC", ""):
        raise GraphModelError(f"node {node.name!r} ({node.op}): data_format {layout} is not supported (only NHWC)")


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: output ceil(size / stride), the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(node: Node, x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for the node's padding mode, on an NHWC input."""
    padding = node.attr("padding", "VALID")
    if padding == "VALID":
        return 0, 0, 0, 0
    if padding == "SAME":
        top, bottom = _same_pads(x.shape[1], kernel[0], strides[0], dilations[0])
        left, right = _same_pads(x.shape[2], kernel[1], strides[1], dilations[1])
        return top, bottom, left, right
    if padding == "EXPLICIT":
        pads = node.attr("explicit_paddings") or []
        if len(pads) != 8:
            raise GraphModelError(f"node {node.name!r}: EXPLICIT padding needs 8 values, got {pads}")
        return pads[2], pads[3], pads[4], pads[5]
    raise GraphModelError(f"node {node.name!r} ({node.op}): unknown padding {padding!r}")


def _hw(values: Sequence[int] | None, node: Node, what: str) -> tuple[int, int]:
    values = list(values or [1, 1, 1, 1])
    if len(values) != 4 or values[0] != 1 or values[3] != 1:
        raise GraphModelError(f"node {node.name!r} ({node.op}): {what} {values} must be [1, h, w, 1]")
    return values[1], values[2]


def _conv(node: Node, x: torch.Tensor, kernel: torch.Tensor, depthwise: bool) -> torch.Tensor:
    """Conv2D (filter HWIO) or DepthwiseConv2dNative (filter HW, in, multiplier) on NHWC."""
    _check_nhwc(node)
    strides = _hw(node.attr("strides"), node, "strides")
    dilations = _hw(node.attr("dilations"), node, "dilations")
    kernel = _tensor(kernel, x)
    if kernel.dim() != 4:
        raise GraphModelError(f"node {node.name!r} ({node.op}): filter of shape {tuple(kernel.shape)} is not 4-d")
    top, bottom, left, right = _spatial_pads(node, x, kernel.shape[:2], strides, dilations)
    inputs = _nchw(x)
    if top or bottom or left or right:
        inputs = F.pad(inputs, (left, right, top, bottom))
    if depthwise:
        height, width, channels, multiplier = kernel.shape
        weight, groups = kernel.reshape(height, width, channels * multiplier).permute(2, 0, 1).unsqueeze(1), channels
    else:
        weight, groups = kernel.permute(3, 2, 0, 1), 1
        if weight.shape[1] != x.shape[3]:  # grouped convolution: TensorFlow infers the groups from the shapes
            groups = x.shape[3] // weight.shape[1]
    return _nhwc(F.conv2d(inputs, weight, stride=strides, dilation=dilations, groups=groups))


def _activation(name: str, x: torch.Tensor, node: Node, extra: Sequence[Value]) -> torch.Tensor:
    if name == "Relu":
        return torch.relu(x)
    if name == "Relu6":
        return torch.clamp(x, 0.0, 6.0)
    if name == "Elu":
        return F.elu(x)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Tanh":
        return torch.tanh(x)
    if name == "LeakyRelu":
        return F.leaky_relu(x, float(node.attr("leakyrelu_alpha", node.attr("alpha", 0.2))))
    if name == "Prelu":
        if not extra:
            raise GraphModelError(f"node {node.name!r}: fused Prelu without its alpha argument")
        return _prelu(x, _tensor(extra[0], x))
    raise GraphModelError(f"node {node.name!r} ({node.op}): unsupported fused op {name!r}")


def _fused(node: Node, args: Sequence[Value], base: torch.Tensor) -> torch.Tensor:
    """Apply a fused node's ``fused_ops`` (BiasAdd, then an activation) to its base result."""
    ops = list(node.attr("fused_ops") or [])
    extra = list(args[2:])
    out = base
    if ops and ops[0] == "BiasAdd":
        out = out + _tensor(extra.pop(0), out)
        ops = ops[1:]
    elif ops and ops[0] == "FusedBatchNorm":
        scale, offset, mean, variance = (_tensor(value, out) for value in extra[:4])
        extra = extra[4:]
        out = (out - mean) * (scale / torch.sqrt(variance + float(node.attr("epsilon", 1e-3)))) + offset
        ops = ops[1:]
    for name in ops:
        out = _activation(name, out, node, extra)
    return out


def _prelu(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, alpha * x)


def _matmul(node: Node, a: Value, b: Value) -> torch.Tensor:
    a, b = _tensor(a), _tensor(b)
    a, b = (a.to(b.device), b) if a.device != b.device else (a, b)
    if node.attr("transpose_a", False):
        a = a.transpose(-1, -2)
    if node.attr("transpose_b", False):
        b = b.transpose(-1, -2)
    return a @ b


def _pool(node: Node, x: torch.Tensor, kind: str) -> torch.Tensor:
    _check_nhwc(node)
    kernel = _hw(node.attr("ksize"), node, "ksize")
    strides = _hw(node.attr("strides"), node, "strides")
    top, bottom, left, right = _spatial_pads(node, x, kernel, strides, (1, 1))
    inputs = _nchw(x)
    if kind == "max":
        if top or bottom or left or right:  # padded cells never win
            inputs = F.pad(inputs, (left, right, top, bottom), value=float("-inf"))
        return _nhwc(F.max_pool2d(inputs, kernel, strides))
    if not (top or bottom or left or right):
        return _nhwc(F.avg_pool2d(inputs, kernel, strides))
    # TensorFlow's SAME average counts only the cells inside the image
    sums = F.avg_pool2d(F.pad(inputs, (left, right, top, bottom)), kernel, strides, divisor_override=1)
    ones = F.pad(torch.ones_like(inputs[:1, :1]), (left, right, top, bottom))
    counts = F.avg_pool2d(ones, kernel, strides, divisor_override=1)
    return _nhwc(sums / counts)


def _axes(value: Value, rank: int, node: Node) -> list[int]:
    return sorted({axis % rank for axis in static(value, node)})


def _reduce(kind: str) -> Op:
    def reduce(node: Node, args: Sequence[Value]) -> torch.Tensor:
        x = _tensor(args[0])
        axes = _axes(args[1], x.dim(), node)
        keep = bool(node.attr("keep_dims", False))
        if not axes:
            return x
        if kind == "mean":
            return x.mean(dim=axes, keepdim=keep)
        if kind == "sum":
            return x.sum(dim=axes, keepdim=keep)
        out = x
        for axis in reversed(axes):
            out = (out.amax if kind == "max" else out.amin)(dim=axis, keepdim=keep)
        return out
    return reduce


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    def binary(node: Node, args: Sequence[Value]) -> torch.Tensor:
        a, b = args[0], args[1]
        like = a if isinstance(a, torch.Tensor) else b if isinstance(b, torch.Tensor) else None
        return fn(_tensor(a, like), _tensor(b, like))
    return binary


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda node, args: fn(_tensor(args[0]))


def _pad(node: Node, args: Sequence[Value]) -> torch.Tensor:
    x = _tensor(args[0])
    pairs = static(args[1], node)
    if len(pairs) != 2 * x.dim():
        raise GraphModelError(f"node {node.name!r} (Pad): {len(pairs)} padding values for a {x.dim()}-d input")
    flat: list[int] = []
    for axis in reversed(range(x.dim())):
        flat += [pairs[2 * axis], pairs[2 * axis + 1]]
    value = float(_tensor(args[2]).reshape(-1)[0]) if len(args) > 2 else 0.0
    if node.op == "MirrorPad":
        mode = "reflect" if node.attr("mode", "REFLECT") == "REFLECT" else "replicate"
        return _nhwc(F.pad(_nchw(x), flat[:4], mode=mode)) if x.dim() == 4 and not any(flat[4:]) else F.pad(x, flat, mode=mode)
    return F.pad(x, flat, value=value)


def _reshape(node: Node, args: Sequence[Value]) -> torch.Tensor:
    return _tensor(args[0]).reshape(static(args[1], node))


def _squeeze(node: Node, args: Sequence[Value]) -> torch.Tensor:
    x = _tensor(args[0])
    axes = node.attr("squeeze_dims") or []
    if not axes:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _expand_dims(node: Node, args: Sequence[Value]) -> torch.Tensor:
    x = _tensor(args[0])
    axis = static(args[1], node)[0]
    return x.unsqueeze(axis if axis >= 0 else x.dim() + 1 + axis)


def _strided_slice(node: Node, args: Sequence[Value]) -> torch.Tensor:
    """TensorFlow's StridedSlice with begin/end/shrink/new-axis masks (no ellipsis)."""
    x = _tensor(args[0])
    begin, end, strides = (static(value, node) for value in args[1:4])
    begin_mask, end_mask = int(node.attr("begin_mask", 0)), int(node.attr("end_mask", 0))
    shrink, new_axis = int(node.attr("shrink_axis_mask", 0)), int(node.attr("new_axis_mask", 0))
    if int(node.attr("ellipsis_mask", 0)):
        raise GraphModelError(f"node {node.name!r} (StridedSlice): ellipsis_mask is not supported")
    index: list[Any] = []
    for i, (start, stop, step) in enumerate(zip(begin, end, strides)):
        if new_axis >> i & 1:
            index.append(None)
        elif shrink >> i & 1:
            index.append(start)
        else:
            index.append(slice(None if begin_mask >> i & 1 else start, None if end_mask >> i & 1 else stop, step))
    if any(isinstance(item, slice) and (item.step or 1) < 0 for item in index):
        raise GraphModelError(f"node {node.name!r} (StridedSlice): negative strides are not supported")
    return x[tuple(index)]


def _concat(node: Node, args: Sequence[Value]) -> torch.Tensor:
    tensors = [_tensor(value) for value in args[:-1]]
    return torch.cat(tensors, dim=static(args[-1], node)[0])


def _pack(node: Node, args: Sequence[Value]) -> torch.Tensor:
    return torch.stack([_tensor(value) for value in args], dim=int(node.attr("axis", 0)))


def _softmax(node: Node, args: Sequence[Value]) -> torch.Tensor:
    return torch.softmax(_tensor(args[0]), dim=-1)


def _batch_norm(node: Node, args: Sequence[Value]) -> torch.Tensor:
    x = _tensor(args[0])
    scale, offset, mean, variance = (_tensor(value, x) for value in args[1:5])
    return (x - mean) * (scale / torch.sqrt(variance + float(node.attr("epsilon", 1e-3)))) + offset


def _depth_to_space(node: Node, args: Sequence[Value]) -> torch.Tensor:
    """NHWC DepthToSpace: channel block (i, j) of each pixel becomes pixel (h * b + i, w * b + j)."""
    _check_nhwc(node)
    x, block = _tensor(args[0]), int(node.attr("block_size", 2))
    batch, height, width, channels = x.shape
    depth = channels // (block * block)
    x = x.reshape(batch, height, width, block, block, depth).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height * block, width * block, depth)


def _resize_bilinear(node: Node, args: Sequence[Value]) -> torch.Tensor:
    """ResizeBilinear to a static size; TensorFlow's half-pixel centres are PyTorch's align_corners=False."""
    height, width = static(args[1], node)
    align_corners = bool(node.attr("align_corners", False))
    if not align_corners and not bool(node.attr("half_pixel_centers", False)):
        raise GraphModelError(f"node {node.name!r} (ResizeBilinear): the legacy mode (no half-pixel centres) is not supported")
    x = _nchw(_tensor(args[0]))
    return _nhwc(F.interpolate(x, size=(height, width), mode="bilinear", align_corners=align_corners))


# TensorFlow dtypes as torch's (integers stay 64-bit: indices and shapes are all the graphs compute with them)
_DTYPES = {"DT_FLOAT": torch.float32, "DT_INT32": torch.int64, "DT_INT64": torch.int64, "DT_BOOL": torch.bool}


def _cast(node: Node, args: Sequence[Value]) -> torch.Tensor:
    target = node.attr("DstT", "DT_FLOAT")
    if target not in _DTYPES:
        raise GraphModelError(f"node {node.name!r} (Cast): cast to {target} is not supported")
    x = _tensor(args[0])
    if _DTYPES[target] != torch.bool and not x.dtype.is_floating_point and x.dtype != torch.bool:
        return x.to(_DTYPES[target])
    return x.trunc().to(_DTYPES[target]) if _DTYPES[target] == torch.int64 and x.dtype.is_floating_point else x.to(_DTYPES[target])


def _scalar(value: Value) -> float | int:
    item = _tensor(value).reshape(-1)[0].item()
    return item


def _range(node: Node, args: Sequence[Value]) -> torch.Tensor:
    start, limit, delta = (_scalar(value) for value in args[:3])
    dtype = _DTYPES.get(node.attr("Tidx", "DT_INT32"), torch.int64)
    return torch.arange(start, limit, delta, dtype=dtype)


def _fill(node: Node, args: Sequence[Value]) -> torch.Tensor:
    value = _tensor(args[1])
    return torch.full(static(args[0], node), value.reshape(-1)[0].item(), dtype=value.dtype)


def _gather_nd(node: Node, args: Sequence[Value]) -> torch.Tensor:
    params, indices = _tensor(args[0]), _tensor(args[1]).long()
    return params[tuple(indices.unbind(-1))]


def _select(node: Node, args: Sequence[Value]) -> torch.Tensor:
    """Select: a vector condition picks whole rows of higher-rank values (SelectV2 broadcasts)."""
    condition, yes, no = (_tensor(value) for value in args[:3])
    if node.op == "Select" and condition.dim() == 1 and yes.dim() > 1:
        condition = condition.reshape(-1, *([1] * (yes.dim() - 1)))
    return torch.where(condition.bool(), yes, no)


def _split(node: Node, args: Sequence[Value]) -> tuple[torch.Tensor, ...]:
    axis, x = static(args[0], node)[0], _tensor(args[1])
    count = int(node.attr("num_split", 1))
    return tuple(torch.chunk(x, count, dim=axis))


def _unpack(node: Node, args: Sequence[Value]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.unbind(_tensor(args[0]), dim=int(node.attr("axis", 0))))


def _top_k(node: Node, args: Sequence[Value]) -> tuple[torch.Tensor, torch.Tensor]:
    k = static(args[1], node)[0]
    values, indices = torch.topk(_tensor(args[0]), k, dim=-1, largest=True, sorted=True)
    return values, indices


def _arg_max(node: Node, args: Sequence[Value]) -> torch.Tensor:
    return torch.argmax(_tensor(args[0]), dim=static(args[1], node)[0])


OPS: dict[str, Op] = {
    "Identity": lambda node, args: args[0],
    "Conv2D": lambda node, args: _conv(node, _tensor(args[0]), args[1], depthwise=False),
    "DepthwiseConv2dNative": lambda node, args: _conv(node, _tensor(args[0]), args[1], depthwise=True),
    "_FusedConv2D": lambda node, args: _fused(node, args, _conv(node, _tensor(args[0]), args[1], depthwise=False)),
    "FusedDepthwiseConv2dNative": lambda node, args: _fused(node, args, _conv(node, _tensor(args[0]), args[1], depthwise=True)),
    "MatMul": lambda node, args: _matmul(node, args[0], args[1]),
    "_FusedMatMul": lambda node, args: _fused(node, args, _matmul(node, args[0], args[1])),
    "BiasAdd": _binary(torch.add),
    "Add": _binary(torch.add),
    "AddV2": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "RealDiv": _binary(torch.div),
    "Div": _binary(torch.div),
    "Minimum": _binary(torch.minimum),
    "Maximum": _binary(torch.maximum),
    "SquaredDifference": _binary(lambda a, b: (a - b) * (a - b)),
    "Pow": _binary(torch.pow),
    "Relu": _unary(torch.relu),
    "Relu6": _unary(lambda x: torch.clamp(x, 0.0, 6.0)),
    "Elu": _unary(F.elu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Rsqrt": _unary(torch.rsqrt),
    "Square": _unary(lambda x: x * x),
    "Reciprocal": _unary(torch.reciprocal),
    "LeakyRelu": lambda node, args: F.leaky_relu(_tensor(args[0]), float(node.attr("alpha", 0.2))),
    "Prelu": lambda node, args: _prelu(_tensor(args[0]), _tensor(args[1], _tensor(args[0]))),
    "Softmax": _softmax,
    "Mean": _reduce("mean"),
    "Sum": _reduce("sum"),
    "Max": _reduce("max"),
    "Min": _reduce("min"),
    "MaxPool": lambda node, args: _pool(node, _tensor(args[0]), "max"),
    "AvgPool": lambda node, args: _pool(node, _tensor(args[0]), "avg"),
    "Pad": _pad,
    "PadV2": _pad,
    "MirrorPad": _pad,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "StridedSlice": _strided_slice,
    "ConcatV2": _concat,
    "Pack": _pack,
    "FusedBatchNorm": _batch_norm,
    "FusedBatchNormV3": _batch_norm,
    "DepthToSpace": _depth_to_space,
    "ResizeBilinear": _resize_bilinear,
    "Shape": lambda node, args: np.asarray(_tensor(args[0]).shape, dtype=np.int64),
    "Size": lambda node, args: np.asarray(_tensor(args[0]).numel(), dtype=np.int64),
    "Cast": _cast,
    "AddN": lambda node, args: torch.stack([_tensor(value) for value in args]).sum(dim=0),
    "ArgMax": _arg_max,
    "Equal": _binary(torch.eq),
    "Greater": _binary(torch.gt),
    "GreaterEqual": _binary(torch.ge),
    "Less": _binary(torch.lt),
    "LogicalAnd": _binary(torch.logical_and),
    "FloorDiv": _binary(lambda a, b: torch.div(a, b, rounding_mode="floor")),
    "Fill": _fill,
    "GatherNd": _gather_nd,
    "Range": _range,
    "Select": _select,
    "SelectV2": _select,
    "Split": _split,
    "Tile": lambda node, args: _tensor(args[0]).repeat(*static(args[1], node)),
    "TopKV2": _top_k,
    "Unpack": _unpack,
}
