"""Seconds per face per FALCO step at real network sizes (random weights), and for a 50-step face.

A step is one forward and backward pass through the 1024 px generator, ArcFace and FaRL plus the
Adam update, exactly :func:`anonymize.methods.falco.loss.optimise_latents`. The time of a run
of S steps is a fixed part (one extra final render and loss) plus S times the step time; timing
runs of two different lengths separates the two, and 50 steps are extrapolated from them.

On CPU one real-size step takes seconds, so only batch 1 and two short runs are timed; on CUDA
batches of 1, 4 and 8 run with and without bf16 autocast, with their peak memory and the mean loss
at the start and the end of the run (the same codes and targets with and without bf16, so the two
rows of a batch show what bf16 does to the loss). ``saved_gib_per_face`` is what autograd keeps
for the backward pass of one face (the bulk of an optimisation's memory), counted with
saved-tensor hooks; it sizes FALCO's default batch.

The ``reference way`` row (on CUDA, or with ``--reference``) is the side-by-side baseline: the
same steps as the authors' ``anonymize.py`` runs them, one face at a time in float32, the real
face's ArcFace and FaRL features recomputed at every step, the loss averaged over the batch of one.
``--deterministic`` times everything under :func:`anonymize.models.determinism.use_deterministic_algorithms`.
``python -m benchmarks.falco --device cpu|cuda [--batch-sizes 1 4 8] [--reference] [--deterministic]``
"""

from __future__ import annotations

import argparse
import time

import torch

from anonymize.methods.falco.loss import OptimSettings, face_losses, optimise_latents
from anonymize.methods.latent.optimize import real_targets, render
from anonymize.models.images import CanonicalImages
from benchmarks import real_size
from benchmarks.models import print_table

TRAINABLE_LAYERS = (3, 4, 5, 6, 7)
FULL_STEPS = 50
CPU_RUNS = (1, 2)  # step counts of the two timed runs
CUDA_RUNS = (3, 13)
CPU_BATCHES = (1,)
CUDA_BATCHES = (1, 4, 8)
PSI = 0.7


def _inputs(networks: real_size.RealSizeNetworks, batch: int, device: str) -> tuple[CanonicalImages, torch.Tensor]:
    """Random real crops and truncated starting codes, the same for every call with the same batch."""
    generator = torch.Generator().manual_seed(batch)
    real = CanonicalImages((torch.rand(batch, 3, 256, 256, generator=generator) * 2 - 1).to(device))
    z = torch.randn(batch, networks.losses.generator.z_dim, generator=generator).to(device)
    with torch.no_grad():
        w = networks.losses.generator.mapping(z, truncation_psi=PSI)
    return real, w.unsqueeze(1).repeat(1, networks.losses.generator.num_ws, 1)


def saved_bytes_per_face(networks: real_size.RealSizeNetworks, device: str) -> int:
    """Bytes autograd saves for the backward pass of one face's loss (each storage counted once)."""
    real, initial = _inputs(networks, 1, device)
    targets = real_targets(real, networks.losses)
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    trainable = initial.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        images = render(networks.losses.generator, trainable, bf16=False)
        face_losses(images, targets, networks.losses, OptimSettings())
    return sum(storages.values())


def time_optimisation(networks: real_size.RealSizeNetworks, batch: int, device: str, bf16: bool,
                      runs: tuple[int, int]) -> dict[str, object]:
    """Step time and 50-step time per face, peak memory (CUDA) and mean loss at start and end."""
    real, initial = _inputs(networks, batch, device)
    targets = real_targets(real, networks.losses, bf16)
    timings, result = [], None
    if device == "cuda":
        optimise_latents(initial, TRAINABLE_LAYERS, targets, networks.losses, OptimSettings(steps=1, bf16=bf16))  # warm-up
        torch.cuda.reset_peak_memory_stats()
    for steps in runs:
        real_size.synchronize(device)
        started = time.perf_counter()
        result = optimise_latents(initial, TRAINABLE_LAYERS, targets, networks.losses, OptimSettings(steps=steps, bf16=bf16))
        real_size.synchronize(device)
        timings.append(time.perf_counter() - started)
    per_step = (timings[1] - timings[0]) / (runs[1] - runs[0])
    fixed = max(timings[0] - runs[0] * per_step, 0.0)
    row: dict[str, object] = {
        "device": device, "batch": batch, "bf16": bf16, "steps_timed": f"{runs[0]}, {runs[1]}",
        "s_per_face_per_step": round(per_step / batch, 4),
        f"s_per_face_{FULL_STEPS}_steps": round((fixed + FULL_STEPS * per_step) / batch, 3),
        "loss_start": round(float(result.loss_history[0].mean()), 4),
        f"loss_after_{runs[1]}": round(float(result.loss_history[-1].mean()), 4),
    }
    if device == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def time_reference_way(networks: real_size.RealSizeNetworks, device: str, runs: tuple[int, int]) -> dict[str, object]:
    """Seconds per face for the reference's loop: batch 1, float32, real features recomputed every step."""
    real, initial = _inputs(networks, 1, device)
    layers = torch.as_tensor(TRAINABLE_LAYERS, device=initial.device)
    timings = []
    for steps in runs:
        trainable = initial.index_select(1, layers).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([trainable], lr=OptimSettings().lr)
        real_size.synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            images = render(networks.losses.generator, initial.index_copy(1, layers, trainable), bf16=False)
            targets = real_targets(real, networks.losses)  # the reference extracts y's features inside each loss call
            losses, _, _ = face_losses(images, targets, networks.losses, OptimSettings())
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
        with torch.no_grad():
            render(networks.losses.generator, initial.index_copy(1, layers, trainable.detach()), bf16=False)
        real_size.synchronize(device)
        timings.append(time.perf_counter() - started)
    per_step = (timings[1] - timings[0]) / (runs[1] - runs[0])
    fixed = max(timings[0] - runs[0] * per_step, 0.0)
    return {"device": device, "batch": "reference way", "bf16": False, "steps_timed": f"{runs[0]}, {runs[1]}",
            "s_per_face_per_step": round(per_step, 4),
            f"s_per_face_{FULL_STEPS}_steps": round(fixed + FULL_STEPS * per_step, 3)}


def run(device: str, batch_sizes: tuple[int, ...] | None = None, reference: bool | None = None) -> list[dict[str, object]]:
    networks = real_size.build(device)
    cuda = device == "cuda"
    batch_sizes = batch_sizes or (CUDA_BATCHES if cuda else CPU_BATCHES)
    runs = CUDA_RUNS if cuda else CPU_RUNS
    saved = saved_bytes_per_face(networks, device)
    rows = []
    for batch in batch_sizes:
        for bf16 in ((False, True) if cuda else (False,)):
            row = time_optimisation(networks, batch, device, bf16, runs)
            row["saved_gib_per_face"] = round(saved / 2**30, 2)
            rows.append(row)
    if cuda if reference is None else reference:
        rows.append(time_reference_way(networks, device, runs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=None)
    parser.add_argument("--reference", action="store_true", default=None, help="add the reference-way row on CPU too")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms, no TF32 (--deterministic runs)")
    args = parser.parse_args()
    if args.deterministic:
        from anonymize.models.determinism import use_deterministic_algorithms

        use_deterministic_algorithms()
    rows = run(args.device, tuple(args.batch_sizes) if args.batch_sizes else None, args.reference)
    print_table(f"FALCO optimisation at 1024 px, real-size networks, random weights ({args.device})", rows)


if __name__ == "__main__":
    main()
