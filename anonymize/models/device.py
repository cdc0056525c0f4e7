"""The one reading of ``--device`` for every command (run, audit, bank, calibrate, attributes)."""

from __future__ import annotations

from anonymize.errors import AnonymizeError

AUTO = "auto"


class DeviceError(AnonymizeError):
    """``--device cuda`` on a machine without CUDA."""


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA device is available (use --device cpu or auto)")
    return device
