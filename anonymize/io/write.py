"""Write anonymized pixels back in the source's format, with every piece of metadata gone.

The output image is always built from the pixel array (``Image.fromarray``), never by re-saving
the decoded source: a source ``Image`` carries its ``info`` dict (EXIF, XMP, comments, text
chunks), and several Pillow writers copy parts of it into the output by default. Only the ICC
profile is passed on, because without it colours shift, and it says nothing about the person.

Files appear atomically: the bytes are encoded in memory first, then written to a temporary file
next to the destination, synced, and renamed over it. A crash or an encoding error leaves either
the old file or the complete new one, never half an image.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, features

from anonymize.io.decode import DecodedImage

_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF", "BMP"})


def output_path_for(out_root: Path, relpath: PurePosixPath) -> Path:
    """Where the anonymized copy of ``relpath`` goes: the same relative path under ``out_root``."""
    relpath = PurePosixPath(relpath)
    if relpath.is_absolute() or ".." in relpath.parts or not relpath.parts:
        raise ValueError(f"{relpath}: not a relative path inside the input tree")
    return Path(out_root).joinpath(*relpath.parts)


def encode_image(image: DecodedImage, rgb: np.ndarray, jpeg_quality: int = 95) -> bytes:
    """Encode ``rgb`` in ``image``'s source format, with its alpha, gray-ness and ICC profile only.

    ``jpeg_quality`` is also the quality of lossy WebP. JPEG at quality >= 90 keeps full chroma
    resolution (4:4:4): anonymized faces are small and 4:2:0 visibly smears their colours.
    """
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
    pixels = _checked_rgb(rgb, image)
    output = _build_output_image(image, pixels)
    icc_profile = _profile_matching(image.icc_profile, output.mode)
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
    else:
        raise ValueError(f"cannot write format {image.format!r}")

    buffer = io.BytesIO()
    output.save(buffer, format=image.format, **options)
    return buffer.getvalue()


def write_image(image: DecodedImage, rgb: np.ndarray, dest: Path, jpeg_quality: int = 95) -> None:
    """Encode (in memory) and then atomically place the result at ``dest``."""
    atomic_write_bytes(dest, encode_image(image, rgb, jpeg_quality=jpeg_quality))


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Make ``dest`` hold exactly ``data``, or leave it as it was: no partial file is ever visible."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name, so a walker over this tree never picks up a leftover temp file as an image.
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, _mode_for(dest))
        os.replace(temp_name, dest)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(dest.parent)


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


def _profile_matching(icc_profile: bytes | None, mode: str) -> bytes | None:
    """The profile only if it describes the written pixels (an RGB profile on gray pixels misleads viewers)."""
    if not icc_profile or len(icc_profile) < 20:
        return None
    wanted = b"GRAY" if mode in ("L", "LA") else b"RGB "
    return icc_profile if icc_profile[16:20] == wanted else None


def _mode_for(dest: Path) -> int:
    """Keep an existing file's permissions; a new file gets the usual 0o666 minus the umask."""
    try:
        return os.stat(dest).st_mode & 0o7777
    except OSError:
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


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (POSIX); not possible, nor needed, on Windows."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
