"""ICC colour profiles reduced to their colour data, and what text a profile carries.

An ICC profile is a 128-byte header, a tag table (signature, offset, size) and the tags' data. Beside
the colour data (primaries, white point, tone curves, look-up tables) it carries text: a description
(``desc``), a copyright (``cprt``), the device maker and model (``dmnd``, ``dmdd``), viewing conditions
(``vued``), and any vendor-private tag (Apple's ``mmod``, ``dscm``...). Any of them, or bytes appended
after the tags, can hold a name, a serial number or a message, so a profile is never copied byte for
byte into a release.

:func:`cleaned_profile` rebuilds a profile from its header (every field kept but the size and the
profile ID, recomputed) and its colour tags only, each copied at its own type's length; the description
becomes a well-known standard name when the source's is one (``sRGB IEC61966-2.1``, ``Display P3``...),
otherwise a neutral one, and the copyright a neutral line. Nothing else survives. Colour-managed
viewers read the same colours from it (checked by :mod:`anonymize.io.write` on every profile it
rebuilds, by converting a grid of colours through both profiles).

:func:`profile_findings` lists what a profile holds beyond that (the audit's metadata check).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

HEADER_SIZE = 128
_MAX_TAGS = 200
_MAX_SHOWN_TEXT = 60

# Tags that carry colour data only (ICC.1:2010 and ICC v2): kept. Their types hold numbers, never text.
COLOUR_TAGS = frozenset(
    tag.encode("ascii")
    for tag in (
        "A2B0", "A2B1", "A2B2", "A2B3", "B2A0", "B2A1", "B2A2", "B2A3", "D2B0", "D2B1", "D2B2", "D2B3",
        "B2D0", "B2D1", "B2D2", "B2D3", "rXYZ", "gXYZ", "bXYZ", "rTRC", "gTRC", "bTRC", "kTRC", "wtpt",
        "bkpt", "chad", "chrm", "lumi", "gamt", "pre0", "pre1", "pre2", "meas", "view", "tech", "cicp",
        "ciis", "rig0", "rig2",
    )
)  # fmt: skip
DESCRIPTION, COPYRIGHT = b"desc", b"cprt"
# Registered tags that describe rather than measure (text, dates, names of colorants or of profiles).
DESCRIPTIVE_TAGS = frozenset(
    tag.encode("ascii")
    for tag in ("desc", "cprt", "dmnd", "dmdd", "vued", "targ", "calt", "pseq", "psid", "meta", "clro", "clrt",
                "clot", "ncl2", "ncol", "resp", "devs", "scrd", "scrn", "bfd ", "ptcn", "crdi", "ps2s", "ps2i")
)  # fmt: skip
TEXT_TYPES = frozenset({b"desc", b"text", b"mluc", b"utf8", b"utf1", b"zut8", b"dict"})

# Descriptions of well-known standard profiles: a profile whose description is one keeps it.
STANDARD_DESCRIPTIONS = (
    "sRGB IEC61966-2.1", "sRGB IEC61966-2-1 black scaled", "sRGB", "sRGB built-in", "sRGB v4 ICC preference perceptual intent beta",
    "Display P3", "Display", "DCI-P3", "P3 D65", "Adobe RGB (1998)", "ProPhoto RGB", "ROMM RGB", "Apple RGB",
    "ColorMatch RGB", "Wide Gamut RGB", "ITU-R BT.709", "Rec. 709", "Rec. ITU-R BT.2020-1", "Rec. 2020", "BT.2020",
    "Generic RGB Profile", "Generic Gray Profile", "Generic Gray Gamma 2.2 Profile", "Gray Gamma 2.2", "Gray Gamma 1.8",
    "Dot Gain 10%", "Dot Gain 15%", "Dot Gain 20%", "Dot Gain 25%", "Dot Gain 30%", "Linear RGB", "Linear Gray",
    "scRGB", "c2", "c2ci", "Camera RGB Profile",
)  # fmt: skip
# Other texts standard profiles carry (the sRGB profile of HP and Microsoft, the ICC's own, Pillow's built-in).
STANDARD_TEXTS = (
    "IEC http://www.iec.ch", "IEC 61966-2.1 Default RGB colour space - sRGB", "Reference Viewing Condition in IEC61966-2.1",
    "Copyright (c) 1998 Hewlett-Packard Company", "No copyright, use freely", "Copyright International Color Consortium",
    "Public Domain", "CC0",
)  # fmt: skip
NEUTRAL_COPYRIGHT = "No copyright, use freely"


def neutral_description(colour_space: bytes) -> str:
    """The description a rebuilt profile gets when its source's was not a standard one."""
    return f"{colour_space.decode('latin-1').strip() or 'colour'} profile"


class IccError(ValueError):
    """A profile that cannot be read as an ICC profile."""


@dataclass(frozen=True)
class Tag:
    signature: bytes
    offset: int
    size: int


@dataclass(frozen=True)
class Profile:
    data: bytes  # the profile's bytes, up to its declared size
    header: bytes
    tags: tuple[Tag, ...]
    trailing: int  # bytes after the declared size

    @property
    def version(self) -> int:
        return self.header[8]

    @property
    def colour_space(self) -> bytes:
        return self.header[16:20]

    def tag_data(self, tag: Tag) -> bytes:
        return self.data[tag.offset : tag.offset + tag.size]

    def tag(self, signature: bytes) -> Tag | None:
        return next((tag for tag in self.tags if tag.signature == signature), None)


def parse(profile: bytes) -> Profile:
    """The header and tag table of ``profile``, every tag checked to lie inside the profile."""
    if len(profile) < HEADER_SIZE + 4:
        raise IccError(f"{len(profile)} bytes: shorter than an ICC header")
    declared = struct.unpack(">I", profile[:4])[0]
    if profile[36:40] != b"acsp":
        raise IccError("no 'acsp' signature in the header")
    if not HEADER_SIZE + 4 <= declared <= len(profile):
        raise IccError(f"declared size {declared} does not fit the {len(profile)} bytes")
    data = profile[:declared]
    count = struct.unpack(">I", data[HEADER_SIZE : HEADER_SIZE + 4])[0]
    if count > _MAX_TAGS or HEADER_SIZE + 4 + 12 * count > declared:
        raise IccError(f"tag table of {count} tags does not fit")
    tags = []
    for index in range(count):
        start = HEADER_SIZE + 4 + 12 * index
        signature, offset, size = struct.unpack(">4sII", data[start : start + 12])
        if size < 8 or offset < HEADER_SIZE + 4 + 12 * count or offset + size > declared:
            raise IccError(f"tag {signature!r} at {offset}+{size} lies outside the profile")
        tags.append(Tag(signature, offset, size))
    return Profile(data, data[:HEADER_SIZE], tuple(tags), len(profile) - declared)


# --- text ----------------------------------------------------------------------------------------


def tag_texts(profile: Profile, tag: Tag) -> list[str]:
    """Every piece of text a tag's data holds (all the parts of a ``desc``, every ``mluc`` record)."""
    data = profile.tag_data(tag)
    kind = data[:4]
    try:
        if kind == b"desc":
            return _desc_texts(data)
        if kind == b"text":
            return [_clean(data[8:].decode("latin-1"))]
        if kind == b"mluc":
            return _mluc_texts(data)
    except (struct.error, UnicodeDecodeError, IndexError):
        pass
    return [_clean(run.decode("latin-1")) for run in re.findall(rb"[\x20-\x7e]{4,}", data[8:])] + [
        _clean(run.decode("utf-16-be", "replace")) for run in re.findall(rb"(?:\x00[\x20-\x7e]){4,}", data[8:])
    ]


def _desc_texts(data: bytes) -> list[str]:
    texts = []
    ascii_count = struct.unpack(">I", data[8:12])[0]
    position = 12 + ascii_count
    texts.append(_clean(data[12:position].decode("latin-1")))
    if position + 8 <= len(data):
        unicode_count = struct.unpack(">I", data[position + 4 : position + 8])[0]
        start = position + 8
        texts.append(_clean(data[start : start + 2 * unicode_count].decode("utf-16-be", "replace")))
        position = start + 2 * unicode_count
        if position + 3 <= len(data):
            mac_count = data[position + 2]
            texts.append(_clean(data[position + 3 : position + 3 + min(mac_count, 67)].decode("latin-1")))
            # whatever follows the counted text in the 67-byte Macintosh field is not text a reader shows
            texts.append(_clean(data[position + 3 + min(mac_count, 67) : position + 70].decode("latin-1")))
    return [text for text in texts if text]


def _mluc_texts(data: bytes) -> list[str]:
    count, record_size = struct.unpack(">II", data[8:16])
    texts = []
    for index in range(min(count, 500)):
        start = 16 + index * record_size
        length, offset = struct.unpack(">II", data[start + 4 : start + 12])
        texts.append(_clean(data[offset : offset + length].decode("utf-16-be", "replace")))
    return [text for text in texts if text]


def _clean(text: str) -> str:
    return text.replace("\x00", "").replace("\ufeff", "").strip()


def _is_standard(text: str, choices: tuple[str, ...]) -> bool:
    folded = text.casefold()
    return any(folded == choice.casefold() for choice in choices)


def description_of(profile: Profile) -> str | None:
    tag = profile.tag(DESCRIPTION)
    if tag is None:
        return None
    texts = tag_texts(profile, tag)
    return texts[0] if texts else None


# --- rebuilding ----------------------------------------------------------------------------------


def cleaned_profile(source: bytes) -> bytes:
    """``source`` with its colour tags only, a standard or neutral description and a neutral copyright
    (see the module docstring); ``source`` itself when that is all it holds already (a profile this
    function wrote, Pillow's built-in sRGB). Raises IccError when ``source`` is not a readable profile."""
    profile = parse(source)
    if _holds_colour_data_only(profile):
        return source
    kept: list[tuple[bytes, bytes]] = []
    for tag in profile.tags:
        if tag.signature not in COLOUR_TAGS:
            continue
        data = _trimmed(profile.tag_data(tag))
        if data[:4] in TEXT_TYPES:
            continue
        kept.append((tag.signature, data))
    description = description_of(profile)
    if description is None or not _is_standard(description, STANDARD_DESCRIPTIONS):
        description = neutral_description(profile.colour_space)
    else:
        description = next(choice for choice in STANDARD_DESCRIPTIONS if choice.casefold() == description.casefold())
    text = _text_tag if profile.version < 4 else _mluc_tag
    kept += [(DESCRIPTION, _desc_tag(description) if profile.version < 4 else _mluc_tag(description)),
             (COPYRIGHT, text(NEUTRAL_COPYRIGHT))]
    return _serialise(profile.header, kept)


def _holds_colour_data_only(profile: Profile) -> bool:
    """Nothing to clear: colour tags without slack, a standard description, a standard copyright, no hidden bytes."""
    for tag in profile.tags:
        data = profile.tag_data(tag)
        if tag.signature in COLOUR_TAGS:
            if data[:4] in TEXT_TYPES or _trimmed(data) != data:
                return False
        elif tag.signature == DESCRIPTION:
            if not all(_is_standard(text, STANDARD_DESCRIPTIONS) for text in tag_texts(profile, tag)):
                return False
        elif tag.signature == COPYRIGHT:
            if not all(_is_standard(text, (NEUTRAL_COPYRIGHT,)) for text in tag_texts(profile, tag)):
                return False
        else:
            return False
    return not profile.trailing and not _bytes_outside_tags(profile)


def _trimmed(data: bytes) -> bytes:
    """A tag's data cut to its type's own length where that is simple to know (anything after it is not read)."""
    kind = data[:4]
    if kind == b"XYZ ":
        return data[: 8 + 12 * ((len(data) - 8) // 12)]
    if kind == b"sf32":
        return data[: 8 + 4 * ((len(data) - 8) // 4)]
    if kind == b"curv" and len(data) >= 12:
        return data[: 12 + 2 * struct.unpack(">I", data[8:12])[0]]
    if kind == b"para" and len(data) >= 12:
        parameters = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}.get(struct.unpack(">H", data[8:10])[0])
        return data[: 12 + 4 * parameters] if parameters is not None else data
    if kind == b"sig " and len(data) >= 12:
        return data[:12]
    return data


def _desc_tag(text: str) -> bytes:
    """ICC v2 textDescriptionType: the ASCII text, no Unicode or Macintosh text."""
    ascii_text = text.encode("ascii", "replace") + b"\x00"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(8) + bytes(3) + bytes(67)


def _text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii", "replace") + b"\x00"


def _mluc_tag(text: str) -> bytes:
    encoded = text.encode("utf-16-be")
    return b"mluc" + bytes(4) + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(encoded), 28) + encoded


def _serialise(header: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_end = HEADER_SIZE + 4 + 12 * len(tags)
    body = bytearray()
    placed: dict[bytes, int] = {}  # identical data (the three TRCs of most RGB profiles) is stored once
    table = bytearray(struct.pack(">I", len(tags)))
    for signature, data in tags:
        if data not in placed:
            placed[data] = table_end + len(body)
            body += data + bytes(-len(data) % 4)
        table += struct.pack(">4sII", signature, placed[data], len(data))
    size = table_end + len(body)
    new_header = bytearray(header)
    new_header[0:4] = struct.pack(">I", size)
    had_id = any(header[84:100])
    new_header[84:100] = bytes(16)
    profile = bytearray(new_header + table + body)
    if had_id:  # the profile ID is the MD5 of the profile with flags, rendering intent and ID zeroed
        hashed = bytearray(profile)
        hashed[44:48] = bytes(4)
        hashed[64:68] = bytes(4)
        profile[84:100] = hashlib.md5(bytes(hashed)).digest()
    return bytes(profile)


# --- inspection ----------------------------------------------------------------------------------


def profile_findings(source: bytes) -> list[str]:
    """What ``source`` holds beyond colour data and standard short texts, one short line each (empty: clean).

    A finding: text in a tag that is not a standard description or copyright; a tag that is neither colour
    data nor a registered descriptive tag (vendor-private: it can hold anything); bytes after the declared
    end or in the gaps between tags; a profile that cannot be read at all.
    """
    try:
        profile = parse(source)
    except IccError as exc:
        return [f"unreadable ICC profile ({exc})"]
    findings = []
    allowed = STANDARD_DESCRIPTIONS + STANDARD_TEXTS + (neutral_description(profile.colour_space),)
    for tag in profile.tags:
        name = tag.signature.decode("latin-1")
        data = profile.tag_data(tag)
        if data[:4] in TEXT_TYPES or tag.signature in DESCRIPTIVE_TAGS:
            for text in tag_texts(profile, tag):
                if not _is_standard(text, allowed):
                    shown = text if len(text) <= _MAX_SHOWN_TEXT else text[: _MAX_SHOWN_TEXT - 3] + "..."
                    findings.append(f"ICC {name} text {shown!r}")
        elif tag.signature not in COLOUR_TAGS:
            findings.append(f"ICC private tag {name!r} ({tag.size} bytes)")
    hidden = _bytes_outside_tags(profile)
    if hidden:
        findings.append(f"ICC {hidden} non-zero bytes outside its tags")
    if profile.trailing:
        findings.append(f"ICC {profile.trailing} bytes after its declared end")
    return list(dict.fromkeys(findings))


def _bytes_outside_tags(profile: Profile) -> int:
    covered = bytearray(len(profile.data))
    covered[: HEADER_SIZE + 4 + 12 * len(profile.tags)] = b"\x01" * (HEADER_SIZE + 4 + 12 * len(profile.tags))
    for tag in profile.tags:
        covered[tag.offset : tag.offset + tag.size] = b"\x01" * tag.size
    return sum(1 for byte, seen in zip(profile.data, covered) if not seen and byte)
