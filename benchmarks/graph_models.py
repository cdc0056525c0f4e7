"""The TF.js models (human-models) read by the project: faces per second, forward and forward+backward.

Backward is the gradient with respect to the input, what an attack through a recogniser asks of it.
``python -m benchmarks.graph_models --weights-dir DIR [--device cpu|cuda] [--batch 32]`` (DIR/human-models holds them)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from anonymize.models.human import load_human_model
from anonymize.weights import WeightsStore
from benchmarks.models import print_table, timed

MODELS = ("faceres", "mobileface", "gear", "emotion", "age", "gender")


def run(device: str, weights_dir: Path | None, batch: int = 32, repeats: int = 3) -> list[dict[str, object]]:
    store = WeightsStore(weights_dir)
    rows = []
    for name in MODELS:
        network = load_human_model(store, name, None, device)
        _, height, width, channels = next(iter(network.input_shapes.values()))
        x = (torch.rand(batch, height, width, channels, device=device) * 255).requires_grad_(True)

        def forward() -> None:
            with torch.no_grad():
                network(x)

        def backward() -> None:
            sum(value.sum() for value in network(x).values()).backward()

        seconds, with_grad = timed(forward, device, repeats), timed(backward, device, repeats)
        rows.append({"model": name, "device": device, "input": f"{batch} x {height} x {width} x {channels}",
                     "faces/s forward": f"{batch / seconds:.1f}", "faces/s forward+backward": f"{batch / with_grad:.1f}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print_table(f"TF.js models in PyTorch ({args.device})", run(args.device, args.weights_dir, args.batch))


if __name__ == "__main__":
    main()
