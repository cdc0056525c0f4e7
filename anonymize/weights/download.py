"""Resumable HTTP download into a ``.part`` file.

Weight tarballs are gigabytes on flaky links, so an interrupted download continues with an HTTP
Range request instead of starting over. A short socket timeout makes a machine without network
fail in seconds rather than hang; the caller turns the failure into a message saying which file
to put where.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from anonymize.weights.lock import WeightsError
from anonymize.weights.records import ProgressCallback

TIMEOUT_S = 15.0
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class DownloadError(WeightsError):
    """The network did not deliver the file; ``reason`` is short enough to embed in a sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def download(
    url: str,
    part: Path,
    *,
    expected_size: int | None = None,
    timeout: float = TIMEOUT_S,
    progress: ProgressCallback | None = None,
    label: str = "download",
) -> None:
    """Complete ``part`` from ``url``, resuming from its current length when the server allows."""
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        offset = 0  # longer than the real file: not a prefix of it
    if expected_size is not None and offset == expected_size and offset > 0:
        return
    headers = {"User-Agent": "anonymize-weights"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            offset = _resume_offset(response, offset)
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else expected_size
            done = offset
            # Never through a link: a planted symlink at the .part path would redirect the download.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if offset else os.O_TRUNC)
            with os.fdopen(os.open(part, flags, 0o644), "wb") as handle:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(label, done, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the part file is already whole
            return
        raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(str(exc.reason)) from None
    except (TimeoutError, OSError) as exc:
        raise DownloadError(str(exc) or type(exc).__name__) from None
    if total is not None and done != total:
        raise DownloadError(f"the connection closed after {done} of {total} bytes (run fetch again to resume)")


def _resume_offset(response, offset: int) -> int:
    """Where the body starts: our offset for a matching 206 reply, else 0 (full body)."""
    if offset and response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset
        raise DownloadError(f"the server answered the resume request with an unexpected range {response.headers.get('Content-Range')!r}")
    return 0
