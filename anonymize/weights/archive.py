"""Take single files out of a verified tarball, safely and atomically.

Nothing in the tarball decides where bytes land: the destination comes from the lock, only
regular-file members are read (links and devices are refused), and the file appears under its
final name only once it is complete, so an interrupted extraction never leaves a half file that
looks present. The temporary file gets a fresh random name and is created with O_EXCL |
O_NOFOLLOW, so a link planted at a predictable path can never redirect the bytes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tarfile
from pathlib import Path, PurePosixPath

from anonymize.weights.lock import WeightsError
from anonymize.weights.records import ProgressCallback

_CHUNK = 1 << 20


def _normalised(name: str) -> str:
    return PurePosixPath(name.removeprefix("./")).as_posix()


def find_member(tar: tarfile.TarFile, member: str) -> tarfile.TarInfo | None:
    """The entry named ``member`` (a leading ``./`` ignored), else the only entry with its file name."""
    entries = tar.getmembers()
    wanted = _normalised(member)
    for info in entries:
        if _normalised(info.name) == wanted:
            return info
    same_name = [info for info in entries if PurePosixPath(info.name).name == PurePosixPath(wanted).name]
    return same_name[0] if len(same_name) == 1 else None


def extract_member(
    tar_path: Path,
    member: str,
    destination: Path,
    progress: ProgressCallback | None = None,
) -> str:
    """Write ``member`` of ``tar_path`` to ``destination``; returns the written file's sha256."""
    try:
        tar = tarfile.open(tar_path, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise WeightsError(f"{tar_path} is not a readable tar archive ({exc})") from None
    with tar:
        info = find_member(tar, member)
        if info is None:
            raise WeightsError(f"{tar_path.name} has no member {member}")
        if not info.isfile():
            raise WeightsError(f"{tar_path.name}: member {info.name} is not a regular file; refusing to extract it")
        source = tar.extractfile(info)
        if source is None:
            raise WeightsError(f"{tar_path.name}: member {info.name} cannot be read")
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name[:32]}.{secrets.token_hex(6)}.extracting")
        digest, written = hashlib.sha256(), 0
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise WeightsError(f"{destination.parent}: cannot create a file to extract {info.name} ({exc.strerror or exc})") from None
        try:
            with source, os.fdopen(descriptor, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(f"extract {destination.name}", written, info.size)
                out.flush()
                os.fsync(out.fileno())
            if written != info.size:
                raise WeightsError(f"{tar_path.name}: member {info.name} is truncated ({written} of {info.size} bytes)")
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
    return digest.hexdigest()
