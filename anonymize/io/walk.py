"""Find the images of a dataset tree, in an order that does not depend on the file system.

A file is an image candidate when its bytes say so (magic numbers) or when its name says so
(extension). The second rule is deliberate: a broken ``photo.jpg`` must reach the decoder and be
reported as a per-file error, never be skipped silently, because a skipped file is a file the user
believes was anonymized.
"""

from __future__ import annotations

import errno
import io
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
# Photos in formats Pillow (or a plugin: pillow-heif) reads but that are not written back as themselves
# (anonymize.io.decode writes them as PNG under their own name and says so). Named so, a broken one still
# reaches the decoder and is an error row; a file of any other name is an image when Pillow identifies it
# (:func:`pillow_identifies`), so no photo is ever a side file that --copy-other copies byte for byte.
OTHER_IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".heic", ".heif", ".hif", ".avif", ".avifs", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".tga", ".icb", ".vda",
    ".vst", ".ico", ".cur", ".icns", ".pcx", ".dcx", ".sgi", ".rgb", ".rgba", ".bw", ".qoi", ".jp2", ".j2k",
    ".jpc", ".jpf", ".jpx", ".j2c", ".dds", ".im", ".jxl", ".psd", ".xbm", ".xpm", ".ras", ".fits", ".fit",
    ".blp", ".ftc", ".ftu", ".gbr", ".mpo", ".jfif", ".jpe", ".dib", ".msp", ".pxr", ".sun",
})
_PILLOW_SNIFF_BYTES = 1 << 16  # enough for every header Pillow parses in Image.open

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


def register_image_plugins() -> None:
    """Register the maintained plugins that are installed (pillow-heif: HEIC/HEIF; pillow-avif-plugin where
    this Pillow has no AVIF codec of its own), once."""
    global _PLUGINS_REGISTERED
    if _PLUGINS_REGISTERED:
        return
    _PLUGINS_REGISTERED = True
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except Exception:  # noqa: BLE001 - not installed (or broken): HEIC files become error rows naming it
        pass
    try:
        from PIL import features

        if not features.check("avif"):
            import pillow_avif  # noqa: F401 - registers itself
    except Exception:  # noqa: BLE001
        pass


_PLUGINS_REGISTERED = False


def pillow_identifies(head: bytes) -> str | None:
    """The format Pillow (with the installed plugins) recognises in a file's first bytes, or None.

    Only the header is parsed (``Image.open``), never the pixels: a file whose header says "image" is an
    image, and the decoder then makes it pixels or an error row (too large, truncated), never a side file.
    """
    if not head:
        return None
    register_image_plugins()
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head)) as image:
                return image.format or "unknown"
    except Image.DecompressionBombError:
        return "unknown"  # a header announcing a huge picture is an image all the same
    except (UnidentifiedImageError, Exception):  # noqa: BLE001 - a plugin may raise anything on junk
        return _ftyp_image(head)


def _ftyp_image(head: bytes) -> str | None:
    """HEIF/AVIF by their ISO-BMFF brand, for when no plugin reads them (an error row then names the plugin)."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
        if brand in (b"avif", b"avis"):
            return "AVIF"
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
        kind: EntryKind = "image" if _is_image_file(root) else "other"
        yield WalkEntry(root, PurePosixPath(root.name), kind, "" if kind == "image" else "not an image")
        return
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    excluded = Path(os.path.realpath(exclude)) if exclude is not None else None
    inside = Path(os.path.realpath(root))
    visited: set[Path] = {inside}
    yield from _walk_dir(root, PurePosixPath(), excluded, visited, inside)


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The image files of a side folder (a gallery, references, one identity), by name, sorted: the
    same notion of "image" as the walk's, for folders that are read whole rather than anonymized."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path for path in found if _has_image_name(path.name) and path.is_file())


def _is_under(path: Path, ancestor: Path | None) -> bool:
    return ancestor is not None and (path == ancestor or ancestor in path.parents)


def _has_image_name(name: str) -> bool:
    extension = os.path.splitext(name)[1].lower()
    return extension in IMAGE_EXTENSIONS or extension in OTHER_IMAGE_EXTENSIONS


def _read_head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def _is_image_file(path: Path) -> bool:
    """A regular file is an image when its name, its magic bytes or Pillow's plugins say so."""
    return _has_image_name(path.name) or sniff_format(path) is not None or pillow_identifies(_read_head(path, _PILLOW_SNIFF_BYTES)) is not None


def _walk_dir(directory: Path, rel: PurePosixPath, excluded: Path | None, visited: set[Path],
              inside: Path | None = None) -> Iterator[WalkEntry]:
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
            yield from _walk_dir(path, rel / name, excluded, visited, inside)
        elif stat.S_ISREG(info.st_mode):
            if _is_image_file(path):
                yield WalkEntry(path, rel / name, "image")
            elif inside is not None and not _is_under(real, inside):
                # A side file reached through a link (to it, or to a folder above it) that leads out of the
                # input: never copied (--copy-other), since it is not part of the dataset given.
                yield WalkEntry(path, rel / name, "skipped", "not an image; a link out of the input (not read, not copied)")
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
        if _has_image_name(relpath.name) or _sniff_object(path) is not None or _pillow_sniff_object(path) is not None:
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


def _pillow_sniff_object(path: StorePath) -> str | None:
    """:func:`pillow_identifies` of an object's first bytes (one ranged read)."""
    try:
        return pillow_identifies(path.read_head(_PILLOW_SNIFF_BYTES))
    except OSError:
        return None
