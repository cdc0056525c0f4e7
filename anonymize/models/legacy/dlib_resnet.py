"""dlib's ``dlib_face_recognition_resnet_model_v1.dat`` read byte by byte into a :class:`DlibFaceResNet` (no dlib, no pickle).

The file format, as dlib writes it (``dlib/serialize.h``, ``dlib/dnn/core.h``, ``layers.h``,
``loss.h``, ``input.h``, ``dlib/cuda/tensor.h``):

* an integer is one control byte (low 4 bits: how many little-endian magnitude bytes follow; bit 7:
  negative) and then those bytes;
* a float is two integers, a 64-bit mantissa and a 16-bit exponent: ``mantissa * 2**exponent``
  (exponents 32000/32001/32002 mean +inf/-inf/nan);
* a string is its length (integer) and its bytes; a bool is the ASCII byte '0' or '1';
* a tensor is version 2, then num_samples, k, nr, nc and ``n*k*nr*nc`` little-endian float32s; an
  alias tensor (the views ``gamma``/``beta``/``filters``) is version 1 and its four sizes only.

A network nests: each layer writes its version, then its whole sub-network, then its own details
(``con_6``, ``affine_2``/``bn_con2``, ``relu_2``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_3``)
and bookkeeping (bools and cached tensors). So the file holds the layer headers from the loss down
to the input layer, then the details from the input back up. The reader walks the architecture of
``examples/dnn_face_recognition_ex.cpp`` (the ``anet_type`` the file was saved as) and checks every
name, version, size and stride against it; any other or damaged file fails with one line naming
the byte offset and what was expected there.

"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anonymize.errors import AnonymizeError
from anonymize.models.dlib_resnet import CHIP_SIZE, DlibFaceResNet, LayerSpec, ParsedLayer, ParsedNetwork, face_recognition_layers

_FLOAT_SPECIAL = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}


class DlibFormatError(AnonymizeError, ValueError):
    """A file that is not the dlib network it should be; the message is one line."""


# ---- the byte reader ------------------------------------------------------------------------------


class _Bytes:
    """Cursor over the file's bytes with dlib's primitive decoders; every failure names the offset."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def fail(self, at: int, expected: str, found: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: at byte {at}: expected {expected}, found {found}")

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise self.fail(self.pos, f"{count} byte(s) of {what}", f"end of file ({len(self.data)} bytes)")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str) -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(start, f"an integer ({what})", f"control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def expect_integer(self, what: str, allowed: Sequence[int]) -> int:
        start = self.pos
        value = self.integer(what)
        if value not in allowed:
            wanted = " or ".join(str(a) for a in allowed)
            raise self.fail(start, f"{what} {wanted}", str(value))
        return value

    def boolean(self, what: str) -> bool:
        start = self.pos
        value = self.take(1, what)
        if value not in (b"0", b"1"):
            raise self.fail(start, f"a bool '0' or '1' ({what})", repr(value))
        return value == b"1"

    def real(self, what: str) -> float:
        start = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(start, f"a binary float ({what})", "dlib's old text float format")
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return float(np.ldexp(float(mantissa), exponent))

    def string(self, what: str) -> str:
        start = self.pos
        length = self.integer(what)
        if not 0 <= length <= 256:
            raise self.fail(start, f"a short string ({what})", f"length {length}")
        raw = self.take(length, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(start + 1, f"an ASCII string ({what})", repr(raw[:40])) from None

    def expect_string(self, what: str, allowed: Sequence[str]) -> str:
        start = self.pos
        value = self.string(what)
        if value not in allowed:
            wanted = " or ".join(repr(a) for a in allowed)
            raise self.fail(start, f"{what} {wanted}", repr(value))
        return value

    def _sizes(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        sizes = tuple(self.integer(f"{what} size") for _ in range(4))
        if any(s < 0 for s in sizes):
            raise self.fail(start, f"non-negative sizes of {what}", str(sizes))
        return sizes  # type: ignore[return-value]

    def tensor(self, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A float32 tensor; with ``shape``, its element count must be that shape's (then reshaped)."""
        self.expect_integer(f"{what} tensor version", (2,))
        start = self.pos
        sizes = self._sizes(what)
        count = int(np.prod(sizes))
        if shape is not None and count != int(np.prod(shape)):
            raise self.fail(start, f"{what} with {int(np.prod(shape))} values {shape}", f"sizes {sizes}")
        values = np.frombuffer(self.take(4 * count, f"{what} values"), dtype="<f4").astype(np.float32)
        return values.reshape(shape if shape is not None else sizes)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        self.expect_integer(f"{what} alias version", (1,))
        return self._sizes(what)


# ---- the file's layers, as the architecture expects them ----------------------------------------


def _read_input(data: _Bytes) -> tuple[float, float, float]:
    data.expect_string("input layer name", ("input_rgb_image_sized",))
    means = tuple(data.real(f"{colour} mean") for colour in ("red", "green", "blue"))
    for axis in ("rows", "columns"):
        data.expect_integer(f"input {axis}", (CHIP_SIZE,))
    return means  # type: ignore[return-value]


def _read_window(data: _Bytes, spec: LayerSpec, name: str) -> None:
    data.expect_string("layer name", (f"{name}_2",))
    for what in ("rows", "columns"):
        data.expect_integer(f"{name} window {what}", (spec.size,))
    for what in ("y", "x"):
        data.expect_integer(f"{name} stride_{what}", (spec.stride,))
    for what in ("y", "x"):
        data.expect_integer(f"{name} padding_{what}", (spec.padding,))


def _read_multipliers(data: _Bytes, what: str, count: int = 4) -> None:
    for _ in range(count):
        data.real(f"{what} learning-rate / weight-decay multiplier")


def _read_con(data: _Bytes, spec: LayerSpec, in_channels: int, layer: ParsedLayer) -> None:
    version = data.expect_string("layer name", ("con_4", "con_5", "con_6"))[-1]
    filters = spec.outputs * in_channels * spec.size * spec.size
    params = data.tensor("con params", (filters + spec.outputs,))
    data.expect_integer("con num_filters", (spec.outputs,))
    for what in ("rows", "columns"):
        data.expect_integer(f"con filter {what}", (spec.size,))
    for what in ("y", "x"):
        data.expect_integer(f"con stride_{what}", (spec.stride,))
    for what in ("y", "x"):
        data.expect_integer(f"con padding_{what}", (spec.padding,))
    start = data.pos
    if data.alias_tensor("con filters") != (spec.outputs, in_channels, spec.size, spec.size):
        raise data.fail(start, f"con filters of shape {(spec.outputs, in_channels, spec.size, spec.size)}", "another shape")
    start = data.pos
    if data.alias_tensor("con biases") != (1, spec.outputs, 1, 1):
        raise data.fail(start, f"con biases of shape (1, {spec.outputs}, 1, 1)", "another shape")
    _read_multipliers(data, "con")
    use_bias = data.boolean("con use_bias") if version in "56" else True
    layer.fused_relu = data.boolean("con use_relu") if version == "6" else False
    layer.tensors["weight"] = params[:filters].reshape(spec.outputs, in_channels, spec.size, spec.size)
    layer.tensors["bias"] = params[filters:] if use_bias else np.zeros(spec.outputs, np.float32)


def _read_affine(data: _Bytes, channels: int, layer: ParsedLayer) -> None:
    name = data.expect_string("layer name", ("affine_", "affine_2", "bn_con2"))
    if name == "bn_con2":
        params = data.tensor("bn params", (2 * channels,))
        data.alias_tensor("bn gamma")
        data.alias_tensor("bn beta")
        data.tensor("bn means")
        data.tensor("bn invstds")
        running_mean = data.tensor("bn running means", (channels,))
        running_var = data.tensor("bn running variances", (channels,))
        data.integer("bn num_updates")
        data.integer("bn running_stats_window_size")
        _read_multipliers(data, "bn")
        eps = np.float32(data.real("bn eps"))
        scale = params[:channels] / np.sqrt(running_var + eps)
        layer.tensors["scale"] = scale.astype(np.float32)
        layer.tensors["shift"] = (params[channels:] - scale * running_mean).astype(np.float32)
        return
    params = data.tensor("affine params", (2 * channels,))
    for what in ("gamma", "beta"):
        start = data.pos
        if data.alias_tensor(f"affine {what}") != (1, channels, 1, 1):
            raise data.fail(start, f"affine {what} of shape (1, {channels}, 1, 1) (convolutional mode)", "another shape")
    data.expect_integer("affine mode (0 = convolutional)", (0,))
    layer.disabled = data.boolean("affine disabled") if name == "affine_2" else False
    layer.tensors["scale"] = params[:channels]
    layer.tensors["shift"] = params[channels:]


def _read_fc(data: _Bytes, spec: LayerSpec, in_features: int, layer: ParsedLayer) -> None:
    name = data.expect_string("layer name", ("fc_2", "fc_3"))
    data.expect_integer("fc num_outputs", (spec.outputs,))
    data.expect_integer("fc num_inputs", (in_features,))
    weights = data.tensor("fc params", (in_features, spec.outputs))
    data.alias_tensor("fc weights")
    data.alias_tensor("fc biases")
    data.expect_integer("fc bias mode (1 = no bias)", (1,))
    _read_multipliers(data, "fc")
    if name == "fc_3":
        data.boolean("fc use_bias")
    layer.tensors["weight"] = np.ascontiguousarray(weights.T)


def _read_details(data: _Bytes, spec: LayerSpec, channels: int, layer: ParsedLayer) -> None:
    if spec.kind == "con":
        _read_con(data, spec, channels, layer)
    elif spec.kind == "affine":
        _read_affine(data, channels, layer)
    elif spec.kind == "relu":
        if data.expect_string("layer name", ("relu_", "relu_2")) == "relu_2":
            layer.disabled = data.boolean("relu disabled")
    elif spec.kind in ("max_pool", "avg_pool"):
        _read_window(data, spec, spec.kind)
    elif spec.kind == "add_prev":
        data.expect_string("layer name", ("add_prev_",))
    elif spec.kind == "fc":
        _read_fc(data, spec, channels, layer)


def _channels_after(spec: LayerSpec, channels: int, tags: dict[int, int]) -> int:
    if spec.kind == "tag":
        tags[spec.tag] = channels
    elif spec.kind == "skip":
        return tags[spec.tag]
    elif spec.kind == "add_prev":
        return max(channels, tags[spec.tag])
    elif spec.kind in ("con", "fc"):
        return spec.outputs
    return channels


def parse_network(data: bytes, name: str, layers: Sequence[LayerSpec] | None = None) -> ParsedNetwork:
    """Parse a serialised ``loss_metric`` network of the given architecture (dlib's face ResNet by default)."""
    layers = list(layers or face_recognition_layers())
    reader = _Bytes(data, name)
    reader.expect_integer("loss layer version", (1,))
    loss = reader.expect_string("loss name", ("loss_metric_", "loss_metric_2"))
    margin, threshold = (reader.real("loss margin"), reader.real("loss distance threshold")) if loss.endswith("2") else (0.1, 0.75)
    # Headers, from the layer under the loss down to the one above the input.
    versions: list[int] = [0] * len(layers)
    for index in range(len(layers) - 1, 0, -1):
        spec = layers[index]
        on_input = index == 1
        if spec.kind in ("tag", "skip"):
            versions[index] = reader.expect_integer(f"{spec.kind} layer version", (1,))
        else:
            allowed = (2, 3) if on_input else (1, 2)
            versions[index] = reader.expect_integer(f"layer version ({spec.kind})", allowed)
    means = _read_input(reader)
    # Details, from the input back up.
    parsed = [ParsedLayer(layers[0])]
    channels, tags = 3, {}
    for index in range(1, len(layers)):
        spec = layers[index]
        layer = ParsedLayer(spec)
        if spec.kind not in ("tag", "skip"):
            _read_details(reader, spec, channels, layer)
            for what in ("this_layer_setup_called", "gradient_input_is_stale", "output_and_gradient_disabled"):
                reader.boolean(what)
            reader.tensor("x_grad")
            reader.tensor("cached_output")
            if index == 1:
                reader.tensor("grad_final")
                if versions[index] == 3:
                    reader.integer("sample_expansion_factor")
            elif versions[index] == 2:
                reader.tensor("params_grad")
        parsed.append(layer)
        channels = _channels_after(spec, channels, tags)
    if reader.pos != len(data):
        raise reader.fail(reader.pos, "the end of the file", f"{len(data) - reader.pos} more byte(s)")
    return ParsedNetwork(parsed, means, margin, threshold)


# ---- the file -------------------------------------------------------------------------------------


def load_dlib_face_resnet(path: Path) -> DlibFaceResNet:
    """Read ``dlib_face_recognition_resnet_model_v1.dat`` (no dlib, no pickle)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DlibFormatError(f"{path}: cannot read: {error.strerror or error}") from None
    return DlibFaceResNet(parse_network(data, str(path))).eval()
