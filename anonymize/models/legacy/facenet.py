"""timesler/facenet-pytorch's published state dicts as facenet-pytorch's ``InceptionResnetV1``.

The files (Sandberg's models trained on CASIA-WebFace and on VGGFace2) are read with ``weights_only``
through :func:`anonymize.models.checkpoint.load_checkpoint` and loaded strictly. They carry a classifier
(``logits``) whose size names the training set; it is loaded so the layout is checked, and unused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anonymize.models.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict


def load_facenet(path: Path) -> torch.nn.Module:
    """InceptionResnetV1 with the state dict at ``path`` (classifier size read off the file), in eval mode."""
    from facenet_pytorch import InceptionResnetV1

    state = load_checkpoint(path)
    if not isinstance(state, dict) or "logits.weight" not in state:
        raise CheckpointError(f"{path}: not a facenet-pytorch InceptionResnetV1 state dict (no 'logits.weight')")
    network = InceptionResnetV1(classify=False)
    network.logits = torch.nn.Linear(512, int(state["logits.weight"].shape[0]))  # present in the file, unused
    load_state_dict_strict(network, state, str(path))
    return network.eval()
