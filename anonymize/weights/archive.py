"""Take single files out of a verified tarball (plain or gzip), safely and atomically.

Nothing in the tarball decides where bytes land: the destination comes from the lock, only
regular-file members are read (links and devices are refused), a member whose name is absolute or
climbs with ``..`` is refused outright (it can only be a crafted archive), and the file appears
under its final name only once it is complete, so an interrupted extraction never leaves a half
file that looks present. Where the lock pins the member's own hash, a mismatch is refused before
the file takes its final name. The temporary file gets a fresh random name and is created with
O_EXCL | O_NOFOLLOW, so a link planted at a predictable path can never redirect the bytes.

All members come out in one pass in archive order: a gzip stream cannot seek back cheaply, so
opening a 150 MB ``.tgz`` once per member would decompress it again for each.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from anonymize.weights.lock import WeightsError
from anonymize.weights.records import ProgressCallback

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Wanted:
    """One member to take out: its name in the archive, where it goes, and its pinned hash if any."""

    member: str
    destination: Path
    sha256: str | None = None


def _normalised(name: str) -> str:
    return PurePosixPath(name.removeprefix("./")).as_posix()


def _unsafe(name: str) -> bool:
    """Absolute, climbing or Windows-style names: no honest tarball has them."""
    pure = PurePosixPath(name)
    return pure.is_absolute() or ".." in pure.parts or "\\" in name


def find_member(tar: tarfile.TarFile, member: str, entries: Sequence[tarfile.TarInfo] | None = None) -> tarfile.TarInfo | None:
    """The entry named ``member`` (a leading ``./`` ignored), else the only entry with its file name."""
    entries = tar.getmembers() if entries is None else entries
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
    sha256: str | None = None,
) -> str:
    """Write ``member`` of ``tar_path`` to ``destination``; returns the written file's sha256."""
    return extract_members(tar_path, [Wanted(member, destination, sha256)], progress)[0]


def extract_members(tar_path: Path, wanted: Sequence[Wanted], progress: ProgressCallback | None = None) -> list[str]:
    """Write each wanted member to its destination in one pass; returns their sha256, in ``wanted`` order.

    Every member is found and checked (regular file, safe name) before anything is written."""
    try:
        tar = tarfile.open(tar_path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise WeightsError(f"{tar_path} is not a readable tar archive ({exc})") from None
    with tar:
        try:
            entries = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise WeightsError(f"{tar_path} is not a readable tar archive ({exc})") from None
        found: list[tuple[int, tarfile.TarInfo]] = []
        for index, item in enumerate(wanted):
            info = find_member(tar, item.member, entries)
            if info is None:
                raise WeightsError(f"{tar_path.name} has no member {item.member}")
            if _unsafe(info.name):
                raise WeightsError(f"{tar_path.name}: member {info.name} has an unsafe path; refusing to extract it")
            if not info.isfile():
                raise WeightsError(f"{tar_path.name}: member {info.name} is not a regular file; refusing to extract it")
            found.append((index, info))
        digests: list[str] = [""] * len(wanted)
        for index, info in sorted(found, key=lambda pair: pair[1].offset_data):
            digests[index] = _extract(tar, tar_path, info, wanted[index], progress)
    return digests


def _extract(tar: tarfile.TarFile, tar_path: Path, info: tarfile.TarInfo, item: Wanted, progress: ProgressCallback | None) -> str:
    destination = item.destination
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
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise WeightsError(f"{tar_path.name}: member {info.name} cannot be read ({exc})") from None
        if written != info.size:
            raise WeightsError(f"{tar_path.name}: member {info.name} is truncated ({written} of {info.size} bytes)")
        actual = digest.hexdigest()
        if item.sha256 is not None and actual != item.sha256:
            raise WeightsError(f"{tar_path.name}: member {info.name} has sha256 {actual}, expected {item.sha256} "
                               f"(weights.lock); it was not extracted")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return actual
