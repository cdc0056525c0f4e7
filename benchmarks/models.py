"""Forward and forward+backward time of each FALCO network alone, at real size with random weights.

Backward means the gradient with respect to the input (the networks are frozen), which is what
FALCO's optimisation asks of the generator, ArcFace and FaRL on every step.
``python -m benchmarks.models --device cpu|cuda [--batch-sizes 1 8]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from anonymize.models.images import CanonicalImages
from benchmarks import real_size

CPU_BATCHES = (1,)
CUDA_BATCHES = (1, 8)


def timed(step: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    step()
    real_size.synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        real_size.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cases(networks: real_size.RealSizeNetworks, batch: int, device: str) -> dict[str, tuple[str, Callable[[bool], torch.Tensor]]]:
    """name -> (input description, run(with_grad) -> scalar to differentiate)."""
    losses = networks.losses
    generator = losses.generator
    ws = torch.randn(batch, generator.num_ws, generator.w_dim, device=device)
    faces_256 = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    faces_224 = torch.rand(batch, 3, 224, 224, device=device) * 2 - 1

    def with_input(tensor: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[bool], torch.Tensor]:
        def run(grad: bool) -> torch.Tensor:
            source = tensor.detach().requires_grad_(grad)
            return forward(source).float().sum()
        return run

    return {
        "StyleGAN2 generator": (f"W+ -> {generator.resolution} px", with_input(ws, lambda w: generator(w).tensor)),
        "e4e encoder": ("256 px", with_input(faces_256, lambda x: networks.encoder(CanonicalImages(x)))),
        "ArcFace IR-SE50": ("256 px aligned (112 px inner crop)", with_input(faces_256, lambda x: losses.arcface(CanonicalImages(x)))),
        "FaRL ViT-B/16": ("224 px (197 tokens)", with_input(faces_224, lambda x: losses.farl(CanonicalImages(x)).tokens)),
    }


def run(device: str, batch_sizes: tuple[int, ...] | None = None, repeats: int | None = None) -> list[dict[str, object]]:
    """One row per network and batch size: forward and forward+backward seconds (median)."""
    networks = real_size.build(device)
    batch_sizes = batch_sizes or (CUDA_BATCHES if device == "cuda" else CPU_BATCHES)
    repeats = repeats or (10 if device == "cuda" else 2)
    modules = {"StyleGAN2 generator": networks.losses.generator, "e4e encoder": networks.encoder,
               "ArcFace IR-SE50": networks.losses.arcface, "FaRL ViT-B/16": networks.losses.farl}
    rows = []
    for batch in batch_sizes:
        for name, (described, forward) in _cases(networks, batch, device).items():
            def forward_only() -> None:
                with torch.no_grad():
                    forward(False)

            forward_s = timed(forward_only, device, repeats)
            both_s = timed(lambda: forward(True).backward(), device, repeats)
            rows.append({
                "device": device, "network": name, "input": described, "batch": batch,
                "params_M": round(real_size.parameter_count(modules[name]) / 1e6, 1),
                "forward_s": round(forward_s, 4), "forward_backward_s": round(both_s, 4),
                "forward_backward_s_per_face": round(both_s / batch, 4),
            })
    return rows


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    grid = Table(title=title)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(str(row.get(column, "")) for column in columns))
    Console(width=200).print(grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    rows = run(args.device, tuple(args.batch_sizes) if args.batch_sizes else None, args.repeats)
    print_table(f"FALCO networks alone, real size, random weights ({args.device})", rows)


if __name__ == "__main__":
    main()
