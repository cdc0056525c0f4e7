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

An output named by URI (:class:`~anonymize.io.store.StorePath`) has the same three objects, but an
object store has no ``flock``: there the lock is an object holding the holder's pid, host and a
random token, rewritten every :data:`LOCK_REFRESH_SECONDS` while the run lives. A lock object
refreshed less than :data:`LOCK_STALE_SECONDS` ago (by the store's clock) refuses a second run;
an older one is taken over, as a dead holder's. Stores offer no create-if-absent here, so two runs
started within the same second could both take it: the lock catches the second run of a user,
not a race (see README, Throughput and Ray).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from anonymize.errors import AnonymizeError
from anonymize.io.store import StorePath
from anonymize.io.write import TEMPORARY_NAME, atomic_write_bytes, open_folder_in, temporary_name, write_in_folder

log = logging.getLogger(__name__)

WORK_DIR_NAME = ".anonymize"
LOCK_NAME = "lock"
MARKER_NAME = "run.json"
LOCK_REFRESH_SECONDS = 30.0  # a store lock object is rewritten this often while its run lives
LOCK_STALE_SECONDS = 120.0  # ... and belongs to a dead run once this much older than the store's clock says
LOCK_SETTLE_SECONDS = 0.5  # after writing it, read it back this much later: a run that wrote at the same moment wins


class OutputFolderBusy(AnonymizeError):
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


def _holder_text(token: str | None = None) -> str:
    holder: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    if token is not None:
        holder["token"] = token
    return json.dumps(holder)


def _describe_holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode("utf-8"))
        return f"pid {int(holder['pid'])} on host {holder['host']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "an unknown process"


def acquire_lock(out_dir: Path | StorePath, on_stale: Callable[[str], None] | None = None) -> OutputLock | StoreLock:
    """Hold ``<out>/.anonymize/lock`` exclusively, or raise :class:`OutputFolderBusy` at once."""
    if isinstance(out_dir, StorePath):
        return _acquire_store_lock(out_dir, on_stale)
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


def probe_lock(out_dir: Path | StorePath) -> None:
    """Raise :class:`OutputFolderBusy` if a live run holds ``out_dir``; creates nothing (for the early checks)."""
    if isinstance(out_dir, StorePath):
        _refuse_fresh_store_lock(out_dir)
        return
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


def read_marker(out_dir: Path | StorePath) -> dict[str, Any] | None:
    """The settings recorded by the run that owns ``out_dir``, or None (absent or unreadable)."""
    if isinstance(out_dir, StorePath):
        try:
            data = json.loads((out_dir / WORK_DIR_NAME / MARKER_NAME).read_bytes().decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None
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


def write_marker(out_dir: Path | StorePath, settings: dict[str, Any]) -> None:
    """Mark ``out_dir`` as an anonymize output made with ``settings`` (atomic; raises OSError if it cannot)."""
    payload = json.dumps({"tool": "anonymize", "settings": settings}, sort_keys=True, indent=1)
    if isinstance(out_dir, StorePath):
        atomic_write_bytes(out_dir / WORK_DIR_NAME / MARKER_NAME, payload.encode("utf-8"))
        return
    folder = open_folder_in(out_dir, (WORK_DIR_NAME,))
    try:
        write_in_folder(folder, MARKER_NAME, payload.encode("utf-8"))
    finally:
        os.close(folder)


def probe_writable(path: Path | StorePath, out_dir: Path | StorePath) -> None:
    """Raise OSError unless a file can be created where ``path`` goes (``--manifest``): its folder is created
    and a temporary file made there and removed, before the first image, so a folder that cannot be made,
    a read-only disk or a missing bucket stop the run at once, not after all the work. Below ``out_dir`` the
    folders are opened without following links, like every other write into the output tree."""
    if isinstance(path, StorePath):
        probe = path.parent / temporary_name(path.name)
        atomic_write_bytes(probe, b"")
        probe.unlink(missing_ok=True)
        return
    path = Path(path)
    try:
        below = path.parent.relative_to(out_dir) if isinstance(out_dir, Path) else None
    except ValueError:
        below = None
    if below is not None:
        folder = open_folder_in(Path(out_dir), below.parts)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name = temporary_name(path.name)
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder))
        os.unlink(name, dir_fd=folder)
    finally:
        os.close(folder)


def is_marked(out_dir: Path | StorePath) -> bool:
    return read_marker(out_dir) is not None


def remove_stale_temporaries(out_dir: Path | StorePath) -> int:
    """Delete the temporary files a killed run left in ``out_dir`` (never following links); returns how many."""
    removed = 0
    if isinstance(out_dir, StorePath):  # only file systems without an atomic PUT have temporaries (write.py)
        for relpath, info in out_dir.files(recursive=True):
            if info.is_file and TEMPORARY_NAME.match(relpath.name):
                try:
                    (out_dir / relpath).unlink(missing_ok=True)
                    removed += 1
                except OSError:
                    pass
        return removed
    for folder, dirs, files in os.walk(out_dir):
        for name in files:
            if TEMPORARY_NAME.match(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


# -- the lock of an output named by URI ----------------------------------------------------------------
@dataclass
class StoreLock:
    """The lock object of an output on a store, kept fresh by a thread until :meth:`release`."""

    path: StorePath  # <out>/.anonymize/lock
    token: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_refreshing(self) -> None:
        self._thread = threading.Thread(target=self._refresh, name="anonymize-lock", daemon=True)
        self._thread.start()

    def holds(self) -> bool:
        try:
            return _holder_token(self.path.read_bytes()) == self.token
        except OSError:
            return False

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_SECONDS):
            try:
                if not self.holds():
                    log.warning("%s: the lock object was taken by another run; stopped refreshing it", self.path)
                    return
                atomic_write_bytes(self.path, _holder_text(self.token).encode("utf-8"))
            except OSError as exc:  # a store hiccup: try again at the next beat
                log.warning("%s: cannot refresh the lock object (%s)", self.path, exc.strerror or exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.holds():
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass


def _holder_token(raw: bytes) -> str | None:
    try:
        holder = json.loads(raw.decode("utf-8"))
        return str(holder["token"]) if isinstance(holder, dict) and "token" in holder else None
    except (ValueError, UnicodeDecodeError):
        return None


def _busy(out_dir: StorePath, raw: bytes, age: float | None) -> OutputFolderBusy:
    when = f"refreshed {age:.0f} s ago" if age is not None else "of unknown age"
    return OutputFolderBusy(
        f"{out_dir}: another anonymize run ({_describe_holder(raw)}) holds this output (its lock object was {when}); "
        f"wait for it to finish or choose another --out (a lock not refreshed for {LOCK_STALE_SECONDS:.0f} s is taken over)"
    )


def _refuse_fresh_store_lock(out_dir: StorePath) -> tuple[bytes, float] | None:
    """Raise :class:`OutputFolderBusy` if a live run holds ``out_dir``; else (content, age) of a stale lock, or None."""
    lock = out_dir / WORK_DIR_NAME / LOCK_NAME
    info = lock.info()
    if not info.is_file:
        return None
    try:
        raw = lock.read_bytes()
    except OSError:  # gone since the look-up: its run just ended
        return None
    age = (datetime.now(timezone.utc) - info.mtime).total_seconds() if info.mtime is not None else None
    if age is None or age < LOCK_STALE_SECONDS:
        raise _busy(out_dir, raw, age)
    return raw, age


def _acquire_store_lock(out_dir: StorePath, on_stale: Callable[[str], None] | None) -> StoreLock:
    stale = _refuse_fresh_store_lock(out_dir)
    lock = StoreLock(out_dir / WORK_DIR_NAME / LOCK_NAME, secrets.token_hex(8))
    atomic_write_bytes(lock.path, _holder_text(lock.token).encode("utf-8"))
    time.sleep(LOCK_SETTLE_SECONDS)
    if not lock.holds():  # another run wrote its lock object at the same moment, after ours: it wins
        try:
            raw = lock.path.read_bytes()
        except OSError:
            raw = b""
        raise _busy(out_dir, raw, 0.0)
    if stale is not None and on_stale is not None:
        on_stale(f"{out_dir}: took over the lock left by {_describe_holder(stale[0])}, not refreshed for {stale[1]:.0f} s "
                 f"(its run is presumed dead)")
    lock.start_refreshing()
    return lock
