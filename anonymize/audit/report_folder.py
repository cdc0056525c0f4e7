"""The report's own folders (``audit-thumbs``, ``study-pairs``): written without following links, cleared only of what the audit wrote.

They hold crops of ORIGINAL faces. A link planted in the report folder must never carry them
elsewhere (into the release, say), and a folder of that name the audit did not make must never lose
its files to a clean-up. So:

* every folder below the report folder is opened with O_NOFOLLOW (:func:`~anonymize.io.write.open_folder_in`);
  a link (or a file) where one should be stops the audit with one line naming it, and each file is
  written by a temporary file renamed over its name, which replaces a link there, never its target;
* each file the audit writes there is first recorded in ``<report>/.anonymize-report.json`` (also
  written without following links), and a later audit deletes only the recorded files (and its own
  temporary files, :data:`~anonymize.io.write.TEMPORARY_NAME`); anything else in the folder stays;
* a folder of that name the record does not claim is used only when it is empty.

The report folder itself is the user's choice (``--report``, possibly reached through a link); only
what is below it is guarded.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from anonymize.audit.pairing import AuditError
from anonymize.io.write import TEMPORARY_NAME, UnsafeOutputPath, open_folder_in, write_in_folder

RECORD_NAME = ".anonymize-report.json"  # in the report folder: what the audit wrote in its own folders


def refuse_links_below(root: Path, parts: Iterable[str]) -> None:
    """Stop (one line naming it) when a folder on the way ``root/parts...`` is a link or not a folder: for the
    audit's other folders below its own (the originals cache), checked before any work."""
    where = Path(root)
    for part in parts:
        where = where / part
        try:
            info = os.lstat(where)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            raise AuditError(f"{where}: is a symbolic link or not a folder; the audit writes nothing through it: "
                             f"remove it or choose another --report")


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


class ReportFolders:
    """The report folder's subfolders the audit owns, and the record of what it wrote in them."""

    def __init__(self, report_dir: Path) -> None:
        self.root = Path(report_dir)
        self._record: dict[str, list[str]] = self._read_record()

    # -- the record -------------------------------------------------------------------------------------
    def _read_record(self) -> dict[str, list[str]]:
        try:
            descriptor = os.open(self.root / RECORD_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return {}  # absent (a new report folder), or a link: nothing is claimed
        try:
            with os.fdopen(descriptor, "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        folders = data.get("folders") if isinstance(data, dict) else None
        if not isinstance(folders, dict):
            return {}
        return {name: [file for file in files if _plain_name(file)] for name, files in folders.items()
                if _plain_name(name) and isinstance(files, list)}

    def _save_record(self) -> None:
        payload = json.dumps({"tool": "anonymize audit", "folders": self._record}, indent=1, sort_keys=True)
        self.root.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            write_in_folder(folder, RECORD_NAME, payload.encode("utf-8"))
        finally:
            os.close(folder)

    # -- the folders ------------------------------------------------------------------------------------
    def check(self, names: Iterable[str]) -> None:
        """Refuse, before any work, a folder among ``names`` that is a link or not the audit's; creates nothing."""
        for name in names:
            where = self.root / name
            try:
                info = os.lstat(where)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise self._unsafe(name)
            if name not in self._record and any(True for _ in os.scandir(where)):
                raise self._not_ours(name)

    def claim(self, name: str) -> OwnedFolder:
        """``<report>/<name>``, created if absent, emptied of what an earlier audit wrote there."""
        try:
            descriptor = open_folder_in(self.root, (name,))
        except UnsafeOutputPath:
            raise self._unsafe(name) from None
        except OSError as exc:
            raise AuditError(f"{self.root / name}: cannot write the report's folder ({exc.strerror or exc})") from None
        try:
            present = set(os.listdir(descriptor))
            previous = self._record.get(name)
            if previous is None and present:
                raise self._not_ours(name)
            for file in [*(previous or []), *(entry for entry in present if TEMPORARY_NAME.match(entry))]:
                try:
                    os.unlink(file, dir_fd=descriptor)  # the entry itself: a link is removed, never followed
                except FileNotFoundError:
                    pass
                except IsADirectoryError:
                    pass  # a folder was made under that name since: not ours to delete
            self._record[name] = []
            self._save_record()
        except BaseException:
            os.close(descriptor)
            raise
        return OwnedFolder(self, name, descriptor)

    def _add(self, name: str, file: str) -> None:
        files = self._record.setdefault(name, [])
        if file not in files:
            files.append(file)
            self._save_record()  # before the file exists: a crash never leaves a crop the record does not list

    def _unsafe(self, name: str) -> AuditError:
        return AuditError(f"{self.root / name}: is a symbolic link or not a folder; the report writes nothing through it: "
                          f"remove it or choose another --report")

    def _not_ours(self, name: str) -> AuditError:
        return AuditError(f"{self.root / name}: a folder not made by anonymize audit (it holds files the audit did not write, "
                          f"which it never deletes): move it away or choose another --report")


def _exists_in(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class OwnedFolder:
    """One folder of the report, open (no link followed); :meth:`write` records each file, then writes it."""

    def __init__(self, owner: ReportFolders, name: str, descriptor: int) -> None:
        self.owner, self.name, self.descriptor = owner, name, descriptor

    def write(self, file: str, data: bytes) -> str:
        """``data`` as ``file`` in this folder, atomically; its path relative to the report folder (for the page)."""
        if not _plain_name(file):
            raise ValueError(f"{file!r}: not a plain file name")
        if file not in self.owner._record.get(self.name, []) and _exists_in(self.descriptor, file):
            raise AuditError(f"{self.owner.root / self.name / file}: already there and not written by anonymize audit, "
                             f"which never replaces it: move it away or choose another --report")
        self.owner._add(self.name, file)
        write_in_folder(self.descriptor, file, data)
        return f"{self.name}/{file}"

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def __enter__(self) -> OwnedFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
