"""List the metadata an image file carries, by reading its container structure directly.

Used to prove that written images carry nothing but their ICC profile's colour data, and by the audit
to detect leaks (the ICC profile itself is read for text, vendor-private tags and hidden bytes:
:func:`anonymize.io.icc.profile_findings`). It reads the JPEG segments, PNG chunks, WebP RIFF chunks and TIFF tags itself (Pillow only
parses the EXIF block), so it also sees what Pillow would ignore: unknown segments, comments, text
chunks, and bytes appended after the end of the image. It never raises for a bad file; whatever it
could not read is listed under ``"errors"``.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

from PIL import ExifTags, Image, TiffImagePlugin

from anonymize.io.icc import profile_findings
from anonymize.io.walk import sniff_format_of_bytes

_MAX_SCAN_BYTES = 512 << 20
_MAX_TEXT_VALUE = 200
_MAX_ICC_BYTES = 16 << 20  # an inflated PNG iCCP profile is read up to this size
_XMP_SIGNATURES = (b"<x:xmpmeta", b"http://ns.adobe.com/xap/1.0/")

_EXIF_POINTER_TAGS = {0x8769, 0x8825, 0xA005}  # Exif IFD, GPS IFD, interoperability IFD
# Tags that only describe how the pixels are stored: a TIFF cannot do without them.
_TIFF_STRUCTURE_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 282, 283, 284, 296, 317, 320, 322, 323, 324, 325, 338, 339}
)
_TIFF_XMP, _TIFF_IPTC, _TIFF_PHOTOSHOP, _TIFF_ICC = 700, 33723, 34377, 34675
# JPEG segments and PNG/WebP chunks that are part of the image structure, not metadata.
_PNG_STRUCTURE_CHUNKS = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD", b"pHYs", b"cICP"}
)
_WEBP_STRUCTURE_CHUNKS = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})


def metadata_of(path: Path) -> dict[str, object]:
    """What metadata ``path`` carries.

    Keys: ``format``; ``exif`` (tag name -> value, IFD0 + Exif IFD + GPS IFD; for TIFF only the
    tags beyond the image structure); ``gps`` (the GPS tags alone); ``xmp``, ``iptc``,
    ``photoshop`` and ``icc`` (bools); ``icc_text`` (what the ICC profile holds beyond colour data and
    standard short texts: descriptive text, vendor-private tags, hidden bytes; :mod:`anonymize.io.icc`);
    ``png_text`` (keyword -> text); ``jpeg_comments``;
    ``other`` (unknown segments/chunks); ``trailing_bytes`` (data after the end of the image);
    ``errors`` (what could not be read).
    """
    result: dict[str, object] = {
        "format": None,
        "exif": {},
        "gps": {},
        "xmp": False,
        "iptc": False,
        "photoshop": False,
        "icc": False,
        "icc_text": [],
        "png_text": {},
        "jpeg_comments": [],
        "other": [],
        "trailing_bytes": 0,
        "errors": [],
    }
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_SCAN_BYTES + 1)
    except OSError as exc:
        _note_error(result, f"cannot read file ({exc.strerror or exc})")
        return result
    if len(data) > _MAX_SCAN_BYTES:
        _note_error(result, f"only the first {_MAX_SCAN_BYTES} bytes were scanned")
        data = data[:_MAX_SCAN_BYTES]

    image_format = sniff_format_of_bytes(data[:32])
    result["format"] = image_format
    readers = {"JPEG": _read_jpeg, "PNG": _read_png, "WEBP": _read_webp, "TIFF": _read_tiff}
    reader = readers.get(image_format or "")
    if reader is not None:
        try:
            reader(data, result)
        except Exception as exc:  # a malformed container: keep what was found so far
            _note_error(result, f"malformed {image_format} structure ({_one_line(exc)})")
    chunks = sorted(result.pop("_icc_chunks", []))  # type: ignore[call-overload]
    if chunks:
        result["icc_text"] = profile_findings(b"".join(chunk for _, _, chunk in chunks))
    if any(signature in data for signature in _XMP_SIGNATURES):
        result["xmp"] = True
    return result


def metadata_beyond_icc(metadata: dict[str, object]) -> list[str]:
    """The kinds of metadata present other than the ICC profile (empty for a clean file)."""
    kinds = [
        kind
        for kind in ("exif", "gps", "xmp", "iptc", "photoshop", "icc_text", "png_text", "jpeg_comments", "other",
                     "trailing_bytes")
        if metadata.get(kind)
    ]
    return kinds


# --- JPEG ---------------------------------------------------------------------------------------


def _read_jpeg(data: bytes, result: dict[str, object]) -> None:
    exif_read = False
    position = 2
    end = len(data)
    while position + 1 < end:
        if data[position] != 0xFF:
            raise ValueError(f"expected a marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # EOI
            result["trailing_bytes"] = end - (position + 2)
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        payload = data[position + 4 : position + 2 + length]
        position += 2 + length
        if marker == 0xFE:
            _as_list(result, "jpeg_comments").append(_short_text(payload))
        elif 0xE0 <= marker <= 0xEF:
            exif_read = _read_jpeg_app(marker - 0xE0, payload, result, exif_read)
        if marker == 0xDA:  # start of scan: skip the entropy-coded data up to the next marker
            position = _end_of_entropy_data(data, position)
    _note_error(result, "no end-of-image marker (truncated JPEG?)")


def _read_jpeg_app(number: int, payload: bytes, result: dict[str, object], exif_read: bool) -> bool:
    if number == 1 and payload.startswith(b"Exif\x00\x00"):
        if not exif_read:
            _read_exif(payload, result, skip_structure=False)
        return True
    if number == 1 and payload.startswith(b"http://ns.adobe.com/"):
        result["xmp"] = True
    elif number == 2 and payload.startswith(b"ICC_PROFILE\x00"):
        result["icc"] = True
        _icc_chunk(result, payload[12] if len(payload) > 12 else 0, payload[14:])
    elif number == 13 and payload.startswith(b"Photoshop 3.0\x00"):
        result["photoshop"] = True
        if b"8BIM\x04\x04" in payload:
            result["iptc"] = True
    elif not ((number == 0 and payload.startswith((b"JFIF\x00", b"JFXX\x00"))) or (number == 14 and payload.startswith(b"Adobe"))):
        identifier = payload[:16].split(b"\x00", 1)[0].decode("latin-1", "replace")
        _as_list(result, "other").append(f"JPEG APP{number} ({identifier})" if identifier else f"JPEG APP{number}")
    return exif_read


def _end_of_entropy_data(data: bytes, position: int) -> int:
    while True:
        found = data.find(b"\xff", position)
        if found < 0 or found + 1 >= len(data):
            return len(data)
        follower = data[found + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
            position = found + 1
            continue
        return found


# --- PNG ----------------------------------------------------------------------------------------


def _read_png(data: bytes, result: dict[str, object]) -> None:
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IEND":
            result["trailing_bytes"] = max(0, len(data) - position)
            return
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _png_text(kind, payload)
            _as_dict(result, "png_text")[keyword] = text
            if keyword == "XML:com.adobe.xmp":
                result["xmp"] = True
            if keyword.lower() in ("raw profile type iptc", "raw profile type 8bim"):
                result["iptc"] = True
        elif kind == b"eXIf":
            _read_exif(payload, result, skip_structure=False)
        elif kind == b"iCCP":
            result["icc"] = True
            _icc_chunk(result, 0, _inflate(payload.partition(b"\x00")[2][1:], _MAX_ICC_BYTES))
        elif kind not in _PNG_STRUCTURE_CHUNKS:
            _as_list(result, "other").append(f"PNG {kind.decode('latin-1')}")
    _note_error(result, "no IEND chunk (truncated PNG?)")


def _png_text(kind: bytes, payload: bytes) -> tuple[str, str]:
    keyword, _, rest = payload.partition(b"\x00")
    name = keyword.decode("latin-1", "replace")
    if kind == b"tEXt":
        return name, _short_text(rest)
    if kind == b"zTXt":
        return name, _short_text(_inflate(rest[1:]))
    compressed, rest = rest[:1] == b"\x01", rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return name, _short_text(_inflate(text) if compressed else text)


def _inflate(compressed: bytes, limit: int = 4096) -> bytes:
    try:
        return zlib.decompressobj().decompress(compressed, limit)
    except zlib.error:
        return b"<undecodable compressed text>"


# --- WebP ---------------------------------------------------------------------------------------


def _read_webp(data: bytes, result: dict[str, object]) -> None:
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    position = 12
    while position + 8 <= min(riff_end, len(data)):
        kind = data[position : position + 4]
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        payload = data[position + 8 : position + 8 + size]
        position += 8 + size + (size & 1)
        if kind == b"EXIF":
            _read_exif(payload, result, skip_structure=False)
        elif kind == b"XMP ":
            result["xmp"] = True
        elif kind == b"ICCP":
            result["icc"] = True
            _icc_chunk(result, 0, payload)
        elif kind not in _WEBP_STRUCTURE_CHUNKS:
            _as_list(result, "other").append(f"WEBP {kind.decode('latin-1')}")
    result["trailing_bytes"] = max(0, len(data) - riff_end)


# --- TIFF ---------------------------------------------------------------------------------------


def _read_tiff(data: bytes, result: dict[str, object]) -> None:
    # The plugin class reads the header and first IFD only; no pixel is decoded, no size limit hit.
    image = TiffImagePlugin.TiffImageFile(io.BytesIO(data))
    tags = image.tag_v2
    result["icc"] = _TIFF_ICC in tags
    if _TIFF_ICC in tags:
        _icc_chunk(result, 0, _as_bytes(tags[_TIFF_ICC]))
    result["xmp"] = _TIFF_XMP in tags
    result["photoshop"] = _TIFF_PHOTOSHOP in tags
    result["iptc"] = _TIFF_IPTC in tags or b"8BIM\x04\x04" in _as_bytes(tags.get(_TIFF_PHOTOSHOP))
    _read_exif_object(image.getexif(), result, skip_structure=True)


# --- EXIF ---------------------------------------------------------------------------------------


def _read_exif(payload: bytes, result: dict[str, object], *, skip_structure: bool) -> None:
    exif = Image.Exif()
    try:
        exif.load(payload)
    except Exception as exc:
        _note_error(result, f"unreadable EXIF block ({_one_line(exc)})")
        _as_dict(result, "exif")["<unreadable EXIF block>"] = f"<{len(payload)} bytes>"
        return
    if not exif and payload.strip(b"\x00"):
        _as_dict(result, "exif")["<EXIF block without tags>"] = f"<{len(payload)} bytes>"
    _read_exif_object(exif, result, skip_structure=skip_structure)


def _read_exif_object(exif: Image.Exif, result: dict[str, object], *, skip_structure: bool) -> None:
    found = _as_dict(result, "exif")
    for tag, value in exif.items():
        if tag in _EXIF_POINTER_TAGS:
            continue
        if skip_structure and tag in (_TIFF_STRUCTURE_TAGS | {_TIFF_ICC, _TIFF_XMP, _TIFF_IPTC, _TIFF_PHOTOSHOP}):
            continue
        found[ExifTags.TAGS.get(tag, f"Tag{tag:#06x}")] = _plain(value)
    for pointer, names in ((0x8769, ExifTags.TAGS), (0x8825, ExifTags.GPSTAGS)):
        if pointer not in exif:
            continue
        try:
            sub_ifd = exif.get_ifd(pointer)
        except Exception as exc:
            _note_error(result, f"unreadable EXIF sub-IFD {pointer:#06x} ({_one_line(exc)})")
            found[f"<unreadable IFD {pointer:#06x}>"] = True
            continue
        if pointer == 0x8825:
            found["GPSInfo"] = True
        for tag, value in sub_ifd.items():
            name = names.get(tag, f"Tag{tag:#06x}")
            found[name] = _plain(value)
            if pointer == 0x8825:
                _as_dict(result, "gps")[name] = _plain(value)


# --- helpers ------------------------------------------------------------------------------------


def _plain(value: object) -> object:
    """A JSON-friendly, printable version of an EXIF value."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value.rstrip("\x00")[:_MAX_TEXT_VALUE]
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value[:16]]
    try:
        return float(value)  # IFDRational and friends
    except (TypeError, ValueError, ZeroDivisionError):
        return str(value)[:_MAX_TEXT_VALUE]


def _icc_chunk(result: dict[str, object], sequence: int, data: bytes) -> None:
    """One piece of the ICC profile (JPEG splits it over APP2 segments, numbered): joined in order at the end."""
    chunks = result.setdefault("_icc_chunks", [])
    assert isinstance(chunks, list)
    chunks.append((sequence, len(chunks), data))


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, tuple) and all(isinstance(item, int) for item in value):
        return bytes(item & 0xFF for item in value)
    return b""


def _short_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\x00")
    return text if len(text) <= _MAX_TEXT_VALUE else text[: _MAX_TEXT_VALUE - 3] + "..."


def _as_list(result: dict[str, object], key: str) -> list:
    value = result[key]
    assert isinstance(value, list)
    return value


def _as_dict(result: dict[str, object], key: str) -> dict:
    value = result[key]
    assert isinstance(value, dict)
    return value


def _note_error(result: dict[str, object], message: str) -> None:
    _as_list(result, "errors").append(message)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
