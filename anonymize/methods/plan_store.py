"""A dataset-level method's plan, kept in the output folder so a resumed run keeps it.

The plan is arrays (embeddings, group ids, group faces) plus a small JSON record of what it was
made with; both live in one ``plan.npz`` written atomically under ``<out>/.anonymize/plan/<method>/``.
A plan that cannot be read is treated as absent (the method plans again), never half-used.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.io.write import atomic_write_bytes, open_folder_in

PLAN_FILE = "plan.npz"
_INFO_KEY = "__info__"


def write_plan(plan_dir: Path, arrays: dict[str, np.ndarray], info: dict[str, Any], root: Path | None) -> Path:
    """Store ``arrays`` and ``info`` (JSON-able) atomically; ``root``: the output folder (no link followed below it)."""
    buffer = io.BytesIO()
    encoded = np.frombuffer(json.dumps(info, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buffer, **{_INFO_KEY: encoded}, **arrays)
    path = plan_dir / PLAN_FILE
    atomic_write_bytes(path, buffer.getvalue(), root=root)
    return path


def real_plan_folder(plan_dir: Path, root: Path | None) -> Path:
    """Create ``plan_dir`` below the output ``root`` without following any link (a planted link is
    refused), so the large files a method writes there itself (spools, group faces) stay in the output."""
    if root is None:
        plan_dir.mkdir(parents=True, exist_ok=True)
    else:
        os.close(open_folder_in(Path(root), plan_dir.relative_to(root).parts))
    return plan_dir


def read_plan(plan_dir: Path | None) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The stored arrays and info, or None when there is no readable plan."""
    if plan_dir is None:
        return None
    path = plan_dir / PLAN_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as stored:  # a local path or a URI's StorePath
            arrays = {name: stored[name] for name in stored.files if name != _INFO_KEY}
            info = json.loads(bytes(stored[_INFO_KEY]).decode())
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return arrays, info
