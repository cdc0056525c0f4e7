"""The W+ optimisation every latent method shares: Adam on some layers of a batch of StyleGAN2 codes.

A method brings its starting codes (an e4e inversion, a mix with a fake of the bank, an edit), the
layers that move (``trainable_layers``; the others are never written to, so they stay bitwise equal
to the start), a per-face objective (:class:`FaceLoss`: FALCO's, CFA's, camouflage's, ...) and a
:class:`Schedule` (steps, learning rate, decay, precision); :func:`optimise_codes` knows nothing else
about the method. The building blocks several objectives use live here too: the real faces'
ArcFace identities and FaRL tokens (:func:`real_targets`), FALCO's token L1 (:func:`attribute_loss`),
the mixed starting code (:func:`mix_codes`).

Batching: the per-face losses are summed, and no network mixes faces (frozen BatchNorm, per-sample
modulated convolutions, per-image attention), so the gradient reaching face i's code is exactly the
gradient of its own loss; Adam works elementwise, so each face follows the trajectory it would
follow alone, up to floating-point differences between batched and single kernels. Adam runs with
``lr`` and multiplies it by ``lr_gamma`` at 75% and 90% of the steps, as FALCO's MultiStepLR does.

Mixed precision (``bf16``, CUDA only): the networks run under bf16 autocast for both the generated
and the real side during the optimisation; embeddings and tokens are cast to float32 before the
loss, and the codes and Adam state stay float32. The final image, the one written out, is rendered
from the final codes in float32, as are the final metrics. Its effect on the loss is not measured
yet (no GPU was available when this was written): ``python -m benchmarks.falco --device cuda``
prints, for each batch size, the mean loss at the start and after the timed steps with and without
bf16 from the same codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from anonymize.models.arcface import ArcFace
from anonymize.models.farl import FaRLEncoder
from anonymize.models.images import CanonicalImages
from anonymize.models.stylegan2 import StyleGAN2Generator

LR_MILESTONES = (0.75, 0.9)


@dataclass(frozen=True)
class LossNetworks:
    """The generator and the two networks the objectives look through (ArcFace for identity, FaRL for the rest)."""

    generator: StyleGAN2Generator
    arcface: ArcFace
    farl: FaRLEncoder


@dataclass(frozen=True)
class Targets:
    """What the loss compares against, from the real crops: [B, E] identities and [B, T, C] tokens."""

    identity: Tensor
    tokens: Tensor


def autocast_for(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast on CUDA when asked; a no-op otherwise."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def real_targets(real: CanonicalImages, networks: LossNetworks, bf16: bool = False) -> Targets:
    """ArcFace identities and FaRL tokens of the real crops: what keeping (or leaving) them is measured against."""
    with autocast_for(real.tensor.device, bf16):
        identity = networks.arcface(real)
        tokens = networks.farl(real).tokens
    return Targets(identity.float(), tokens.float())


def mix_codes(real_ws: Tensor, fake_ws: Tensor, trainable_layers: Sequence[int]) -> Tensor:
    """The starting code: the real inversion, with the trainable layers taken from the fake.

    real_ws [B, L, D]; fake_ws [B, L, D] or [B, D] (a W code, the same on every layer).
    """
    if fake_ws.ndim == 2:
        fake_ws = fake_ws.unsqueeze(1).expand_as(real_ws)
    layers = torch.as_tensor(list(trainable_layers), device=real_ws.device)
    return real_ws.index_copy(1, layers, fake_ws.index_select(1, layers).to(real_ws.dtype))


def lr_at(step: int, settings: Schedule) -> float:
    """Learning rate of 0-based ``step``: decayed once for every milestone already reached."""
    milestones = [int(fraction * settings.steps) for fraction in LR_MILESTONES]
    return settings.lr * settings.lr_gamma ** sum(step >= milestone for milestone in milestones)


def embed_faces(images: CanonicalImages, networks: LossNetworks, bf16: bool) -> tuple[Tensor, Tensor]:
    """ArcFace identities [B, E] and FaRL tokens [B, T, C] of generated faces, float32 (the networks under bf16 if asked)."""
    with autocast_for(images.tensor.device, bf16):
        identity = networks.arcface(images)
        tokens = networks.farl(images).tokens
    return identity.float(), tokens.float()


def attribute_loss(tokens: Tensor, target_tokens: Tensor) -> Tensor:
    """Per-face FALCO attribute loss from [B, T, C] tokens: mean L1 over channels, summed over tokens.

    The term that keeps pose, expression and background in FALCO, CFA and the attribute edits."""
    return (tokens - target_tokens).abs().mean(dim=2).sum(dim=1)


def render(generator: StyleGAN2Generator, ws: Tensor, bf16: bool, clamp: bool = True) -> CanonicalImages:
    """G(ws) with constant noise (so a code always gives the same face), returned in float32; clamped to
    [-1, 1] unless ``clamp`` is False (then pixels beyond the range keep their gradient)."""
    with autocast_for(ws.device, bf16):
        if clamp:
            images = generator(ws, noise_mode="const").tensor
        else:
            images = generator.synthesis(ws, noise_mode="const")
    return CanonicalImages(images.float())


class Schedule(Protocol):
    """What the loop needs to know besides the loss: how long, how fast, in which precision."""

    steps: int
    lr: float
    lr_gamma: float
    bf16: bool


class FaceLoss(Protocol):
    """A per-face objective: (generated faces, their full W+ codes, bf16) -> (total [B], named parts [B] each).

    The parts are what the caller wants to read at the start and at the end (cosines, attribute loss).
    """

    def __call__(self, images: CanonicalImages, ws: Tensor, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass
class LoopResult:
    ws: Tensor  # [B, num_ws, w_dim] final codes
    images: CanonicalImages  # G(final codes), float32
    start: dict[str, Tensor]  # the loss's parts at the starting code
    end: dict[str, Tensor]  # the same at the final code, evaluated in float32
    loss_history: Tensor  # [steps + 1, B]


def optimise_codes(initial_ws: Tensor, trainable_layers: Sequence[int], generator: StyleGAN2Generator,
                   loss: FaceLoss, schedule: Schedule, on_step: Callable[[int], None] | None = None,
                   clamp: bool = True) -> LoopResult:
    """The W+ optimisation every latent method shares (see the module docstring): Adam on the trainable
    layers of a batch of codes, the per-face losses summed, the written face rendered in float32.

    ``on_step(i)`` (optional) is told the 0-based step before each loss evaluation, and ``steps`` before
    the final one, for objectives whose weights follow a schedule (the parts method's identity ramp).
    With ``clamp=False`` the faces the loss sees during the steps are the generator's raw output (FALCO, as
    its reference); the final, written face is clamped either way."""
    frozen = initial_ws.detach().float()
    layers = torch.as_tensor(list(trainable_layers), device=frozen.device)
    trainable = frozen.index_select(1, layers).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([trainable], lr=schedule.lr)
    history = []
    start = None
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        if on_step is not None:
            on_step(step)
        ws = frozen.index_copy(1, layers, trainable)
        images = render(generator, ws, schedule.bf16, clamp)
        losses, parts = loss(images, ws, schedule.bf16)
        if step == 0:
            start = {name: value.detach() for name, value in parts.items()}
        history.append(losses.detach())
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
    if on_step is not None:
        on_step(schedule.steps)
    with torch.no_grad():
        final_ws = frozen.index_copy(1, layers, trainable.detach())
        images = render(generator, final_ws, bf16=False)  # the written face: float32 even under bf16
        losses, end = loss(images, final_ws, False)
    history.append(losses)
    if start is None:  # zero steps: the start is the end
        start = end
    return LoopResult(final_ws, images, start, end, torch.stack(history))
