"""The audit's look inside ICC profiles: what a profile holds beyond colour data, in one short phrase.

The findings themselves come from :func:`anonymize.io.icc.profile_findings` (through
:func:`anonymize.io.metadata.metadata_of`, key ``icc_text``): text in a descriptive tag that is not a
standard short description or copyright, vendor-private tags, bytes hidden outside the tags. Any of
them makes the file a metadata leak (kind ``icc_text``), since a profile can carry a name or a message
as well as an EXIF block can; anonymize's own outputs carry the colour data only.
"""

from __future__ import annotations

_SHOWN_FINDINGS = 3


def describe_icc(found: dict[str, object]) -> str:
    """``ICC profile (desc text 'Jane Doe', private tag 'mmod' (40 bytes), ...)`` for the audit's detail."""
    findings = [str(item).removeprefix("ICC ") for item in found.get("icc_text") or []]  # type: ignore[union-attr]
    shown = ", ".join(findings[:_SHOWN_FINDINGS]) + (f", ... ({len(findings)} in all)" if len(findings) > _SHOWN_FINDINGS else "")
    return f"ICC profile ({shown})"
