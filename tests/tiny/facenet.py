"""Random stand-ins, in the published layouts, for the audit's optional instruments (written at test time).

* FaceNet: timesler/facenet-pytorch's release files are ``InceptionResnetV1`` state dicts saved from
  that very class, classifier (``logits``) included: 10,575 classes for CASIA-WebFace, 8,631 for
  VGGFace2. The network has one size, so the stand-in is full-size (about 95 MB), with random weights.
* torchvision's AlexNet: only the ``features.*`` entries LPIPS uses are written (the published file
  also holds the classifier, which nothing here reads; leaving it out keeps the stand-in at 10 MB).
* pytorch-fid's Inception: a randomly initialised ``FidInceptionV3`` state dict (its own layout).
"""

from __future__ import annotations

from pathlib import Path

import torch

FACENET_CLASSES = {"casia-webface": 10575, "vggface2": 8631}


def write_random_facenet(path: Path, classes: int, seed: int) -> Path:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(seed)
    network = InceptionResnetV1(classify=False)
    network.logits = torch.nn.Linear(512, classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_random_alexnet_features(path: Path, seed: int) -> Path:
    import torchvision

    torch.manual_seed(seed)
    state = {key: value for key, value in torchvision.models.alexnet().state_dict().items() if key.startswith("features.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_random_fid_inception(path: Path, seed: int) -> Path:
    from anonymize.models.inception import FidInceptionV3

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(FidInceptionV3().state_dict(), path)
    return path
