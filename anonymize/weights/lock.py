"""``weights.lock``: the pinned list of every pretrained file, read into typed records.

The lock is TOML: ``[archives.<name>]`` for tarballs whose hash is published, and
``[artifacts.<name>]`` for each file anonymize loads. A malformed lock is a WeightsError naming the
lock file and the entry, never a KeyError deep inside a run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from anonymize.errors import AnonymizeError

LOCK_ENV = "ANONYMIZE_WEIGHTS_LOCK"
DOWNLOAD = "download"
PACKAGE_PREFIX = "package:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(AnonymizeError):
    """A weight file that cannot be used; the message is one line saying what to do."""


@dataclass(frozen=True)
class Archive:
    """A published tarball: the only thing whose hash its publisher gives."""

    name: str
    filename: str
    sha256: str
    url: str
    size: int | None = None


@dataclass(frozen=True)
class Artifact:
    """One file anonymize loads, where it lives and how it is checked."""

    name: str
    filename: str  # relative to the weights dir, or to the package dir for packaged files
    sha256: str | None  # None for tarball members: only the tarball's hash is published
    size: int | None
    url: str | None
    archive: Archive | None
    member: str | None  # path inside the archive
    license: str
    used_by: tuple[str, ...]
    source: str = DOWNLOAD  # "download" or "package:<distribution>"
    note: str = ""

    @property
    def package(self) -> str | None:
        return self.source[len(PACKAGE_PREFIX):] if self.source.startswith(PACKAGE_PREFIX) else None


def default_lock_path() -> Path:
    """$ANONYMIZE_WEIGHTS_LOCK, else the copy inside the installed wheel, else the repository's."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    package_dir = Path(__file__).resolve().parents[1]
    packaged = package_dir / "weights.lock"
    return packaged if packaged.is_file() else package_dir.parent / "weights.lock"


def read_lock(path: Path | None = None) -> dict[str, Artifact]:
    """Artefact name -> record, validated."""
    path = Path(path) if path is not None else default_lock_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"weights lock {path} not found; set {LOCK_ENV} to the weights.lock file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError(f"weights lock {path} is unreadable: {exc}") from None
    archives = {name: _archive(name, entry, path) for name, entry in _table(data, "archives", path).items()}
    return {name: _artifact(name, entry, archives, path) for name, entry in _table(data, "artifacts", path).items()}


def _table(data: dict, key: str, path: Path) -> dict:
    table = data.get(key, {})
    if not isinstance(table, dict) or not all(isinstance(entry, dict) for entry in table.values()):
        raise WeightsError(f"weights lock {path}: [{key}] must be a table of tables")
    return table


def _archive(name: str, entry: dict, path: Path) -> Archive:
    where = f"weights lock {path}: archive {name!r}"
    return Archive(
        name=name,
        filename=_relative(_required(entry, "filename", where), where),
        sha256=_sha256(_required(entry, "sha256", where), where),
        url=_required(entry, "url", where),
        size=_size(entry.get("size"), where),
    )


def _artifact(name: str, entry: dict, archives: dict[str, Archive], path: Path) -> Artifact:
    where = f"weights lock {path}: artefact {name!r}"
    source = entry.get("source", DOWNLOAD)
    if source != DOWNLOAD and not (isinstance(source, str) and source.startswith(PACKAGE_PREFIX) and len(source) > len(PACKAGE_PREFIX)):
        raise WeightsError(f"{where}: source must be 'download' or 'package:<name>', got {source!r}")
    archive_name = entry.get("archive")
    archive = None
    if archive_name is not None:
        if archive_name not in archives:
            raise WeightsError(f"{where}: archive {archive_name!r} is not defined under [archives]")
        archive = archives[archive_name]
    sha256 = _sha256(entry["sha256"], where) if "sha256" in entry else None
    if archive is None and sha256 is None and entry.get("sha256_unpublished") is not True:
        raise WeightsError(f"{where}: needs a sha256 (or an archive whose sha256 is pinned, or sha256_unpublished = true)")
    if archive is None and source == DOWNLOAD and not entry.get("url"):
        raise WeightsError(f"{where}: needs a url to download it from")
    member = entry.get("member")
    if archive is not None and not member:
        raise WeightsError(f"{where}: comes in archive {archive.name!r} but names no member")
    used_by = entry.get("used_by", [])
    if not isinstance(used_by, list) or not all(isinstance(item, str) for item in used_by):
        raise WeightsError(f"{where}: used_by must be a list of strings")
    return Artifact(
        name=name,
        filename=_relative(_required(entry, "filename", where), where),
        sha256=sha256,
        size=_size(entry.get("size"), where),
        url=entry.get("url"),
        archive=archive,
        member=_relative(member, where) if member else None,
        license=str(entry.get("license", "")),
        used_by=tuple(used_by),
        source=source,
        note=str(entry.get("note", "")),
    )


def _required(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise WeightsError(f"{where}: missing {key}")
    return value


def _sha256(value: object, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise WeightsError(f"{where}: sha256 must be 64 hex digits, got {value!r}")
    return value.lower()


def _size(value: object, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WeightsError(f"{where}: size must be a byte count, got {value!r}")
    return value


def _relative(value: str, where: str) -> str:
    """A plain relative POSIX path: a lock must never point outside the folder it describes."""
    pure = PurePosixPath(value.removeprefix("./"))
    if pure.is_absolute() or ".." in pure.parts or "\\" in value or not pure.parts:
        raise WeightsError(f"{where}: path {value!r} must be relative, without '..'")
    return pure.as_posix()
