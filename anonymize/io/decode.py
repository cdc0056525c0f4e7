"""Decode any supported image file into plain 8-bit RGB pixels, or fail with a one-line reason.

Every failure a file's content can cause ends as :class:`ImageDecodeError`, so the pipeline can
record an error row and carry on. Three rules matter for an anonymizer:

* a partially decoded image is never accepted (Pillow's ``LOAD_TRUNCATED_IMAGES`` must stay
  False and the pixels are fully loaded here): anonymizing the top half of a photo and writing it
  out as if complete would be silent data loss;
* the pixel limit is checked from the header, before any pixel is decoded. The plugin classes are
  called directly instead of ``Image.open`` so that the limit is ours (configurable) rather than
  Pillow's global ``MAX_IMAGE_PIXELS`` (which still applies inside a few plugins, e.g. tiled
  TIFF, and is reported the same way);
* the returned pixels are what a viewer shows: EXIF orientation applied, palette/CMYK/16-bit
  converted, so faces are detected upright and the writer never needs the orientation tag.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import (
    BmpImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from anonymize.errors import AnonymizeError
from anonymize.io.walk import register_image_plugins, sniff_format_of_bytes

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS) by default
DEFAULT_MAX_BYTES = 2 << 30  # larger files are error rows from their size alone, never read (a sparse 40 GB .jpg)
# Formats read through Pillow's other plugins (or pillow-heif) are written back as this one, under their own
# name, and the row's note says so: the writer encodes the five formats above only.
WRITTEN_AS = "PNG"
# Read through a plugin and written back in their own format when this Pillow can write them (pillow-heif
# writes HEIF; Pillow >= 11.2 built with libavif writes AVIF); otherwise as WRITTEN_AS, with a note.
SELF_WRITTEN = ("HEIF", "AVIF")
_PLUGIN_HINTS = {
    "HEIC": "HEIC needs the pillow-heif plugin (pip install pillow-heif)",
    "HEIF": "HEIF needs the pillow-heif plugin (pip install pillow-heif)",
    "AVIF": "AVIF needs Pillow >= 11.2 built with AVIF, or the pillow-avif-plugin plugin (pip install pillow-avif-plugin)",
    "JPEG XL": "JPEG XL needs a Pillow plugin for it (e.g. pip install pillow-jxl-plugin)",
}

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

_OPENERS: dict[str, Callable[[BinaryIO, str], ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.jpeg_factory,  # returns an MpoImageFile for multi-picture JPEGs
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
}

# Signatures of image formats we recognise but do not process, for a clearer error message.
_OTHER_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"%PDF", "PDF"),
)


class ImageDecodeError(AnonymizeError):
    """A file that cannot be decoded into a complete image; ``str(e)`` is ``"<name>: <cause>"`` on one line."""

    def __init__(self, name: str, cause: str) -> None:
        self.name = name
        self.cause = cause
        super().__init__(f"{name}: {cause}")


@dataclass
class DecodedImage:
    """Fully decoded pixels plus what the writer needs to re-encode them like the source."""

    rgb: np.ndarray  # H x W x 3 uint8, EXIF orientation already applied
    alpha: np.ndarray | None  # H x W uint8 when the source had transparency
    format: str  # "JPEG", "PNG", "WEBP", "BMP" or "TIFF"
    mode: str  # source Pillow mode ("RGB", "L", "P", "CMYK", "I;16", "RGBA", ...)
    icc_profile: bytes | None  # describes ``rgb`` (or its gray version); kept on write
    webp_lossless: bool = False  # the source WebP was lossless (VP8L), so it is re-encoded losslessly
    gray16: np.ndarray | None = None  # H x W uint16: a 16-bit gray source's own values, written back at 16 bits
    note: str | None = None  # a conversion the output cannot avoid (e.g. 16-bit colour read as 8-bit)

    @property
    def grayscale(self) -> bool:
        """The source had no colour, so it is written back as grayscale."""
        return self.mode in GRAYSCALE_MODES


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (images can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def too_many_bytes(size: int, max_bytes: int) -> str | None:
    """The one-line cause for a file over the ``--max-bytes`` bound, or None."""
    if size <= max_bytes:
        return None
    return f"file too large: {size} bytes exceeds the {max_bytes}-byte limit (--max-bytes)"


def decode_image(path: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, display_name: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> DecodedImage:
    """Decode ``path`` completely, or raise :class:`ImageDecodeError` naming it and the cause.

    ``path`` may also be the file's bytes, already read (the run hashes and decodes the same bytes,
    and reads files named by URI only so); ``display_name`` then names it. A file of more than
    ``max_bytes`` bytes is refused from its size, before it is read.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        name = display_name if display_name is not None else "<bytes>"
        cause = too_many_bytes(len(path), max_bytes)
        if cause is not None:
            raise ImageDecodeError(name, cause)
        return decode_bytes(bytes(path), name, max_pixels)
    _refuse_truncated_loading()
    name = display_name if display_name is not None else str(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(name, "not a regular file")
        if info.st_size == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        cause = too_many_bytes(info.st_size, max_bytes)
        if cause is not None:
            raise ImageDecodeError(name, cause)
        handle = open(path, "rb")
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from exc
    with handle:
        return _decode_handle(handle, os.fspath(path), max_pixels, name)


def decode_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """:func:`decode_image` of a file already read into memory (hashed and decoded from the same bytes)."""
    _refuse_truncated_loading()
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode_handle(io.BytesIO(data), name, max_pixels, name)


def _refuse_truncated_loading() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by other code; refusing to decode, "
            "truncated images would be accepted as complete"
        )


def _decode_handle(handle: BinaryIO, filename: str, max_pixels: int, name: str) -> DecodedImage:
    try:
        head = handle.read(4096)
        handle.seek(0)
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from exc
    image_format = sniff_format_of_bytes(head)
    if image_format == "GIF":
        raise ImageDecodeError(name, _describe_gif(handle))
    if image_format is None:
        return _decode_other_format(handle, max_pixels, name, head)
    decoded = _decode_stream(handle, filename, image_format, max_pixels, name)
    if image_format == "WEBP":
        decoded.webp_lossless = _webp_is_lossless(handle)
    return decoded


def _can_write(image_format: str) -> bool:
    register_image_plugins()
    return image_format in Image.SAVE


def _decode_other_format(handle: BinaryIO, max_pixels: int, name: str, head: bytes) -> DecodedImage:
    """A file none of the five written formats announces: whatever Pillow's plugins (and pillow-heif) read is
    decoded like them and written back as PNG under its own name (the note says so); anything else fails."""
    register_image_plugins()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own --max-pixels decides
            image = Image.open(handle)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"image too large: {_one_line(exc)}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(name, _describe_non_image(head)) from exc
    except Exception as exc:  # noqa: BLE001 - plugins raise SyntaxError, struct.error, ValueError, OSError, ...
        known = _known_other_format(head)
        if known in _PLUGIN_HINTS:
            raise ImageDecodeError(name, f"unsupported image format ({_PLUGIN_HINTS[known]})") from exc
        raise ImageDecodeError(name, f"corrupt {known or 'image'} header ({_one_line(exc)})") from exc
    source_format = image.format or "image"
    if source_format == "GIF":
        raise ImageDecodeError(name, _describe_gif(handle))
    if source_format in SELF_WRITTEN and _can_write(source_format):  # phone photos stay what they were
        return _decode_opened(image, source_format, max_pixels, name, written_as=source_format)
    decoded = _decode_opened(image, source_format, max_pixels, name, written_as=WRITTEN_AS)
    conversion = f"{source_format} read and written as {WRITTEN_AS} under its own name"
    decoded.note = f"{conversion}; {decoded.note}" if decoded.note else conversion
    return decoded


def _known_other_format(head: bytes) -> str | None:
    for offset, signature, format_name in _OTHER_FORMATS:
        if head[offset : offset + len(signature)] == signature:
            return format_name
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"):
        return "HEIC"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"mif1", b"msf1"):
        return "HEIF"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def _decode_stream(handle: BinaryIO, filename: str, image_format: str, max_pixels: int, name: str) -> DecodedImage:
    try:
        image = _OPENERS[image_format](handle, filename)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"image too large: {_one_line(exc)}") from exc
    except Exception as exc:  # plugins raise SyntaxError, struct.error, ValueError, OSError, ...
        raise ImageDecodeError(name, f"corrupt {image_format} header ({_one_line(exc)})") from exc
    return _decode_opened(image, image_format, max_pixels, name)


def _decode_opened(image: Image.Image, image_format: str, max_pixels: int, name: str,
                   written_as: str | None = None) -> DecodedImage:
    """The pixels of an opened image (``image_format``: what it is; ``written_as``: the format it is written in,
    when not its own)."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"image too large: {width}x{height} pixels exceeds the {max_pixels}-pixel limit (decompression bomb?)",
        )
    # a JPEG's extra MPO pictures are previews, an icon's other sizes are the same picture: dropping them is wanted
    if image_format in ("TIFF", "WEBP") or (written_as is not None and image_format not in ("MPO", "ICO", "ICNS")):
        try:
            frames = getattr(image, "n_frames", 1)
        except Exception as exc:
            raise ImageDecodeError(name, f"corrupt {image_format} structure ({_one_line(exc)})") from exc
        if frames > 1:
            raise ImageDecodeError(name, f"multi-frame {image_format} ({frames} frames) is not supported")

    mode = image.mode
    icc_profile = image.info.get("icc_profile") or None
    note = _sixteen_bit_colour_note(image, image_format)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"image too large: {_one_line(exc)}") from exc
    except MemoryError as exc:
        raise ImageDecodeError(name, f"not enough memory to decode a {width}x{height} image") from exc
    except Exception as exc:
        message = _one_line(exc)
        if isinstance(exc, EOFError) or "truncated" in message.lower():
            raise ImageDecodeError(name, f"truncated {image_format}") from exc
        raise ImageDecodeError(name, f"corrupt {image_format} data ({message})") from exc

    try:
        upright = _apply_exif_orientation(image)
        rgb, alpha, icc_profile, conversion = _to_rgb_and_alpha(upright, icc_profile, _wide_gray_depth(image, image_format))
        note = note or conversion
        written = written_as or image_format
        gray16 = np.array(upright, dtype=np.uint16) if upright.mode in _SIXTEEN_BIT_MODES and written in ("PNG", "TIFF") else None
    except MemoryError as exc:
        raise ImageDecodeError(name, f"not enough memory to convert a {width}x{height} image") from exc
    except Exception as exc:
        raise ImageDecodeError(name, f"cannot convert {mode} pixels to RGB ({_one_line(exc)})") from exc
    return DecodedImage(
        rgb=_writable(rgb),
        alpha=None if alpha is None else _writable(alpha),
        format=written_as or image_format,
        mode=mode,
        icc_profile=icc_profile,
        gray16=gray16,
        note=note,
    )


def _sixteen_bit_colour_note(image: Image.Image, image_format: str) -> str | None:
    """Pillow reads 16-bit-per-channel colour as 8 bits; say so, since the output is then 8-bit too."""
    depth = 0
    if image_format == "PNG" and image.mode in ("RGB", "RGBA"):
        depth = 16 if image.fp is not None and _png_bit_depth(image) == 16 else 8
    elif image_format == "TIFF" and image.mode in ("RGB", "RGBA", "CMYK"):
        bits = image.tag_v2.get(258) if hasattr(image, "tag_v2") else None
        depth = max(bits) if isinstance(bits, tuple) and bits else (bits if isinstance(bits, int) else 8)
    if depth > 8:
        return f"{depth}-bit colour read and written as 8-bit colour"
    return None


def _wide_gray_depth(image: Image.Image, image_format: str) -> int | None:
    """Bits per sample of 32-bit float gray (any format) and of integer gray that Pillow reads as mode ``I``
    from a TIFF (32-bit, or signed 16-bit); None for anything else."""
    if image.mode == "F":
        return _tiff_bits(image) or 32
    if image.mode == "I" and image_format == "TIFF":
        return _tiff_bits(image) or 32
    return None


def _tiff_bits(image: Image.Image) -> int | None:
    bits = image.tag_v2.get(258) if hasattr(image, "tag_v2") else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) else None


def _png_bit_depth(image: Image.Image) -> int:
    position = image.fp.tell()
    try:
        image.fp.seek(24)
        return image.fp.read(1)[0]
    except (OSError, IndexError):
        return 8
    finally:
        image.fp.seek(position)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation says; an unreadable EXIF block means no rotation."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:
        return image
    return upright if upright is not None else image


def _to_rgb_and_alpha(image: Image.Image, icc_profile: bytes | None, wide_depth: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None, bytes | None, str | None]:
    """8-bit RGB (+ alpha) pixels, the ICC profile that still describes them (or None), and the note of a
    conversion the output cannot undo (32-bit gray to 8-bit; ``wide_depth``: see :func:`_wide_gray_depth`)."""
    mode = image.mode
    has_transparency_info = image.info.get("transparency") is not None
    gray_profile = icc_profile if _icc_colour_space(icc_profile) == b"GRAY" else None
    rgb_profile = icc_profile if _icc_colour_space(icc_profile) == b"RGB " else None

    if wide_depth is not None and mode in ("I", "F"):
        gray, note = _thirty_two_bit_gray_to_uint8(np.asarray(image), mode, wide_depth)
        return _gray_to_rgb(gray), None, gray_profile, note
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = _wide_gray_to_uint8(np.asarray(image), mode)
        return _gray_to_rgb(gray), None, gray_profile, None
    if mode in ("1", "L", "LA", "La"):
        if mode in ("LA", "La") or has_transparency_info:
            rgba = np.asarray(image.convert("RGBA"))
            return _gray_to_rgb(rgba[..., 0]), np.ascontiguousarray(rgba[..., 3]), gray_profile, None
        return _gray_to_rgb(np.asarray(image.convert("L"))), None, gray_profile, None
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(image, icc_profile)), None, None, None
    if mode in ("HSV", "LAB"):  # Pillow's conversions from these to RGB are not colorimetric
        raise ValueError("unsupported pixel mode")
    if mode in _ALPHA_MODES or has_transparency_info:
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), rgb_profile, None
    return np.asarray(image.convert("RGB")), None, rgb_profile, None


def _writable(pixels: np.ndarray) -> np.ndarray:
    """Arrays over Pillow buffers are read-only; callers paint faces in place, so own the memory."""
    if pixels.flags.writeable and pixels.flags.c_contiguous:
        return pixels
    return np.array(pixels, order="C")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _wide_gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit (or 32-bit / float) gray to 8 bit over its full range, never clip."""
    if mode in _SIXTEEN_BIT_MODES:
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "I":
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 65535:  # 16-bit data held in a 32-bit image (older PNG/TIFF paths)
            return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)
        return _stretch_to_uint8(values.astype(np.float64), low, high)
    finite = values.astype(np.float64)
    finite = np.nan_to_num(finite, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        return np.round(finite * 255.0).astype(np.uint8)
    return _stretch_to_uint8(finite, low, high)


def _thirty_two_bit_gray_to_uint8(values: np.ndarray, mode: str, depth: int) -> tuple[np.ndarray, str]:
    """32-bit integer (or signed 16-bit) and float gray to 8 bits, by an explicit rule the note states:

    * integers already in 0..255 are kept as they are (a constant 100 stays 100, never stretched to black);
    * floats in 0..1 are scaled by 255 (the usual convention for float images);
    * anything else is stretched over the image's own range, min -> 0 and max -> 255;
    * a constant image outside those ranges has no range to stretch: its value is clipped into 0..255.

    NaN and infinite floats are read as 0 (and the note says so).
    """
    kind = "float" if mode == "F" else "integer"
    prefix = f"{depth}-bit {kind} gray written as 8-bit: "
    numbers = values.astype(np.float64)
    finite = np.isfinite(numbers)
    suffix = "" if finite.all() else "; NaN and infinite values read as 0"
    numbers = np.where(finite, numbers, 0.0)
    low, high = float(numbers.min()), float(numbers.max())
    show = (lambda value: str(int(value))) if mode == "I" else (lambda value: f"{value:g}")
    if mode == "I" and low >= 0 and high <= 255:
        return numbers.astype(np.uint8), prefix + "values in 0..255 kept" + suffix
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return np.round(numbers * 255.0).astype(np.uint8), prefix + "0..1 scaled to 0..255" + suffix
    if high <= low:
        clipped = int(np.clip(np.round(low), 0, 255))
        return np.full(numbers.shape, clipped, np.uint8), prefix + f"constant {show(low)} clipped to {clipped}" + suffix
    return _stretch_to_uint8(numbers, low, high), prefix + f"range {show(low)}..{show(high)} stretched to 0..255" + suffix


def _stretch_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Colour-managed through the embedded CMYK profile when there is one, else Pillow's formula."""
    if _icc_colour_space(icc_profile) == b"CMYK":
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # a broken or unusual profile: fall back to the plain conversion
            pass
    return image.convert("RGB")


def _icc_colour_space(icc_profile: bytes | None) -> bytes | None:
    """The data colour space field of an ICC header (b"RGB ", b"GRAY", b"CMYK", ...)."""
    if not icc_profile or len(icc_profile) < 20:
        return None
    return bytes(icc_profile[16:20])


def _webp_is_lossless(handle: BinaryIO) -> bool:
    """True when the WebP bitstream is VP8L (lossless) and there is no lossy VP8 chunk."""
    try:
        handle.seek(12)
        lossless = False
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return lossless
            fourcc, size = header[:4], int.from_bytes(header[4:], "little")
            if fourcc == b"VP8 ":
                return False
            if fourcc == b"VP8L":
                lossless = True
            handle.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return False


def _describe_gif(handle: BinaryIO) -> str:
    """GIF is not written back (palette, animation): one line, with the frame count when animated."""
    try:
        from PIL import GifImagePlugin

        handle.seek(0)
        frames = GifImagePlugin.GifImageFile(handle).n_frames
    except Exception:  # noqa: BLE001 - a broken GIF is still just an unsupported GIF
        frames = 1
    if frames > 1:
        return f"multi-frame GIF ({frames} frames) is not supported"
    return "unsupported image format (GIF)"


def _describe_non_image(head: bytes) -> str:
    known = _known_other_format(head)
    if known is not None:
        return f"unsupported image format ({_PLUGIN_HINTS.get(known, known)})"
    if _looks_like_text(head):
        return "not an image (text file)"
    return "not an image (unrecognised content)"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return head.startswith((b"\xff\xfe", b"\xfe\xff"))  # UTF-16 with a byte-order mark
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    controls = sum(1 for char in text if ord(char) < 32 and char not in "\t\n\r\f")
    return controls <= len(text) // 100


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
