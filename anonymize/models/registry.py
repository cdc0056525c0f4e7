"""Pretrained model name -> how to load it, kept apart from the network code (timm / open_clip style).

Each entry says which ``weights.lock`` artefact holds the weights and which loader turns the file into
a network; the network modules themselves know nothing about files or artefact names. Loaded models
are cached per (file, device) because FALCO, the bank builder and the audit would otherwise each
read the same hundreds of megabytes; that cache is the only module-level state here.

Every model comes back in eval mode with ``requires_grad`` off: they are frozen feature extractors
and a frozen generator (gradients still flow through them to their inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from anonymize.models.arcface import ArcFace, load_arcface
from anonymize.models.e4e import E4EEncoder, load_e4e
from anonymize.models.farl import FaRLEncoder, FaRLTextEncoder, load_farl, load_farl_text
from anonymize.models.stylegan2 import StyleGAN2Generator, load_stylegan2
from anonymize.weights import WeightsStore

GeneratorName = Literal["genforce", "e4e"]


@dataclass(frozen=True)
class PretrainedConfig:
    """Where one pretrained model's weights come from and how its file is read."""

    artefact: str  # name in weights.lock
    load: Callable[[Path], Any]  # file -> frozen CPU model (or tuple of models)
    summary: str


PRETRAINED: dict[str, PretrainedConfig] = {
    "e4e": PretrainedConfig(
        "e4e_ffhq_encode", load_e4e, "e4e encoder (FFHQ) and the StyleGAN2 decoder it was trained with"
    ),
    "arcface": PretrainedConfig("arcface_ir_se50", load_arcface, "ArcFace IR-SE50 identity embedding (112 px input)"),
    "farl": PretrainedConfig("farl_ep64", load_farl, "FaRL ViT-B/16 image tower, LAION-Face 64 epochs"),
    "farl_text": PretrainedConfig("farl_ep64", load_farl_text, "FaRL's CLIP text tower (same file), for zero-shot prompts"),
    "genforce": PretrainedConfig(
        "stylegan2_ffhq1024_genforce",
        lambda path: load_stylegan2(path, layout="genforce"),
        "StyleGAN2 config-f FFHQ 1024 px generator (GenForce conversion, used by FALCO)",
    ),
}

GENERATORS: tuple[GeneratorName, ...] = ("genforce", "e4e")

_CACHE: dict[tuple[str, str, int, int, str], Any] = {}


def pretrained_names() -> list[str]:
    return sorted(PRETRAINED)


def artefact_of(name: str) -> str:
    """The weights.lock artefact behind a pretrained model name."""
    return _config(name).artefact


def _config(name: str) -> PretrainedConfig:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(pretrained_names())}") from None


def _prepare(model: Any, device: torch.device) -> Any:
    if isinstance(model, tuple):
        return tuple(_prepare(part, device) for part in model)
    if isinstance(model, nn.Module):
        return model.to(device).eval().requires_grad_(False)
    return model


def load_pretrained(name: str, store: WeightsStore, device: str | torch.device = "cpu") -> Any:
    """The verified, frozen model on ``device``; a second call with the same file and device reuses it.

    Raises the store's WeightsError (one actionable line) when the artefact is missing or corrupt.
    The cache key holds the file's size and mtime too, so a file replaced in place is read again.
    """
    config = _config(name)
    path = store.require(config.artefact).resolve()
    stat = path.stat()
    device = torch.device(device)
    key = (name, str(path), stat.st_size, stat.st_mtime_ns, str(device))  # one file can hold two models (FaRL)
    if key not in _CACHE:
        _CACHE[key] = _prepare(config.load(path), device)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget every loaded model (frees their memory once nothing else holds them)."""
    _CACHE.clear()


def load_e4e_pair(store: WeightsStore, device: str | torch.device = "cpu") -> tuple[E4EEncoder, StyleGAN2Generator]:
    return load_pretrained("e4e", store, device)


def load_arcface_model(store: WeightsStore, device: str | torch.device = "cpu") -> ArcFace:
    return load_pretrained("arcface", store, device)


def load_farl_model(store: WeightsStore, device: str | torch.device = "cpu") -> FaRLEncoder:
    return load_pretrained("farl", store, device)


def load_farl_text_model(store: WeightsStore, device: str | torch.device = "cpu") -> FaRLTextEncoder:
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
