"""Tiny TensorFlow.js graph models written by hand: a GraphDef JSON and its weight shard."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def attr(value: Any) -> dict[str, Any]:
    """A Python value as a GraphDef AttrValue in TF.js JSON (strings base64, ints as strings)."""
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, float):
        return {"f": value}
    if isinstance(value, str):
        return {"s": base64.b64encode(value.encode()).decode()}
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], str):
            return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in value]}}
        return {"list": {"i": [str(v) for v in value]}}
    raise TypeError(value)


def node(name: str, op: str, inputs: Sequence[str] = (), **attrs: Any) -> dict[str, Any]:
    return {"name": name, "op": op, "input": list(inputs), "attr": {key: attr(value) for key, value in attrs.items()}}


def write_graph_model(folder: Path, name: str, input_shape: Sequence[int], nodes: Sequence[dict[str, Any]],
                      constants: Mapping[str, np.ndarray], outputs: Sequence[str],
                      quantize: Mapping[str, str] | None = None) -> Path:
    """``folder/name.json`` and ``name.bin``: a Placeholder ``input``, ``Const`` nodes for ``constants``, then ``nodes``.

    ``quantize`` maps a constant to ``float16`` or ``uint8`` (with scale/min chosen from its range).
    """
    folder.mkdir(parents=True, exist_ok=True)
    quantize = dict(quantize or {})
    specs, chunks = [], []
    graph = [{"name": "input", "op": "Placeholder",
              "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [{"size": str(s)} for s in input_shape]}}}}]
    for key, value in constants.items():
        value = np.asarray(value)
        dtype = "int32" if value.dtype.kind in "iu" else "float32"
        graph.append({"name": key, "op": "Const", "attr": {"dtype": {"type": "DT_INT32" if dtype == "int32" else "DT_FLOAT"}}})
        spec: dict[str, Any] = {"name": key, "shape": list(value.shape), "dtype": dtype}
        mode = quantize.get(key)
        if mode == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            chunks.append(value.astype("<f2").tobytes())
        elif mode == "uint8":
            low, high = float(value.min()), float(value.max())
            scale = (high - low) / 255 or 1.0
            spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": low, "original_dtype": "float32"}
            chunks.append(np.round((value - low) / scale).astype("|u1").tobytes())
        else:
            chunks.append(value.astype("<i4" if dtype == "int32" else "<f4").tobytes())
        specs.append(spec)
    graph += list(nodes)
    document = {
        "format": "graph-model",
        "generatedBy": "tests",
        "convertedBy": "tests",
        "signature": {"outputs": {out: {"name": f"{out}:0"} for out in outputs}},
        "modelTopology": {"node": graph, "library": {}, "versions": {}},
        "weightsManifest": [{"paths": [f"{name}.bin"], "weights": specs}],
    }
    (folder / f"{name}.bin").write_bytes(b"".join(chunks))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path
