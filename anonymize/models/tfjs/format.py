"""Read a TensorFlow.js graph model (``NAME.json`` + weight shards) into plain Python and NumPy.

The JSON holds a TensorFlow GraphDef under ``modelTopology.node`` and a ``weightsManifest``: groups of
shard files whose bytes, concatenated group after group, hold every constant in manifest order,
little-endian, some quantised (float16, or uint8/uint16 with ``scale`` and ``min``). Nothing is
executed or unpickled: the file is JSON and raw numbers. Every malformed input is a
:class:`GraphModelError` with one line naming the file and the node, weight or byte offset.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.errors import AnonymizeError


class GraphModelError(AnonymizeError):
    """A TensorFlow.js graph model that cannot be read or run (one line: file, node or offset, cause)."""


# dtype name in the manifest -> (NumPy dtype of the stored bytes)
_STORED = {"float32": "<f4", "int32": "<i4", "bool": "|b1", "float16": "<f2", "uint8": "|u1", "uint16": "<u2"}
_OUTPUT = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


@dataclass(frozen=True)
class Node:
    """One GraphDef node: ``inputs`` are ``name`` or ``name:k`` (control inputs ``^name`` dropped)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any]  # decoded: int, float, bool, str, list, shape tuple or dtype name

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass
class GraphDef:
    """The parsed model: nodes in file order, constant values, the signature's inputs and outputs."""

    path: Path
    nodes: dict[str, Node]
    constants: dict[str, np.ndarray]
    inputs: dict[str, tuple[int, ...]]  # placeholder -> shape (-1: any)
    outputs: list[str]  # node names (":0" dropped), the signature's order
    metadata: dict[str, Any] = field(default_factory=dict)  # generatedBy, convertedBy, format


def _decode_attr(value: Mapping[str, Any]) -> Any:
    """GraphDef AttrValue as JSON (``{"i": "2"}``, ``{"s": base64}``, ``{"list": {...}}``...) -> Python."""
    if "list" in value:
        items = value["list"]
        for key in ("i", "f", "s", "b", "type"):
            if key in items:
                return [_decode_attr({key: item}) for item in items[key]]
        return []
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8", "replace")
    if "type" in value:
        return str(value["type"])
    if "shape" in value:
        dims = value["shape"].get("dim", [])
        return tuple(int(dim.get("size", -1)) for dim in dims)
    if "tensor" in value:
        return value["tensor"]
    return None


def _node(raw: Mapping[str, Any], path: Path) -> Node:
    name = raw.get("name")
    if not isinstance(name, str) or not isinstance(raw.get("op"), str):
        raise GraphModelError(f"{path}: a node without a name or op: {json.dumps(raw)[:120]}")
    inputs = tuple(str(item) for item in raw.get("input", []) if not str(item).startswith("^"))
    try:
        attrs = {key: _decode_attr(value) for key, value in (raw.get("attr") or {}).items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise GraphModelError(f"{path}: node {name!r}: unreadable attribute ({exc})") from None
    return Node(name, raw["op"], inputs, attrs)


def split_tensor_name(name: str) -> tuple[str, int]:
    """``"node:2"`` -> ("node", 2); ``"node"`` -> ("node", 0): signatures and inputs name tensors, the graph names nodes."""
    head, _, index = name.rpartition(":")
    return (head, int(index)) if head and index.isdigit() else (name, 0)


def _tensor_name(name: str) -> str:
    """``"x:0"`` -> ``"x"`` (an output other than the first keeps its index)."""
    node, index = split_tensor_name(name)
    return node if index == 0 else name


def _read_shards(folder: Path, manifest: Sequence[Mapping[str, Any]], path: Path) -> bytes:
    chunks = []
    for group in manifest:
        for shard in group.get("paths", []):
            shard_path = folder / shard
            if Path(shard).name != shard or not shard_path.is_file():
                raise GraphModelError(f"{path}: weight shard {shard!r} not found beside the model")
            chunks.append(shard_path.read_bytes())
    return b"".join(chunks)


def _weights(manifest: Sequence[Mapping[str, Any]], data: bytes, path: Path) -> dict[str, np.ndarray]:
    """Each manifest entry's array, read in order from the concatenated shards and dequantised."""
    values: dict[str, np.ndarray] = {}
    offset = 0
    for group in manifest:
        for spec in group.get("weights", []):
            name, dtype, shape = spec.get("name"), spec.get("dtype"), tuple(int(v) for v in spec.get("shape", []))
            quantization = spec.get("quantization") or {}
            stored = quantization.get("dtype", dtype)
            if stored not in _STORED or dtype not in _OUTPUT:
                raise GraphModelError(f"{path}: weight {name!r} at byte {offset}: unsupported dtype {stored}->{dtype}")
            count = int(np.prod(shape)) if shape else 1
            size = count * np.dtype(_STORED[stored]).itemsize
            if offset + size > len(data):
                raise GraphModelError(f"{path}: weight {name!r} needs bytes {offset}..{offset + size} but the shards hold "
                                      f"{len(data)}: truncated or mismatched .bin")
            raw = np.frombuffer(data, dtype=_STORED[stored], count=count, offset=offset)
            if stored in ("uint8", "uint16") and stored != dtype:
                if "scale" not in quantization or "min" not in quantization:
                    raise GraphModelError(f"{path}: weight {name!r} at byte {offset}: {stored} quantisation without scale/min")
                array = raw.astype(np.float32) * np.float32(quantization["scale"]) + np.float32(quantization["min"])
            else:
                array = raw.astype(_OUTPUT[dtype])
            values[str(name)] = array.reshape(shape)
            offset += size
    if offset != len(data):
        raise GraphModelError(f"{path}: the shards hold {len(data)} bytes but the manifest reads {offset}: mismatched .bin")
    return values


def read_graph_model(path: Path | str) -> GraphDef:
    """Parse ``NAME.json`` and its shards; raises :class:`GraphModelError` on any malformed part."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GraphModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphModelError(f"{path}: not a TensorFlow.js model JSON ({exc})") from None
    topology = document.get("modelTopology") if isinstance(document, dict) else None
    if not isinstance(topology, dict) or not isinstance(topology.get("node"), list):
        raise GraphModelError(f"{path}: no modelTopology.node: not a TensorFlow.js graph model (a layers model?)")
    manifest = document.get("weightsManifest") or []
    nodes: dict[str, Node] = {}
    for raw in topology["node"]:
        node = _node(raw, path)
        if node.name in nodes:
            raise GraphModelError(f"{path}: node {node.name!r} defined twice")
        nodes[node.name] = node
    constants = _weights(manifest, _read_shards(path.parent, manifest, path), path)
    for node in nodes.values():
        if node.op == "Const" and node.name not in constants:
            raise GraphModelError(f"{path}: constant node {node.name!r} has no weight in the manifest")
        for name in node.inputs:
            source = split_tensor_name(name)[0]
            if source not in nodes:
                raise GraphModelError(f"{path}: node {node.name!r} reads {name!r}, which no node defines")
    inputs = {name: tuple(node.attr("shape") or ()) for name, node in nodes.items() if node.op == "Placeholder"}
    signature = document.get("signature") or (document.get("userDefinedMetadata") or {}).get("signature") or {}
    outputs = [_tensor_name(str(spec.get("name", key))) for key, spec in (signature.get("outputs") or {}).items()]
    if not outputs:  # no signature: the nodes nothing reads
        read = {split_tensor_name(name)[0] for node in nodes.values() for name in node.inputs}
        outputs = [name for name, node in nodes.items() if name not in read and node.op not in ("Const", "Placeholder")]
    for name in outputs:
        if split_tensor_name(name)[0] not in nodes:
            raise GraphModelError(f"{path}: the signature names output {name!r}, which no node defines")
    metadata = {key: document[key] for key in ("format", "generatedBy", "convertedBy") if key in document}
    return GraphDef(path, nodes, constants, inputs, outputs, metadata)
