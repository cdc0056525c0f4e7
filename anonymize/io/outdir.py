"""The output folder's own bookkeeping: who holds it (lock), whose it is (marker), what made it (settings).

Everything lives in ``<out>/.anonymize/``:

* ``lock``: an exclusive ``flock`` held for the whole run, with the holder's pid and host written
  in it for the message a second run prints. The kernel drops the lock when its process dies
  (even by ``kill -9``), so a lock file left behind is taken over, with a message naming the gone
  holder; a live holder makes a second run fail at once.
* ``run.json``: written before the first output. It marks the folder as anonymize's (so a run
  killed before its first manifest part can still be resumed) and holds the settings that decide
  the output pixels, so a later run resumes only with the same method and options.

All of it is written through :func:`anonymize.io.write.open_folder_in`: no symbolic link in the
output tree is ever followed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from anonymize.io.write import TEMPORARY_NAME, open_folder_in, write_in_folder

WORK_DIR_NAME = ".anonymize"
LOCK_NAME = "lock"
MARKER_NAME = "run.json"


class OutputFolderBusy(Exception):
    """Another live run holds the output folder; the message says which process."""


@dataclass
class OutputLock:
    """The held lock of one output folder; :meth:`release` (or process death) frees it."""

    folder: int  # descriptor of <out>/.anonymize
    descriptor: int  # descriptor of the lock file, flock-ed

    def release(self) -> None:
        if self.descriptor < 0:
            return
        try:
            os.unlink(LOCK_NAME, dir_fd=self.folder)  # before unlocking, so no one locks a file about to vanish
        except OSError:
            pass
        os.close(self.descriptor)
        os.close(self.folder)
        self.descriptor = self.folder = -1


def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname()})


def _describe_holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode("utf-8"))
        return f"pid {int(holder['pid'])} on host {holder['host']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "an unknown process"


def acquire_lock(out_dir: Path, on_stale: Callable[[str], None] | None = None) -> OutputLock:
    """Hold ``<out>/.anonymize/lock`` exclusively, or raise :class:`OutputFolderBusy` at once."""
    folder = open_folder_in(out_dir, (WORK_DIR_NAME,))
    try:
        while True:
            descriptor = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644,
                                 dir_fd=folder)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _describe_holder(os.pread(descriptor, 4096, 0))
                os.close(descriptor)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputFolderBusy(
                        f"{out_dir}: another anonymize run ({holder}) is writing into this folder; wait for it to finish "
                        f"or choose another --out"
                    ) from None
                raise
            # The previous holder may have unlinked the file between our open and our flock: retry on the new one.
            try:
                current = os.stat(LOCK_NAME, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                os.close(descriptor)
                continue
            mine = os.fstat(descriptor)
            if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(descriptor)
                continue
            break
        previous = os.pread(descriptor, 4096, 0)
        if previous.strip() and on_stale is not None:
            on_stale(f"{out_dir}: took over the lock left by {_describe_holder(previous)}, which is no longer running")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, _holder_text().encode("utf-8"), 0)
        return OutputLock(folder, descriptor)
    except BaseException:
        os.close(folder)
        raise


def probe_lock(out_dir: Path) -> None:
    """Raise :class:`OutputFolderBusy` if a live run holds ``out_dir``; creates nothing (for the early checks)."""
    try:
        folder = open_folder_in(out_dir, (WORK_DIR_NAME,), create=False)
    except OSError:
        return
    try:
        descriptor = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
    except OSError:
        os.close(folder)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _describe_holder(os.pread(descriptor, 4096, 0))
            raise OutputFolderBusy(
                f"{out_dir}: another anonymize run ({holder}) is writing into this folder; wait for it to finish "
                f"or choose another --out"
            ) from None
    finally:
        os.close(descriptor)
        os.close(folder)


def read_marker(out_dir: Path) -> dict[str, Any] | None:
    """The settings recorded by the run that owns ``out_dir``, or None (absent or unreadable)."""
    try:
        folder = open_folder_in(out_dir, (WORK_DIR_NAME,), create=False)
    except OSError:
        return None
    try:
        descriptor = os.open(MARKER_NAME, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        with os.fdopen(descriptor, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(folder)


def write_marker(out_dir: Path, settings: dict[str, Any]) -> None:
    """Mark ``out_dir`` as an anonymize output made with ``settings`` (atomic; raises OSError if it cannot)."""
    folder = open_folder_in(out_dir, (WORK_DIR_NAME,))
    try:
        payload = json.dumps({"tool": "anonymize", "settings": settings}, sort_keys=True, indent=1)
        write_in_folder(folder, MARKER_NAME, payload.encode("utf-8"))
    finally:
        os.close(folder)


def is_marked(out_dir: Path) -> bool:
    return read_marker(out_dir) is not None


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete the temporary files a killed run left in ``out_dir`` (never following links); returns how many."""
    removed = 0
    for folder, dirs, files in os.walk(out_dir):
        for name in files:
            if TEMPORARY_NAME.match(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed
