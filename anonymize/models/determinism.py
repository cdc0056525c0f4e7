"""Bit-stable runs (``--deterministic``): the torch settings that make a CUDA run repeat exactly.

By default CUDA runs pick the fastest kernels: cuDNN benchmarks convolution algorithms (its choice
can differ between runs), float32 matrix products may use TF32, and some kernels (atomic-add
reductions, scatter) add in a varying order. Any of these changes the last bits of a loss, and 50
Adam steps can carry that into visible pixels. On the CPU every kernel used here is deterministic
already. The settings are process-wide, as torch keeps them.
"""

from __future__ import annotations

import os

import torch

# cuBLAS needs a fixed workspace to be deterministic; it reads this before its first use.
CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_algorithms() -> None:
    """Deterministic algorithms only (an error for an op without one), no TF32, no cuDNN benchmarking."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def deterministic_settings() -> dict[str, object]:
    """The current values of those settings (for tests and the manifest)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
