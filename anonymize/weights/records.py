"""Hashes of the weight files in use, remembered so multi-GB files are not re-read on every run.

One small JSON file per artefact under ``<weights dir>/.records/`` says which file was hashed,
its size and modification time at that moment, the hash, and why it is trusted:

- ``lock``: the hash matched the one pinned in ``weights.lock``;
- ``archive:<sha256>``: the file was extracted by ``fetch`` from a tarball whose hash matched the
  lock (the only hash the publishers give), so this record is what later detects tampering;
- ``trusted``: the user accepted a file that could not be checked (``--trust-unverified``).

A record is reused only while the file's identity is unchanged: device, inode, size, mtime_ns and
ctime_ns (ctime cannot be set back by the file's owner, so an edit that keeps the size and resets
the mtime is still seen); otherwise the file is hashed again. Records live in the writable weights
folder, so they are a cache and a memory of provenance, never a substitute for the hash pinned in
``weights.lock``: files with a pinned hash are hashed whenever they are loaded. Paths inside the
weights dir are stored relative to it, so a copied weights dir keeps its records (and re-hashes
once, since the inodes changed). Writing records is best effort: a read-only weights dir still
works, just slower. Temporary record files are created with O_EXCL | O_NOFOLLOW.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RECORDS_DIR = ".records"
LOCK = "lock"
TRUSTED = "trusted"
ARCHIVE_PREFIX = "archive:"
_CHUNK = 1 << 20

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(label, bytes_done, bytes_total_or_None)`` while downloading or hashing."""


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    mtime_ns: int
    sha256: str
    provenance: str
    device: int = -1  # -1: a record from before identities were kept, never "unchanged"
    inode: int = -1
    ctime_ns: int = -1

    def unchanged(self, path: Path) -> bool:
        """True while the file is still the very file that was hashed (same identity, no change since)."""
        try:
            stat = path.stat()
        except OSError:
            return False
        return file_identity(stat) == (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns)


def file_identity(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime_ns, ctime_ns): changes whenever the file's bytes can have changed."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def sha256_file(path: Path, progress: ProgressCallback | None = None, label: str | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label or f"verify {path.name}", done, total)
    return digest.hexdigest()


class RecordBook:
    """The records of one weights dir, keyed by artefact name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / RECORDS_DIR

    def key(self, path: Path) -> str:
        """Paths inside the weights dir are kept relative, so a copied or moved dir stays verified."""
        resolved = path.resolve()
        try:
            return resolved.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(resolved)

    def describes(self, record: FileRecord | None, path: Path) -> bool:
        """The record is about this file (the lock may since have moved the artefact)."""
        return record is not None and record.path == self.key(path)

    def current(self, record: FileRecord | None, path: Path) -> bool:
        """The record's hash can stand for the file without re-reading it."""
        return self.describes(record, path) and record.unchanged(path)

    def _file(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> FileRecord | None:
        try:
            data = json.loads(self._file(name).read_text(encoding="utf-8"))
            return FileRecord(**data)
        except (OSError, ValueError, TypeError):
            return None

    def put(self, name: str, path: Path, sha256: str, provenance: str) -> FileRecord:
        stat = path.stat()
        record = FileRecord(self.key(path), stat.st_size, stat.st_mtime_ns, sha256, provenance,
                            device=stat.st_dev, inode=stat.st_ino, ctime_ns=stat.st_ctime_ns)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.folder.is_symlink():
                return record
            temporary = self.folder / f".{name}.{secrets.token_hex(6)}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(record), indent=1))
            os.replace(temporary, self._file(name))
        except OSError:
            pass
        return record

    def drop(self, name: str) -> None:
        try:
            self._file(name).unlink()
        except OSError:
            pass
