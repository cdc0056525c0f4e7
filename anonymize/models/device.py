"""The one reading of ``--device`` for every command (run, audit, bank, calibrate, attributes)."""

from __future__ import annotations

import sys
from pathlib import Path

from anonymize.errors import AnonymizeError

AUTO = "auto"
# Where an NVIDIA driver shows itself on Linux. Without any of them CUDA cannot be available, so
# ``auto`` is answered without importing torch (1.2 s of a one-image run on the build machine).
NVIDIA_DRIVER_MARKS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl")


class DeviceError(AnonymizeError):
    """``--device cuda`` on a machine without CUDA."""


def no_cuda_driver() -> bool:
    """True when this is Linux and no NVIDIA driver is present (so torch would find no CUDA device)."""
    if "torch" in sys.modules:  # already paid for: ask it
        return False
    return sys.platform.startswith("linux") and not any(Path(mark).exists() for mark in NVIDIA_DRIVER_MARKS)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    if device == AUTO and no_cuda_driver():
        return "cpu"
    if device == "cpu":
        return device
    import torch

    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA device is available (use --device cpu or auto)")
    return device
