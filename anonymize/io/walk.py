"""Find the images of a dataset tree, in an order that does not depend on the file system.

A file is an image candidate when its bytes say so (magic numbers) or when its name says so
(extension). The second rule is deliberate: a broken ``photo.jpg`` must reach the decoder and be
reported as a per-file error, never be skipped silently, because a skipped file is a file the user
believes was anonymized.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from anonymize.io.store import StorePath, is_within

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

_SNIFF_BYTES = 32
# Sizes of the BMP info headers that exist (core, v1..v5 and the OS/2 variants): "BM" alone is
# too weak a signature, plenty of text files start with it.
_BMP_INFO_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True)
class ImageFile:
    """One image candidate found by :func:`walk_images`."""

    path: Path | StorePath  # absolute path of the source file (through symlinks, not resolved), or its URI
    relpath: PurePosixPath  # path relative to the walked root, posix form (mirrored in the output tree)


def sniff_format_of_bytes(head: bytes) -> str | None:
    """The image format the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if len(head) >= 18 and head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return "BMP"
    return None


def sniff_format(path: Path) -> str | None:
    """"JPEG" | "PNG" | "WEBP" | "BMP" | "TIFF" | "GIF" from the magic bytes; None otherwise or if unreadable."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device: it could block
            return None
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return None
    return sniff_format_of_bytes(head)


EntryKind = Literal["image", "other", "skipped", "error"]


@dataclass(frozen=True)
class WalkEntry:
    """Anything the walk meets: an image candidate, another file, or something it cannot or will not enter.

    ``reason`` says why an entry is not an image candidate ("not an image", "cannot list folder
    (Permission denied)", ...), so that every one of them can get its own manifest row.
    """

    path: Path | StorePath
    relpath: PurePosixPath
    kind: EntryKind
    reason: str = ""


def walk_images(root: Path | StorePath, exclude: Path | StorePath | None = None) -> Iterator[ImageFile]:
    """Yield the image candidates under ``root``, sorted by relpath (see :func:`walk_tree`)."""
    for entry in walk_tree(root, exclude):
        if entry.kind == "image":
            yield ImageFile(path=entry.path, relpath=entry.relpath)


def walk_tree(root: Path | StorePath, exclude: Path | StorePath | None = None) -> Iterator[WalkEntry]:
    """Yield every entry under ``root``, sorted by relpath, each marked with what it is.

    Follows directory symlinks but enters each real directory once (so loops end and a directory
    linked twice is not processed twice), does not enter hidden entries (one "skipped" entry each)
    and skips everything under ``exclude`` (the output tree, which must never be read back).
    A folder named by URI is listed through its store (:func:`walk_store`).
    """
    if isinstance(root, StorePath):
        yield from walk_store(root, exclude)
        return
    if isinstance(exclude, StorePath):  # an output named by URI can only be in this tree if it is on this disk
        exclude = exclude.local_path()
    root = Path(os.path.abspath(root))
    if root.is_file():  # one image named on the command line (`anonymize run photo.jpg`): itself, under its name
        kind: EntryKind = "image" if _has_image_name(root.name) or sniff_format(root) is not None else "other"
        yield WalkEntry(root, PurePosixPath(root.name), kind, "" if kind == "image" else "not an image")
        return
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    excluded = Path(os.path.realpath(exclude)) if exclude is not None else None
    visited: set[Path] = {Path(os.path.realpath(root))}
    yield from _walk_dir(root, PurePosixPath(), excluded, visited)


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files of a side folder (a gallery, references, one identity), by name, sorted: the
    same notion of "image" as the walk's, for folders that are read whole rather than anonymized."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path for path in found if _has_image_name(path.name) and path.is_file())


def _is_under(path: Path, ancestor: Path | None) -> bool:
    return ancestor is not None and (path == ancestor or ancestor in path.parents)


def _has_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_dir(directory: Path, rel: PurePosixPath, excluded: Path | None, visited: set[Path]) -> Iterator[WalkEntry]:
    # Depth-first over names sorted per directory yields exactly sorted(relpath): PurePosixPath
    # orders by path components, and so does this traversal.
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError as exc:
        log.warning("cannot list folder %s: %s", directory, exc.strerror or exc)
        yield WalkEntry(directory, rel, "error", f"cannot list folder ({exc.strerror or exc})")
        return
    for name in names:
        path = directory / name
        if name.startswith("."):
            yield WalkEntry(path, rel / name, "skipped", "hidden (not read)")
            continue
        try:
            info = os.stat(path)  # follows symlinks
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                yield WalkEntry(path, rel / name, "error", "path too long for the operating system")
            elif _has_image_name(name):
                # A dangling link named like an image: the decoder reports it as an error row.
                yield WalkEntry(path, rel / name, "image")
            else:
                yield WalkEntry(path, rel / name, "skipped", f"cannot be read ({exc.strerror or exc})")
            continue
        real = Path(os.path.realpath(path))
        if _is_under(real, excluded):
            continue
        if stat.S_ISDIR(info.st_mode):
            if real in visited:
                yield WalkEntry(path, rel / name, "skipped", "link to a folder already walked")
                continue
            visited.add(real)
            yield from _walk_dir(path, rel / name, excluded, visited)
        elif stat.S_ISREG(info.st_mode):
            if _has_image_name(name) or sniff_format(path) is not None:
                yield WalkEntry(path, rel / name, "image")
            else:
                yield WalkEntry(path, rel / name, "other", "not an image")
        else:
            yield WalkEntry(path, rel / name, "skipped", "not a regular file")


def walk_store(root: StorePath, exclude: Path | StorePath | None = None) -> Iterator[WalkEntry]:
    """:func:`walk_tree` over a folder of an object store (or any pyarrow file system): the same
    entries in the same order, from one recursive listing. Stores have no links, so only the
    hidden entries (one "skipped" entry each, nothing below them) and ``exclude`` are left out."""
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    hidden: set[PurePosixPath] = set()
    entries: list[WalkEntry] = []
    for relpath, info in root.files(recursive=True):
        path = root / relpath
        first_hidden = next((index for index, part in enumerate(relpath.parts) if part.startswith(".")), None)
        if first_hidden is not None:
            top = PurePosixPath(*relpath.parts[: first_hidden + 1])
            if top not in hidden:
                hidden.add(top)
                entries.append(WalkEntry(root / top, top, "skipped", "hidden (not read)"))
            continue
        if exclude is not None and is_within(path, exclude):
            continue
        if not info.is_file:
            continue
        if _has_image_name(relpath.name) or _sniff_object(path) is not None:
            entries.append(WalkEntry(path, relpath, "image"))
        else:
            entries.append(WalkEntry(path, relpath, "other", "not an image"))
    yield from sorted(entries, key=lambda entry: entry.relpath)


def _sniff_object(path: StorePath) -> str | None:
    """:func:`sniff_format` of an object: its first bytes only (one ranged read)."""
    try:
        return sniff_format_of_bytes(path.read_head(_SNIFF_BYTES))
    except OSError:
        return None
