"""What the audit writes stays out of the folders it reads: a report inside the release would be released with it,
and one inside the originals would mix into the next run's input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from anonymize.audit.pairing import AuditError
from anonymize.io.write import atomic_write_bytes


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it, links resolved."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def refuse_inside(path: Path, what: str, original_dir: Path, anonymized_dir: Path) -> None:
    """One line naming ``path`` when it lies inside the original or the anonymized folder."""
    for folder, role in ((original_dir, "original"), (anonymized_dir, "anonymized")):
        if is_inside(path, folder):
            raise AuditError(f"{path}: the {what} must not be written inside the {role} folder {folder}")


def write_json_outside(payload: object, path: Path, what: str, original_dir: Path, anonymized_dir: Path) -> Path:
    """``payload`` as indented JSON at ``path``, atomically, refused inside either folder; returns the resolved path."""
    refuse_inside(path, what, original_dir, anonymized_dir)
    target = Path(os.path.realpath(path))
    atomic_write_bytes(target, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    return target
