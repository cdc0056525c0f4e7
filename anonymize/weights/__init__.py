"""Pretrained weights: the pinned list (``weights.lock``) and the verified local store."""

from anonymize.weights.human import HUMAN_MODELS, graph_model_files
from anonymize.weights.lock import Archive, Artifact, WeightsError, default_lock_path, read_lock
from anonymize.weights.store import Check, FetchError, Status, WeightsStore, default_weights_dir

__all__ = [
    "Archive",
    "Artifact",
    "Check",
    "FetchError",
    "HUMAN_MODELS",
    "Status",
    "WeightsError",
    "WeightsStore",
    "default_lock_path",
    "default_weights_dir",
    "graph_model_files",
    "read_lock",
]
