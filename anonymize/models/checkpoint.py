"""Safe checkpoint reading shared by every network loader.

Published checkpoints are pickles; unpickling one can run arbitrary code. We only ever call
``torch.load(weights_only=True)`` and allow-list the few plain types the real files contain
(e4e stores its training options as an ``argparse.Namespace``).
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Mapping
from pathlib import Path

from typing import TYPE_CHECKING

from anonymize.errors import AnonymizeError

if TYPE_CHECKING:  # torch is imported where a checkpoint is read: `anonymize --help` never pays for it
    import torch
    from torch import nn

SAFE_GLOBALS: list = [argparse.Namespace]


class CheckpointError(AnonymizeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not the expected layout."""


def load_checkpoint(path: Path | str) -> object:
    """Read a checkpoint on CPU without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    import torch

    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused to unpickle (only plain tensors and allow-listed types load): {first_line}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def sub_state_dict(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (e.g. ``"encoder."``) with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; on any mismatch say exactly which keys and shapes differ."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong shapes: {', '.join(wrong_shape)}")
        raise CheckpointError(f"{source}: checkpoint does not match {type(module).__name__}; " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True)
