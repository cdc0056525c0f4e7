"""A storage handle: one participant's corner of the output folder, for local paths and object stores alike.

Methods and finishing steps never build output paths: the run gives each a handle (None in a dry
run) to its plan folder and to the run's work folder, and they read and write through it. A plan is
arrays plus a small JSON record of what it was made with, in one ``plan.npz`` written atomically; a
plan that cannot be read is treated as absent (the participant plans again), never half-used.
Nothing is written through a symbolic link below the output folder.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from anonymize.io.outdir import WORK_DIR_NAME
from anonymize.io.store import Location, StorePath
from anonymize.io.write import atomic_write_bytes, open_folder_in

PLAN_FILE = "plan.npz"
PLANS_DIR_NAME = "plan"  # <out>/.anonymize/plan/<participant>/: what the run's first pass decided
_INFO_KEY = "__info__"

Plan = tuple[dict[str, np.ndarray], dict[str, Any]]


class Storage:
    """``root / relative``: ``root`` is the output folder (the boundary no write crosses), ``relative`` the corner."""

    def __init__(self, root: Location, relative: PurePosixPath | str) -> None:
        self.root = root
        self.relative = PurePosixPath(relative)

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"Storage({self.root!r}, {self.relative.as_posix()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and (self.root, self.relative) == (other.root, other.relative)

    def __hash__(self) -> int:
        return hash((str(self.root), self.relative))

    @property
    def location(self) -> Location:
        return self.root / self.relative

    def child(self, relative: PurePosixPath | str) -> Storage:
        return Storage(self.root, self.relative / relative)

    # -- plans ------------------------------------------------------------------------------------------
    def write_plan(self, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Store ``arrays`` and ``info`` (JSON-able) atomically as the plan of this corner."""
        buffer = io.BytesIO()
        encoded = np.frombuffer(json.dumps(info, sort_keys=True).encode(), dtype=np.uint8)
        np.savez(buffer, **{_INFO_KEY: encoded}, **arrays)
        self.write_bytes(PLAN_FILE, buffer.getvalue())

    def read_plan(self) -> Plan | None:
        """The stored arrays and info, or None when there is no readable plan."""
        path = self.location / PLAN_FILE
        if not path.is_file() or path.is_symlink():
            return None
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files if name != _INFO_KEY}
                info = json.loads(bytes(stored[_INFO_KEY]).decode())
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None
        return arrays, info

    # -- files ------------------------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> str:
        """``data`` as the file ``name`` of this corner, atomically; its path relative to the output folder."""
        relative = self.relative / name
        atomic_write_bytes(self.root / relative, data, root=self.root if isinstance(self.root, Path) else None)
        return relative.as_posix()

    def save_array(self, name: str, array: np.ndarray) -> str:
        """One array as ``name`` (.npy); its path relative to the output folder (what a manifest records)."""
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self.write_bytes(name, buffer.getvalue())

    def load_array(self, name: str) -> np.ndarray:
        """An array written here; memory-mapped when the output is local (large group faces stay on disk)."""
        path = self.location / name
        if isinstance(path, StorePath):
            return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def write_with(self, name: str, write: Callable[[Path], None]) -> None:
        """A file written by ``write(local_path)`` (numpy's streaming writers): in place when the output is
        local, else in a scratch folder and then put as one object."""
        folder = self.local_folder()
        if folder is not None:
            write(folder / name)
            return
        with tempfile.TemporaryDirectory(prefix="anonymize-") as scratch:
            write(Path(scratch) / name)
            self.write_bytes(name, (Path(scratch) / name).read_bytes())

    def local_folder(self) -> Path | None:
        """This corner as a real local folder below the output (created; no link followed), or None for a store."""
        if isinstance(self.root, StorePath):
            return None
        os.close(open_folder_in(Path(self.root), self.relative.parts))
        return Path(self.root) / self.relative

    @contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A local folder for large working files that must not outlive their pass: this corner when local
        (stale ones with ``prefix`` from a killed run removed first), else a temporary folder."""
        folder = self.local_folder()
        if folder is None:
            with tempfile.TemporaryDirectory(prefix=f"anonymize-{prefix}") as temporary:
                yield Path(temporary)
            return
        self.remove_matching(prefix)
        yield folder

    def remove_matching(self, prefix: str, keep: str | None = None) -> None:
        """Delete this corner's files whose name starts with ``prefix`` (except ``keep``)."""
        where = self.location
        if isinstance(where, StorePath):
            names = [relpath.name for relpath, info in where.files(recursive=False) if info.is_file] if where.is_dir() else []
        else:
            names = [path.name for path in where.glob(f"{prefix}*")] if where.is_dir() and not where.is_symlink() else []
        for name in names:
            if name.startswith(prefix) and name != keep:
                (where / name).unlink(missing_ok=True)


def plan_storage(output_dir: Location | None, participant: str) -> Storage | None:
    """Where a participant of the run's first pass keeps its plan (``<out>/.anonymize/plan/<participant>``)."""
    return None if output_dir is None else Storage(output_dir, PurePosixPath(WORK_DIR_NAME) / PLANS_DIR_NAME / participant)


def work_storage(output_dir: Location | None) -> Storage | None:
    """The run's work folder (``<out>/.anonymize``): side outputs such as saved latents."""
    return None if output_dir is None else Storage(output_dir, WORK_DIR_NAME)
