"""Write anonymized pixels back in the source's format, with every piece of metadata gone.

The output image is always built from the pixel array (``Image.fromarray``), never by re-saving
the decoded source: a source ``Image`` carries its ``info`` dict (EXIF, XMP, comments, text
chunks), and several Pillow writers copy parts of it into the output by default. Only the ICC
profile's colour data is passed on, because without it colours shift: the profile is rebuilt from its
colour tags (:func:`anonymize.io.icc.cleaned_profile`: description, copyright, device and vendor-private
tags gone) and checked to give the same colours; a profile that cannot be rebuilt faithfully has its
pixels converted to sRGB and is dropped (the row's note says so), and ``strip_icc`` drops every profile.

Files appear atomically: the bytes are encoded in memory first, then written to a temporary file
next to the destination, synced, and renamed over it. A crash or an encoding error leaves either
the old file or the complete new one, never half an image. Destinations named by URI
(:class:`~anonymize.io.store.StorePath`) are written through pyarrow: see :func:`atomic_write_to_store`.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import stat
import struct
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
from pyarrow import fs as pafs
from PIL import Image, features

from anonymize.io.decode import DecodedImage
from anonymize.io.icc import IccError, cleaned_profile
from anonymize.io.store import OBJECT_STORES, StorePath, StoreError, describe

_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF", "BMP"})
_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})


def output_path_for(out_root: Path | StorePath, relpath: PurePosixPath) -> Path | StorePath:
    """Where the anonymized copy of ``relpath`` goes: the same relative path under ``out_root``."""
    relpath = PurePosixPath(relpath)
    if relpath.is_absolute() or ".." in relpath.parts or not relpath.parts:
        raise ValueError(f"{relpath}: not a relative path inside the input tree")
    root = out_root if isinstance(out_root, StorePath) else Path(out_root)
    return root.joinpath(*relpath.parts)


def render_relpath(relpath: PurePosixPath, label: str) -> PurePosixPath:
    """Where a further rendering ``label`` of ``relpath`` goes: ``photo.jpg`` -> ``photo.cfa-a55-v1.jpg``, beside it."""
    relpath = PurePosixPath(relpath)
    return relpath.with_name(f"{relpath.stem}.cfa-{label}{relpath.suffix}")


def encode_image(image: DecodedImage, rgb: np.ndarray, jpeg_quality: int = 95, strip_icc: bool = False) -> bytes:
    """Encode ``rgb`` in ``image``'s source format, with its alpha, gray-ness and its ICC profile's colour data only
    (``strip_icc``: no profile at all, the pixels as they are).

    ``jpeg_quality`` is also the quality of lossy WebP. JPEG at quality >= 90 keeps full chroma
    resolution (4:4:4): anonymized faces are small and 4:2:0 visibly smears their colours.
    """
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
    pixels = _checked_rgb(rgb, image)
    output = _build_output_image(image, pixels)
    if image.gray16 is not None and image.format in _SIXTEEN_BIT_FORMATS:
        output = _sixteen_bit_gray(image, pixels, output)
    icc_profile = None if strip_icc else _profile_matching(image.icc_profile, output.mode)
    if icc_profile:
        icc_profile, output = _colour_data_only(image, icc_profile, output)
    options: dict[str, object] = {"icc_profile": icc_profile} if icc_profile else {}

    if image.format == "JPEG":
        options.update(quality=jpeg_quality, subsampling=0 if jpeg_quality >= 90 else 2, optimize=False)
    elif image.format == "PNG":
        options.update(optimize=False, compress_level=6)
    elif image.format == "WEBP":
        if image.webp_lossless:
            options.update(lossless=True, exact=True)
        else:
            options.update(quality=jpeg_quality)
    elif image.format == "TIFF":
        options.update(compression="tiff_lzw" if features.check_codec("libtiff") else None)
    elif image.format == "BMP":
        options.pop("icc_profile", None)  # Pillow's BMP writer cannot embed a profile
    elif image.format in ("HEIF", "AVIF"):  # read and written through a plugin (anonymize.io.decode.SELF_WRITTEN)
        options.update(quality=jpeg_quality)
    else:
        raise ValueError(f"cannot write format {image.format!r}")

    buffer = io.BytesIO()
    output.save(buffer, format=image.format, **options)
    return buffer.getvalue()


def write_image(image: DecodedImage, rgb: np.ndarray, dest: Path, jpeg_quality: int = 95, root: Path | None = None,
                strip_icc: bool = False) -> None:
    """Encode (in memory) and then atomically place the result at ``dest`` (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(dest, encode_image(image, rgb, jpeg_quality=jpeg_quality, strip_icc=strip_icc), root=root)


class UnsafeOutputPath(OSError):
    """A folder on the way to an output is a symbolic link (or not a folder): nothing is written through it."""


def atomic_write_bytes(dest: Path, data: bytes, root: Path | None = None) -> None:
    """Make ``dest`` hold exactly ``data``, or leave it as it was: no partial file is ever visible.

    With ``root`` (an output tree), every folder between ``root`` and ``dest`` is created or opened
    without following symbolic links, so a link planted in the output tree can never redirect a
    write (into the input tree, say). Without it only ``dest``'s folder is used as it is. Either way
    the temporary file is created with O_EXCL | O_NOFOLLOW under a short name (so any name that
    fits the file system still fits with the temporary suffix) and renamed over ``dest``; a rename
    replaces a symbolic link at ``dest`` itself, never the file it points to.
    """
    if isinstance(dest, StorePath):
        atomic_write_to_store(dest, data)
        return
    dest = Path(dest)
    if root is None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    else:
        folder = open_folder_in(Path(root), dest.parent.relative_to(root).parts)
    try:
        write_in_folder(folder, dest.name, data)
    finally:
        os.close(folder)


def atomic_write_to_store(dest: StorePath, data: bytes) -> None:
    """Make the object ``dest`` hold exactly ``data`` or leave it as it was, through pyarrow.

    On S3 and GCS the store's own PUT is the atomic step: an object becomes visible only when its
    upload completes (one PUT, or the final CompleteMultipartUpload), so a reader sees the old
    object or the whole new one; a copy-and-delete "rename" would add nothing but a second write.
    ``data`` is written in one call and a failed upload is never completed. Any other file system
    (``file://``) gets a temporary file beside ``dest`` moved over it (a rename, atomic there).
    """
    file_system = dest.file_system()
    try:
        if file_system.type_name in OBJECT_STORES:
            _put(file_system, dest.fs_path, data)
            return
        dest.make_parent()
        temporary = dest.parent / temporary_name(dest.name)
        try:
            _put(file_system, temporary.fs_path, data)
            file_system.move(temporary.fs_path, dest.fs_path)
        except BaseException:
            try:
                file_system.delete_file(temporary.fs_path)
            except (pa.ArrowException, OSError):
                pass
            raise
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(dest, f"cannot write it: {describe(exc)}") from None


def _put(file_system: pafs.FileSystem, path: str, data: bytes) -> None:
    stream = file_system.open_output_stream(path)
    stream.write(data)
    stream.close()  # the upload completes (the object appears) only here


def open_folder_in(root: Path, parts: tuple[str, ...], create: bool = True) -> int:
    """A descriptor of ``root/parts...``, created as needed, refusing any part that is a symbolic link."""
    if create:
        root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            if part in ("", ".", ".."):
                raise UnsafeOutputPath(f"{'/'.join(parts)}: not a plain relative path")
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=descriptor)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: index + 1])
                    raise UnsafeOutputPath(f"{where} in {root} is a symbolic link or not a folder; refusing to write through it") from None
                raise
            os.close(descriptor)
            descriptor = child
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def is_regular_file_in(root: Path, path: Path) -> bool:
    """``path`` (under ``root``) exists as a regular file reached without any symbolic link."""
    if isinstance(path, StorePath):
        try:
            return path.is_file()
        except OSError:
            return False
    try:
        relative = Path(path).relative_to(root).parts
        folder = open_folder_in(Path(root), relative[:-1], create=False)
    except (OSError, ValueError):
        return False
    try:
        return stat.S_ISREG(os.stat(relative[-1], dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(folder)


def temporary_name(name: str) -> str:
    """A hidden, unique and short temporary name: at most ~60 bytes whatever the length of ``name``."""
    return f".{name[:16]}.{secrets.token_hex(6)}.tmp"


TEMPORARY_NAME = re.compile(r"^\..*\.[0-9a-f]{12}\.tmp$", re.DOTALL)  # what temporary_name makes


def write_in_folder(folder: int, name: str, data: bytes) -> None:
    """Atomically replace ``name`` inside the open ``folder`` by ``data`` (temporary file, fsync, rename)."""
    mode = _mode_for(folder, name)
    while True:
        temporary = temporary_name(name)
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                                 0o600, dir_fd=folder)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=folder)
        except FileNotFoundError:
            pass
        raise
    try:
        os.fsync(folder)  # persist the rename itself
    except OSError:
        pass


def _checked_rgb(rgb: np.ndarray, image: DecodedImage) -> np.ndarray:
    pixels = np.asarray(rgb)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"rgb must be an H x W x 3 uint8 array, got {pixels.dtype} {pixels.shape}")
    if image.alpha is not None and image.alpha.shape != pixels.shape[:2]:
        raise ValueError(f"rgb is {pixels.shape[:2]} but the source alpha is {image.alpha.shape}")
    return np.ascontiguousarray(pixels)


def _build_output_image(image: DecodedImage, pixels: np.ndarray) -> Image.Image:
    """A fresh image (empty ``info``) in the mode the source format and the source's nature call for."""
    output = Image.fromarray(pixels)
    keep_alpha = image.alpha is not None and image.format in _ALPHA_FORMATS
    # WebP has no gray mode and BMP no gray+alpha mode: those stay RGB(A), with R = G = B.
    write_gray = image.grayscale and image.format != "WEBP" and not (keep_alpha and image.format == "BMP")
    if write_gray:
        output = output.convert("L")  # luma; exact for R = G = B
    if keep_alpha:
        output.putalpha(Image.fromarray(np.ascontiguousarray(image.alpha)))
    return output


def _sixteen_bit_gray(image: DecodedImage, pixels: np.ndarray, gray8: Image.Image) -> Image.Image:
    """The source's 16-bit gray values, with only the changed pixels replaced (8-bit value x 257).

    Pixels the method did not touch keep their full 16-bit precision, bit for bit.
    """
    wide = np.array(image.gray16, dtype=np.uint16, copy=True)
    changed = np.any(pixels != image.rgb, axis=2)
    luma = np.asarray(gray8.convert("L"), dtype=np.uint16)
    wide[changed] = luma[changed] * 257
    return Image.fromarray(wide)


def _profile_matching(icc_profile: bytes | None, mode: str) -> bytes | None:
    """The profile only if it describes the written pixels (an RGB profile on gray pixels misleads viewers)."""
    if not icc_profile or len(icc_profile) < 20:
        return None
    wanted = b"GRAY" if mode in ("L", "LA", "I;16") else b"RGB "
    return icc_profile if icc_profile[16:20] == wanted else None


_COLOUR_TOLERANCE = 1  # grey levels: the rebuilt profile must map every probed colour as the source's does


def _colour_data_only(image: DecodedImage, profile: bytes, output: Image.Image) -> tuple[bytes | None, Image.Image]:
    """The profile to embed (rebuilt from its colour data) and the image to encode.

    A profile that cannot be rebuilt faithfully (unparsable tag table, colours that differ) is applied:
    the pixels are converted to sRGB and no profile is embedded; one Little CMS cannot read at all (no
    viewer could use it) is dropped. Either way the row's note says so."""
    rebuilt, problem = _rebuilt_profile(profile)
    if rebuilt is not None:
        return rebuilt, output
    converted = _to_srgb(output, profile)
    if converted is not None:
        _add_note(image, f"ICC profile not kept ({problem}): pixels converted to sRGB, profile dropped")
        return None, converted
    _add_note(image, f"ICC profile dropped ({problem}): pixels kept as decoded")
    return None, output


@lru_cache(maxsize=16)
def _rebuilt_profile(profile: bytes) -> tuple[bytes | None, str]:
    """(the rebuilt profile, "") or (None, why not); cached: a dataset usually shares a few profiles."""
    from PIL import ImageCms

    try:
        rebuilt = cleaned_profile(profile)
    except (IccError, struct.error) as exc:
        return None, f"unreadable tag table: {exc}"
    try:
        source, cleaned = (ImageCms.ImageCmsProfile(io.BytesIO(data)) for data in (profile, rebuilt))
        gray = profile[16:20] == b"GRAY"
        probe = _probe_image(gray)
        srgb = ImageCms.createProfile("sRGB")
        mode = "L" if gray else "RGB"
        before = ImageCms.applyTransform(probe, ImageCms.buildTransform(source, srgb, mode, "RGB"))
        after = ImageCms.applyTransform(probe, ImageCms.buildTransform(cleaned, srgb, mode, "RGB"))
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        return None, f"not readable as a colour profile: {' '.join(str(exc).split())}"
    difference = np.abs(np.asarray(before, np.int16) - np.asarray(after, np.int16)).max()
    if difference > _COLOUR_TOLERANCE:
        return None, f"its colour data alone maps colours {difference} grey levels apart"
    return rebuilt, ""


def _probe_image(gray: bool) -> Image.Image:
    """Every grey level, or a 17 x 17 x 17 grid of colours (every 16th level, 255 included)."""
    if gray:
        return Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    levels = np.minimum(np.arange(17) * 16, 255).astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(17 * 17, 17, 3)
    return Image.fromarray(np.ascontiguousarray(grid))


def _to_srgb(output: Image.Image, profile: bytes) -> Image.Image | None:
    """``output`` converted from ``profile`` to sRGB (alpha kept), or None when that cannot be done."""
    from PIL import ImageCms

    if output.mode not in ("RGB", "RGBA") or profile[16:20] != b"RGB ":
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        converted = ImageCms.profileToProfile(output.convert("RGB"), source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    if output.mode == "RGBA":
        converted.putalpha(output.getchannel("A"))
    return converted


def _add_note(image: DecodedImage, text: str) -> None:
    if image.note is None or text not in image.note:
        image.note = f"{image.note}; {text}" if image.note else text


def _mode_for(folder: int, name: str) -> int:
    """Keep an existing regular file's permissions; a new file gets the usual 0o666 minus the umask."""
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if stat.S_ISREG(info.st_mode):
            return info.st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_current_umask()


def _current_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads creating files;
    # Linux exposes it read-only in /proc.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
