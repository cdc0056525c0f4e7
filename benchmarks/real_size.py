"""FALCO's four networks at their published sizes, randomly initialised (no checkpoint needed).

Speed and memory depend on the shapes, not on the trained values, so the benchmarks build the
modules straight from the model classes: StyleGAN2 config-f at 1024 px, the e4e encoder and ArcFace
on the IR-SE50 trunk, and FaRL's ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anonymize.methods.latent.optimize import LossNetworks
from anonymize.models.arcface import ArcFace
from anonymize.models.e4e import E4EEncoder
from anonymize.models.farl import FaRLEncoder, VisionConfig
from anonymize.models.irse import block_specs
from anonymize.models.stylegan2 import StyleGAN2Config, StyleGAN2Generator

GENERATOR_RESOLUTION = 1024
W_DIM = 512
NUM_WS = 18
E4E_COARSE_CONVS = 4  # c3 at 16 x 16 over a 256 px input
ARCFACE_FINAL_SIDE = 7  # 112 px input
EMBEDDING = 512
FARL = VisionConfig(width=768, layers=12, patch_size=16, grid=14, embed_dim=512)


@dataclass(frozen=True)
class RealSizeNetworks:
    encoder: E4EEncoder
    losses: LossNetworks


def _frozen(module: torch.nn.Module, device: str) -> torch.nn.Module:
    return module.to(device).eval().requires_grad_(False)


def build(device: str, seed: int = 0) -> RealSizeNetworks:
    torch.manual_seed(seed)
    generator = StyleGAN2Generator(StyleGAN2Config.config_f(GENERATOR_RESOLUTION))
    encoder = E4EEncoder(block_specs(50), NUM_WS, W_DIM, E4E_COARSE_CONVS, torch.zeros(W_DIM))
    arcface = ArcFace(block_specs(50), ARCFACE_FINAL_SIDE, EMBEDDING)
    farl = FaRLEncoder(FARL)
    return RealSizeNetworks(_frozen(encoder, device),
                            LossNetworks(_frozen(generator, device), _frozen(arcface, device), _frozen(farl, device)))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
