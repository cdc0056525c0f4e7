"""Metadata left in a released file: anything beyond the ICC colour profile is a leak.

EXIF names the camera, the time and often the photographer; GPS names the place; XMP, IPTC,
comments and PNG text chunks can hold captions naming the subject; bytes after the end of the
image can hold anything. The container is read directly (:mod:`anonymize.io.metadata`), so
segments Pillow ignores count too. An output copied byte for byte from its source (a no-face image
copied as is) is checked like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anonymize.audit.icc import describe_icc
from anonymize.io.metadata import metadata_beyond_icc, metadata_of

_SHOWN_EXIF_TAGS = 6
# Tags that name a person, a camera or a moment are listed first: they are what makes EXIF a leak.
_TELLING_EXIF_TAGS = (
    "Artist", "Copyright", "XPAuthor", "CameraOwnerName", "ImageDescription", "UserComment", "XPComment",
    "Make", "Model", "BodySerialNumber", "LensModel", "DateTimeOriginal", "DateTime", "Software",
)  # fmt: skip


@dataclass(frozen=True)
class MetadataFinding:
    kinds: tuple[str, ...]  # e.g. ("exif", "gps", "xmp"); empty for a clean file
    detail: str  # short human description of what was found
    unreadable: tuple[str, ...] = ()  # parts of the container that could not be parsed

    @property
    def leaks(self) -> bool:
        return bool(self.kinds)


def inspect_metadata(path: Path) -> MetadataFinding:
    """What metadata beyond the ICC profile ``path`` carries."""
    found = metadata_of(path)
    kinds = tuple(metadata_beyond_icc(found))
    return MetadataFinding(kinds, _describe(found, kinds), tuple(str(error) for error in found.get("errors", [])))


def _describe(found: dict[str, object], kinds: tuple[str, ...]) -> str:
    parts = []
    for kind in kinds:
        if kind == "exif":
            tags = sorted((str(tag) for tag in found["exif"]),  # type: ignore[union-attr]
                          key=lambda tag: _TELLING_EXIF_TAGS.index(tag) if tag in _TELLING_EXIF_TAGS else len(_TELLING_EXIF_TAGS))
            shown = ", ".join(tags[:_SHOWN_EXIF_TAGS]) + (", ..." if len(tags) > _SHOWN_EXIF_TAGS else "")
            parts.append(f"EXIF ({shown})")
        elif kind == "gps":
            parts.append("GPS position")
        elif kind == "png_text":
            parts.append("PNG text (" + ", ".join(str(key) for key in found["png_text"]) + ")")  # type: ignore[union-attr]
        elif kind == "jpeg_comments":
            parts.append(f"JPEG comment ({len(found['jpeg_comments'])})")  # type: ignore[arg-type]
        elif kind == "other":
            parts.append("other segments (" + ", ".join(str(item) for item in found["other"]) + ")")  # type: ignore[union-attr]
        elif kind == "trailing_bytes":
            parts.append(f"{found['trailing_bytes']} bytes after the image end")
        else:
            parts.append(describe_icc(found) if kind == "icc_text" else kind.upper())
    return "; ".join(parts)
