"""Folders and files named by URI (``s3://``, ``gs://``), reached through pyarrow's file systems.

Only what is written as ``scheme://...`` comes here; a plain local path stays a :class:`~pathlib.Path`
and keeps the descriptor-based, no-follow code of :mod:`anonymize.io.write` and
:mod:`anonymize.io.outdir`, and so does a ``file://`` (or ``local://``) URI: it names this machine's
disk, where links, loops and FIFOs exist, so :func:`location` turns it into the plain path it names
(the local walk, the no-follow writes and the ``flock`` lock apply). A :class:`StorePath` is the URI the user gave (its *root*) plus a path
relative to it. It holds no connection: each process opens the file system from the root URI
itself, once (:func:`file_system_of`), so a Ray worker receives two strings, never a live client,
and uses its own credentials. Credentials and endpoints come from pyarrow's usual sources: the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, instance
roles...) and the URI's query (``?endpoint_override=host:port&scheme=http``, ``?region=...``).

Every failure of the store becomes a :class:`StoreError`: an ``OSError`` whose ``filename`` is the
URI (without its query, which may hold secrets) and whose ``strerror`` is the cause on one line.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Union
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

import pyarrow as pa
from pyarrow import fs as pafs

from anonymize.errors import AnonymizeError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
OBJECT_STORES = frozenset({"s3", "gcs"})  # pyarrow type names of the stores whose PUT is atomic per object
# gs:// without its own ?retry_limit_seconds= retries for minutes when no credential can be found; a
# missing credential or an unreachable endpoint must fail in seconds, with one line.
GCS_RETRY_LIMIT_SECONDS = 5


class StoreError(AnonymizeError, OSError):
    """The store failed: ``filename`` is the URI, ``strerror`` the cause (one line)."""

    def __init__(self, where: object, cause: str) -> None:
        super().__init__(errno.EIO, cause, str(where))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def is_uri(text: str | Path) -> bool:
    """``scheme://...``: the only form that goes through pyarrow (a local path never does)."""
    return isinstance(text, str) and bool(_URI.match(text))


LOCAL_SCHEMES = frozenset({"file", "local"})  # URIs of this machine's disk (pyarrow's LocalFileSystem)


def location(text: str | Path) -> Path | StorePath:
    """A folder or file as the user wrote it: a :class:`StorePath` for a URI of a store, else a local ``Path``
    (a ``file://`` URI included: see the module doc)."""
    if isinstance(text, Path) or not is_uri(text):
        return Path(text)
    local = local_path_of_uri(text)
    if local is not None:
        return local
    path = StorePath(_with_store_defaults(text))
    path.file_system()  # an unknown scheme, a missing bucket name or an unusable query fails here, in one line
    return path


def local_path_of_uri(uri: str) -> Path | None:
    """The plain path a ``file:///abs/path`` URI names (percent escapes decoded to the exact bytes of the
    name, UTF-8 or not; the query ignored, as pyarrow does), or None for a URI of another scheme."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in LOCAL_SCHEMES:
        return None
    if parts.netloc:
        raise StoreError(shown_uri(uri), "a file URI names a path on this machine, with no host: file:///absolute/path")
    name = os.fsdecode(unquote_to_bytes(parts.path))
    if not name.startswith("/"):
        raise StoreError(shown_uri(uri), "a file URI needs an absolute path: file:///absolute/path")
    return Path(name)


def _with_store_defaults(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("gs", "gcs") and "retry_limit_seconds" not in dict(parse_qsl(urlsplit(uri).query)):
        return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_RETRY_LIMIT_SECONDS}"
    return uri


def shown_uri(uri: str) -> str:
    """``uri`` as it may be printed or recorded: no query and no user:secret@ part."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path.rstrip('/') or parts.path}"


@lru_cache(maxsize=None)
def file_system_of(root: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) of a root URI, opened once per process (pyarrow's are thread-safe)."""
    try:
        file_system, path = pafs.FileSystem.from_uri(root)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(shown_uri(root), describe(exc).replace(root, shown_uri(root))) from None
    return file_system, path.rstrip("/") or "/"


def describe(exc: BaseException) -> str:
    """A pyarrow or cloud-client error as one short line that says the cause."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    if "unrecognized filesystem type" in lowered:
        text = f"unknown URI scheme (pyarrow reads file://, s3:// and gs://): {text}"
    elif any(word in lowered for word in ("credential", "access token", "access denied", "accessdenied", "forbidden")):
        text = f"no usable credentials ({text})"
    elif any(word in lowered for word in ("could not resolve host", "could not connect", "failed to connect", "timed out")):
        text = f"cannot reach the store ({text})"
    return text if len(text) <= 300 else text[:297] + "..."


class StorePath:
    """A file or folder under a root URI: ``root`` (as given, query included) + ``parts`` below it.

    The subset of :class:`pathlib.Path` the run uses, plus :meth:`remove_tree` and :meth:`files`.
    ``str()`` is the URI without its query (safe to print and to record in a manifest).
    """

    __slots__ = ("root", "parts")

    def __init__(self, root: str, parts: tuple[str, ...] = ()) -> None:
        self.root = root
        self.parts = tuple(parts)

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...]]]:
        return StorePath, (self.root, self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and (self.root, self.parts) == (other.root, other.parts)

    def __hash__(self) -> int:
        return hash((self.root, self.parts))

    def __str__(self) -> str:
        return posixpath.join(shown_uri(self.root), *self.parts) if self.parts else shown_uri(self.root)

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    # -- naming ---------------------------------------------------------------------------------------
    def joinpath(self, *names: str | PurePosixPath) -> StorePath:
        parts = list(self.parts)
        for name in names:
            for part in str(name).split("/"):
                if part in ("", "."):
                    continue
                if part == "..":
                    raise ValueError(f"{self}: '..' is not allowed in a store path")
                parts.append(part)
        return StorePath(self.root, tuple(parts))

    def __truediv__(self, name: str | PurePosixPath) -> StorePath:
        return self.joinpath(name)

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else posixpath.basename(self.fs_path)

    @property
    def parent(self) -> StorePath:
        """The folder this path is in; for the root itself, the folder above it (``s3://b/m.parquet`` -> ``s3://b``,
        the same query), so that a file named by URI (``--manifest``) gets its temporary beside it, never inside it."""
        if self.parts:
            return StorePath(self.root, self.parts[:-1])
        split = urlsplit(self.root)
        path = split.path.rstrip("/")
        return StorePath(split._replace(path=posixpath.dirname(path)).geturl()) if "/" in path else self

    @property
    def parents(self) -> tuple[StorePath, ...]:
        return tuple(StorePath(self.root, self.parts[:cut]) for cut in range(len(self.parts) - 1, -1, -1))

    def relative_to(self, other: StorePath) -> PurePosixPath:
        if not isinstance(other, StorePath) or other.root != self.root or self.parts[:len(other.parts)] != other.parts:
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(*self.parts[len(other.parts):])

    def with_root_suffix(self, suffix: str) -> StorePath:
        """The sibling of this root named ``<name><suffix>`` (``s3://b/faces`` -> ``s3://b/faces-anonymized``)."""
        split = urlsplit(self.root)
        path = split.path.rstrip("/")
        if self.parts or not path:
            raise ValueError(f"{self}: cannot name a folder beside it; give --out")
        return StorePath(split._replace(path=path + suffix).geturl())

    def file_system(self) -> pafs.FileSystem:
        return file_system_of(self.root)[0]

    @property
    def fs_path(self) -> str:
        """This path inside its file system (``bucket/key`` on object stores)."""
        return posixpath.join(file_system_of(self.root)[1], *self.parts)

    def local_path(self) -> Path | None:
        """The same place as a local path when the file system is this machine's disk, else None."""
        return Path(self.fs_path) if isinstance(self.file_system(), pafs.LocalFileSystem) else None

    def key(self) -> tuple[str, ...]:
        """What tells two locations apart: the store (kind, endpoint, bucket...) then path components."""
        file_system = self.file_system()
        if isinstance(file_system, pafs.LocalFileSystem):
            return ("local", *Path(self.fs_path).resolve().parts)
        endpoint = dict(parse_qsl(urlsplit(self.root).query)).get("endpoint_override", "")
        return (file_system.type_name, endpoint, *[part for part in self.fs_path.split("/") if part])

    # -- reading --------------------------------------------------------------------------------------
    def _call(self, action: str, call, *args):  # type: ignore[no-untyped-def]
        try:
            return call(*args)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(self, f"{action}: {describe(exc)}") from None

    def info(self) -> pafs.FileInfo:
        return self._call("cannot look it up", self.file_system().get_file_info, self.fs_path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_symlink(self) -> bool:
        return False  # pyarrow's file systems show no links (a local one follows them)

    def modified(self) -> datetime | None:
        """When the store last wrote this object (its own clock), or None."""
        return self.info().mtime

    def iterdir(self) -> Iterator[StorePath]:
        selector = pafs.FileSelector(self.fs_path, recursive=False, allow_not_found=True)
        for info in self._call("cannot list it", self.file_system().get_file_info, selector):
            yield self / posixpath.basename(info.path.rstrip("/"))

    def files(self, recursive: bool = True) -> list[tuple[PurePosixPath, pafs.FileInfo]]:
        """Everything below, as (path relative to this folder, info), sorted by relative path."""
        selector = pafs.FileSelector(self.fs_path, recursive=recursive, allow_not_found=True)
        infos = self._call("cannot list it", self.file_system().get_file_info, selector)
        base = self.fs_path.rstrip("/")
        found = [(PurePosixPath(posixpath.relpath(info.path.rstrip("/"), base)), info) for info in infos]
        return sorted(found, key=lambda item: item[0])

    def read_bytes(self) -> bytes:
        return self.read_head(-1)

    def read_head(self, size: int) -> bytes:
        """The first ``size`` bytes (all of them for -1)."""
        try:
            with self.file_system().open_input_stream(self.fs_path) as stream:
                return stream.read() if size < 0 else stream.read(size)
        except FileNotFoundError:
            raise StoreError(self, "no such object") from None
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(self, describe(exc)) from None

    # -- changing -------------------------------------------------------------------------------------
    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.file_system().delete_file(self.fs_path)
        except FileNotFoundError:
            if not missing_ok:
                raise StoreError(self, "no such object") from None
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(self, f"cannot delete it: {describe(exc)}") from None

    def rmdir(self) -> None:
        """Remove this folder if it is empty (object stores: nothing to do once its objects are gone)."""
        if not any(True for _ in self.iterdir()):
            self._call("cannot delete it", self.file_system().delete_dir, self.fs_path)

    def remove_tree(self) -> None:
        if self.exists():
            self._call("cannot delete it", self.file_system().delete_dir, self.fs_path)

    def make_parent(self) -> None:
        """Create the folder this path goes in (object stores have none to create)."""
        if self.file_system().type_name not in OBJECT_STORES:
            folder = posixpath.dirname(self.fs_path)
            self._call("cannot create its folder", lambda: self.file_system().create_dir(folder, recursive=True))


Location = Union[Path, StorePath]


def uses_store(*paths: object) -> bool:
    return any(isinstance(path, StorePath) for path in paths)


def location_key(path: Location) -> tuple[str, ...]:
    """A normalised key for comparing any two locations, local or not (see :meth:`StorePath.key`)."""
    return path.key() if isinstance(path, StorePath) else ("local", *Path(path).resolve().parts)


def is_within(inner: Location, outer: Location) -> bool:
    """``inner`` is ``outer`` or below it (same store, same bucket, path prefix by components)."""
    inside, container = location_key(inner), location_key(outer)
    return inside[:len(container)] == container


def bucket_missing(path: StorePath) -> str | None:
    """The bucket's name when ``path`` is on an object store and its bucket does not exist (or is not visible)."""
    file_system = path.file_system()
    if file_system.type_name not in OBJECT_STORES:
        return None
    bucket = path.fs_path.split("/")[0]
    try:
        found = file_system.get_file_info(bucket)
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(path, describe(exc)) from None
    return bucket if found.type == pafs.FileType.NotFound else None
