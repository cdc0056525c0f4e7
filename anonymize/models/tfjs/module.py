"""A TensorFlow.js graph model as a plain ``nn.Module``: batched, on any device, gradients to the input.

Shapes: every input and output keeps TensorFlow's layout, e.g. ``[N, H, W, C]`` float32 images in,
``[N, D]`` features out. Floating-point constants become buffers (so ``.to(device)`` moves them and
``state_dict`` lists them); integer constants that steer ops (axes, shapes) stay NumPy. Only the nodes
the requested outputs depend on are run, in dependency order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anonymize.models.tfjs.format import GraphDef, GraphModelError, Node, read_graph_model, split_tensor_name
from anonymize.models.tfjs.ops import OPS, Value


def _order(graph: GraphDef, outputs: Sequence[str]) -> list[Node]:
    """The nodes ``outputs`` need, each after its inputs (iterative, so deep graphs do not recurse)."""
    order: list[Node] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for output in outputs:
        stack = [(split_tensor_name(output)[0], False)]
        while stack:
            name, expanded = stack.pop()
            if state.get(name) == 2:
                continue
            if expanded:
                state[name] = 2
                order.append(graph.nodes[name])
                continue
            if state.get(name) == 1:
                raise GraphModelError(f"{graph.path}: node {name!r} is part of a cycle")
            state[name] = 1
            stack.append((name, True))
            for dependency in reversed(graph.nodes[name].inputs):
                source = split_tensor_name(dependency)[0]
                if state.get(source) != 2:
                    stack.append((source, False))
    return order


class GraphModule(nn.Module):
    """Runs a parsed TF.js graph; ``forward`` takes the inputs (one tensor or a name -> tensor map)."""

    def __init__(self, graph: GraphDef, outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        self.path = graph.path
        self.input_names = list(graph.inputs)
        self.input_shapes = dict(graph.inputs)
        self.output_names = [str(name) for name in (outputs or graph.outputs)]
        for name in self.output_names:
            if split_tensor_name(name)[0] not in graph.nodes:
                raise GraphModelError(f"{graph.path}: no node {name!r} to output (the model has: {', '.join(graph.outputs)})")
        self.nodes = _order(graph, self.output_names)
        self._static: dict[str, np.ndarray] = {}
        self._buffer_of: dict[str, str] = {}
        for node in self.nodes:
            if node.op == "Const":
                value = graph.constants[node.name]
                if value.dtype.kind == "f":
                    buffer = "const_" + re.sub(r"\W", "_", node.name)
                    while hasattr(self, buffer):
                        buffer += "_"
                    self.register_buffer(buffer, torch.from_numpy(value.copy()), persistent=True)
                    self._buffer_of[node.name] = buffer
                else:
                    self._static[node.name] = value
            elif node.op != "Placeholder" and node.op not in OPS:
                raise GraphModelError(f"{graph.path}: node {node.name!r}: op {node.op!r} is not supported")

    def forward(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(inputs, torch.Tensor):
            if len(self.input_names) != 1:
                raise GraphModelError(f"{self.path}: the model takes {len(self.input_names)} inputs: pass a name -> tensor map")
            inputs = {self.input_names[0]: inputs}
        values: dict[str, Value] = {}
        for node in self.nodes:
            if node.op == "Const":
                values[node.name] = getattr(self, self._buffer_of[node.name]) if node.name in self._buffer_of else self._static[node.name]
            elif node.op == "Placeholder":
                if node.name not in inputs:
                    raise GraphModelError(f"{self.path}: input {node.name!r} not given")
                values[node.name] = self._checked_input(node.name, inputs[node.name])
            else:
                args = [self._read(values, name) for name in node.inputs]
                try:
                    values[node.name] = OPS[node.op](node, args)
                except GraphModelError:
                    raise
                except (RuntimeError, IndexError, ValueError, TypeError) as exc:
                    message = " ".join(str(exc).split())[:300]
                    raise GraphModelError(f"{self.path}: node {node.name!r} ({node.op}) failed: {message}") from None
        return {name: self._read(values, name) for name in self.output_names}

    def _checked_input(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        expected = self.input_shapes.get(name, ())
        if expected and (tensor.dim() != len(expected) or any(e not in (-1, s) for e, s in zip(expected, tensor.shape))):
            raise GraphModelError(f"{self.path}: input {name!r} has shape {tuple(tensor.shape)}, the model takes {expected} (-1: any)")
        return tensor.float()

    @staticmethod
    def _read(values: Mapping[str, Value], name: str) -> Value:
        source, index = split_tensor_name(name)
        value = values[source]
        if isinstance(value, tuple):
            return value[index]
        return value


def load_graph_model(path: Path | str, outputs: Sequence[str] | None = None) -> GraphModule:
    """Read ``NAME.json`` (shards beside it) into a frozen, eval-mode :class:`GraphModule`."""
    module = GraphModule(read_graph_model(path), outputs)
    module.eval()
    for buffer in module.buffers():
        buffer.requires_grad_(False)
    return module
