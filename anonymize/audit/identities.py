"""Identity labels from a file (``--identities FILE``), for originals not laid out as one folder per person.

One line per original: its path relative to the original folder, a comma (or a tab), its identity.
Blank lines and lines starting with ``#`` are skipped; a first line ``path,identity`` is a header.
Originals the file does not name stay unlabelled (they count as their own person).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anonymize.audit.pairing import AuditError


def read_identities(path: Path, sources: Sequence[str]) -> dict[str, str]:
    """Source path -> identity for the given sources; a clear one-line error for a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the identities file ({exc})") from None
    labels: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        separator = "\t" if "\t" in line else ","
        parts = [part.strip() for part in line.rsplit(separator, 1)]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise AuditError(f"{path}:{number}: expected '<path>,<identity>', got {line!r}")
        if number == 1 and parts == ["path", "identity"]:
            continue
        if parts[0] in labels and labels[parts[0]] != parts[1]:
            raise AuditError(f"{path}:{number}: {parts[0]} is given two identities ({labels[parts[0]]!r} and {parts[1]!r})")
        labels[parts[0]] = parts[1]
    known = {source: labels[source] for source in sources if source in labels}
    if not known:
        raise AuditError(f"{path}: names none of the {len(sources)} originals (paths must be relative to the original folder)")
    return known
