"""The audit detector's findings on each original, kept by content hash so a re-audit does not redo them.

Finding the faces of an original (the recall-first ensemble, then a close-up for each face only one
detector saw) was a third of the audit's time on the portraits, and after a re-run of
``anonymize run`` the originals have not changed. Each original's detections and close-up verdicts
are stored in ``<audit folder>/cache/originals/<sha256 of the file's bytes>-<fingerprint>.json``;
the fingerprint hashes everything the findings depend on: the detector (every member's name,
threshold, minimum face and weights' sha256), the decoder's pixel cap, the package version and this
file's format. A changed original, detector, weight file or version misses the cache and is
detected afresh, so a cached finding is always the one the detector would make again: the audit
detector stays independent of the run, and no privacy check is weakened. Floats are stored as
JSON numbers, which read back bit for bit, so figures from a re-audit equal a first audit's.

The cache lies with the audit's own files (never inside the original or anonymized folder); like
them it is the auditor's, not the release's. An unreadable entry is ignored and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anonymize import __version__
from anonymize.audit.faces import Box, CloseUpCheck, confirmed_on_close_up
from anonymize.faces.detect import Detector
from anonymize.faces.types import Face

CACHE_FORMAT = 1
CACHE_FOLDER = Path("cache") / "originals"


def detector_fingerprint(detector: Detector, max_pixels: int) -> str:
    """sha256 of what an original's findings depend on besides its bytes (see the module doc)."""
    members = list(getattr(detector, "members", None) or [detector])

    def described(one: Any) -> dict[str, Any]:
        return {"name": getattr(one, "name", type(one).__name__), "class": f"{type(one).__module__}.{type(one).__qualname__}",
                "threshold": getattr(one, "threshold", None), "min_face": getattr(one, "min_face", None),
                "weights": one.weights_used() if hasattr(one, "weights_used") else None}

    identity = {"format": CACHE_FORMAT, "version": __version__, "max_pixels": max_pixels, "detector": described(detector),
                "members": [described(member) for member in members]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _face_json(face: Face) -> dict[str, Any]:
    landmarks = None if face.landmarks is None else {"dtype": str(face.landmarks.dtype), "shape": list(face.landmarks.shape),
                                                      "values": [float(v) for v in np.asarray(face.landmarks).ravel()]}
    return {"box": [float(v) for v in face.box], "score": float(face.score), "found_by": list(face.found_by), "landmarks": landmarks}


def _face_of(data: dict[str, Any]) -> Face:
    marks = data["landmarks"]
    landmarks = None if marks is None else np.array(marks["values"], dtype=marks["dtype"]).reshape(marks["shape"])
    return Face(tuple(float(v) for v in data["box"]), float(data["score"]), landmarks, tuple(data["found_by"]))


def close_up_key(box: Box, detectors: Sequence[str]) -> str:
    """One close-up check: the box (floats as JSON writes them, exactly) and the detectors asked, in order."""
    return json.dumps([[float(v) for v in box], list(detectors)])


class OriginalFindings:
    """One original's cached detections and close-up verdicts; :meth:`save` writes what was added."""

    def __init__(self, path: Path | None, detections: list[Face] | None, close_ups: dict[str, str | None]) -> None:
        self.path = path
        self.detections = detections
        self.close_ups = close_ups
        self.changed = False

    def remember_detections(self, faces: list[Face]) -> None:
        self.detections = list(faces)
        self.changed = True

    def remember_close_up(self, key: str, verdict: str | None) -> None:
        self.close_ups[key] = verdict
        self.changed = True

    def detect(self, detector: Detector, rgb: np.ndarray) -> list[Face]:
        """The audit detector's faces on this original: kept ones, else detected now and kept."""
        if self.detections is None:
            self.remember_detections(detector.detect(rgb))
        return list(self.detections or [])

    def close_up_check(self) -> CloseUpCheck:
        """:func:`~anonymize.audit.faces.confirmed_on_close_up`, answered from the kept verdicts where there is one."""

        def check(rgb: np.ndarray, box: Box, detectors: Sequence[Detector]) -> str | None:
            key = close_up_key(box, [detector.name for detector in detectors])
            if key not in self.close_ups:
                self.remember_close_up(key, confirmed_on_close_up(rgb, box, detectors))
            return self.close_ups[key]

        return check

    def save(self) -> None:
        """Write the entry atomically (a crashed audit leaves no half file) when anything was added."""
        if self.path is None or not self.changed or self.detections is None:
            return
        data = {"format": CACHE_FORMAT, "detections": [_face_json(face) for face in self.detections], "close_ups": self.close_ups}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(temporary, self.path)
        self.changed = False


class OriginalsCache:
    """Findings on originals by content hash, under ``folder`` (None: nothing kept, every lookup a miss)."""

    def __init__(self, folder: Path | None, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.hits = 0
        self.misses = 0
        self._count = threading.Lock()  # the audit's worker threads look up originals at once

    def findings(self, content_sha256: str) -> OriginalFindings:
        """The entry for an original with these bytes: what is cached, or an empty one to fill."""
        found = self._read(content_sha256)
        with self._count:
            if found.detections is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def _read(self, content_sha256: str) -> OriginalFindings:
        if self.folder is None:
            return OriginalFindings(None, None, {})
        path = self.folder / f"{content_sha256}-{self.fingerprint[:24]}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT:
                raise ValueError("other format")
            found = OriginalFindings(path, [_face_of(face) for face in data["detections"]], dict(data["close_ups"]))
        except (OSError, ValueError, KeyError, TypeError):
            return OriginalFindings(path, None, {})
        return found
