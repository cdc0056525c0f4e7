"""The prepare stage (CPU): hash, resume check, decode, detect, align one image -> :class:`Prepared`.

It reads the run's :class:`~anonymize.run.config.Detection` and the few other settings it
uses; the detector is built lazily once per thread (detectors keep per-call state), and never
travels with the preparer to another process (each builds its own).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from anonymize.faces.align import AlignedFace, align_face, align_single_face, centred_face
from anonymize.faces.detect import Detector, DetectorSettings, create_detector, pose_model_present
from anonymize.faces.types import Face
from anonymize.io.decode import DecodedImage, ImageDecodeError, decode_image
from anonymize.io.manifest import FINISHED_STATUSES, readable
from anonymize.io.store import Location
from anonymize.io.walk import ImageFile
from anonymize.io.write import is_regular_file_in, output_path_for
from anonymize.faces.types import FaceCrop
from anonymize.run.config import Detection
from anonymize.weights import WeightsStore

PreviousRows = list[dict[str, Any]]  # an image's rows from earlier runs into the same folder


@dataclass
class Prepared:
    """One image after prepare: resumed, failed, without face, or with faces waiting for the method."""

    file: ImageFile
    sha256: str | None = None
    image: DecodedImage | None = None
    faces: list[Face] = field(default_factory=list)
    aligned: list[AlignedFace] = field(default_factory=list)
    seconds: float = 0.0  # time spent on this image so far (hash, decode, detect, align)
    error: str | None = None
    resumed: bool = False
    output_changed: bool = False  # an earlier run finished it, but its output's bytes changed since: redone
    warning: str | None = None  # printed by the run, the image still written (--aligned-lenient's extra faces)

    @property
    def needs_method(self) -> bool:
        return self.error is None and not self.resumed and bool(self.faces)

    def crops(self) -> list[FaceCrop]:
        return [FaceCrop(aligned.crop, aligned.landmarks, f"{self.file.relpath}#{index}")
                for index, aligned in enumerate(self.aligned)]

    def method_crops(self) -> list[FaceCrop]:
        """The crops the method must see (none when the image is resumed, failed or has no face)."""
        return self.crops() if self.needs_method else []


RESUME_NEW = "new"  # not finished by an earlier run (or its output is missing): process it
RESUME_DONE = "done"  # finished, every output in place with the bytes it was written with: skip it
RESUME_CHANGED = "changed"  # finished, but an output's bytes are no longer the ones written: redo it


@dataclass(frozen=True)
class ResumePolicy:
    """Which images an earlier run finished: same source hash, every output still in place and unchanged.

    An output is trusted only if its bytes hash to the ``output_sha256`` its row recorded. Rows from
    manifests written before that column have no hash: their output is hashed too, and one whose bytes
    are its source's (the original copied or hard-linked back) is redone; any other is trusted.
    """

    resume: bool
    output_dir: Location

    def already_done(self, digest: str, rows: PreviousRows | None) -> bool:
        return self.verdict(digest, rows) == RESUME_DONE

    def verdict(self, digest: str, rows: PreviousRows | None) -> str:
        """:data:`RESUME_DONE`, :data:`RESUME_CHANGED` or :data:`RESUME_NEW` for a source hashing to ``digest``."""
        if not self.resume or not rows:
            return RESUME_NEW
        if any(row["status"] not in FINISHED_STATUSES or row["source_sha256"] != digest for row in rows):
            return RESUME_NEW
        out = self.output_dir
        recorded: dict[str, str | None] = {}
        for row in rows:
            if row["output_path"]:
                recorded[row["output_path"]] = recorded.get(row["output_path"]) or row.get("output_sha256")
        for output, expected in recorded.items():
            path = output_path_for(out, PurePosixPath(output))
            if not is_regular_file_in(out, path):
                return RESUME_NEW
            actual = file_sha256(path)
            if actual is None:
                return RESUME_NEW
            changed = actual != expected if expected else actual == digest  # no hash recorded: the original put back
            if changed:
                return RESUME_CHANGED
        return RESUME_DONE


def file_sha256(path: Location) -> str | None:
    """The sha256 of the file's bytes (None: it cannot be read)."""
    try:
        if isinstance(path, Path):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Preparer:
    """Hash, decode, detect and align; safe to call from any thread (one detector per thread)."""

    def __init__(self, detection: Detection, resume: ResumePolicy, crop_size: int, max_pixels: int,
                 weights_dir: Path | None, device: str, detector: Detector | None = None) -> None:
        self.detection = detection
        self.resume = resume
        self.crop_size = crop_size
        self.max_pixels = max_pixels
        self.weights_dir = weights_dir
        self.device = device
        self._given = detector  # the driver's own detector, used by the main thread
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"]
        state["_given"] = None  # models never travel: each process builds its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def detector(self) -> Detector | None:
        """This thread's detector (the driver's own on the main thread)."""
        if self._given is not None and threading.current_thread() is threading.main_thread():
            return self._given
        if not hasattr(self._local, "detector"):
            self._local.detector = build_detector(self.detection, WeightsStore(self.weights_dir), self.device)
        return self._local.detector

    def prepare(self, file: ImageFile, previous: PreviousRows | None = None) -> Prepared:
        """One image; ``previous``: its rows from earlier runs (resume)."""
        started = time.perf_counter()
        shown = readable(str(file.relpath))
        try:
            data = file.path.read_bytes()  # read once: hashed and decoded from the same bytes (local or URI)
        except OSError as exc:
            return Prepared(file, error=f"{shown}: cannot read ({exc.strerror or exc})", seconds=time.perf_counter() - started)
        digest = hashlib.sha256(data).hexdigest()
        verdict = self.resume.verdict(digest, previous)
        if verdict == RESUME_DONE:
            return Prepared(file, digest, resumed=True)
        prepared = self._prepare(file, data, digest, shown, started)
        prepared.output_changed = verdict == RESUME_CHANGED
        return prepared

    def _prepare(self, file: ImageFile, data: bytes, digest: str, shown: str, started: float) -> Prepared:
        try:
            image = decode_image(data, self.max_pixels, display_name=shown)
            detector = self.detector()
            if self.detection.aligned:
                faces, aligned, extra = self._aligned_faces(image.rgb, detector)
                if extra and not self.detection.aligned_lenient:
                    return Prepared(file, digest, image, error=aligned_contract_broken(shown, extra + 1),
                                    seconds=time.perf_counter() - started)
                warning = aligned_contract_broken(shown, extra + 1, lenient=True) if extra else None
                return Prepared(file, digest, image, faces, aligned, time.perf_counter() - started, warning=warning)
            else:
                faces = detector.detect(image.rgb)  # type: ignore[union-attr]
                aligned = [align_face(image.rgb, face.landmarks, self.crop_size) for face in faces]
        except ImageDecodeError as exc:
            return Prepared(file, digest, error=str(exc), seconds=time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - any failure of one image must not stop the run
            return Prepared(file, digest, error=f"{shown}: detection failed ({type(exc).__name__}: {exc})",
                            seconds=time.perf_counter() - started)
        return Prepared(file, digest, image, faces, aligned, time.perf_counter() - started)

    def _aligned_faces(self, rgb: np.ndarray, detector: Detector | None) -> tuple[list[Face], list[AlignedFace], int]:
        """--aligned: the centred face cropped as aligned input, then any other face the detector found,
        aligned the ordinary way (only --aligned-lenient uses them); and how many others there are.
        The detector runs on every image so that a group photo given as --aligned is never half anonymized."""
        height, width = rgb.shape[:2]
        found = detector.detect(rgb) if detector is not None else []
        centre = centred_face(found, rgb.shape)
        face = centre if self.detection.framing != "ffhq" else None  # an FFHQ-framed square is used whole
        single = align_single_face(rgb, None if face is None else face.landmarks, self.crop_size, self.detection.framing)
        if face is None:
            face = Face((0.0, 0.0, float(width), float(height)), 1.0, np.zeros((0, 2), np.float32))
        others = [other for other in found if other is not centre]
        faces = [face, *others]
        aligned = [single, *(align_face(rgb, other.landmarks, self.crop_size) for other in others)]
        return faces, aligned, len(others)


def aligned_contract_broken(shown: str, count: int, lenient: bool = False) -> str:
    """The one line for an --aligned image in which the detector found more than one face."""
    if lenient:
        return (f"{shown}: {count} faces found, but --aligned means one centred face per image; "
                f"the {count - 1} other {'face was' if count == 2 else 'faces were'} anonymized the ordinary way "
                f"(--aligned-lenient)")
    return (f"{shown}: {count} faces found, but --aligned means one centred face per image, so only the centre one "
            f"would be anonymized; run without --aligned, or with --aligned-lenient to anonymize the others the ordinary way")


def heads_on(detection: Detection, weights: WeightsStore) -> bool:
    """--heads on, or auto with --recall-first when MoveNet is in the weights folder (on without it is an error then)."""
    if detection.heads == "auto":
        return detection.recall_first and pose_model_present(weights)
    return detection.heads == "on"


def build_detector(detection: Detection, weights: WeightsStore, device: str) -> Detector | None:
    """The run's detector (``detection.detector`` is already the one chosen), or --aligned's landmark detector."""
    if detection.aligned:  # --aligned-ffhq too: its squares are used whole, but the faces are still counted
        return _landmark_detector(detection.detector, weights, DetectorSettings(detection.threshold, detection.min_face, device))
    # auto and --recall-first also pad the frame and search the mirror (faces cut by the frame: benchmarks/crowd.py)
    settings = DetectorSettings(detection.threshold, detection.min_face, device, detection.recall_first,
                                augment=detection.searches_augmented, heads=heads_on(detection, weights))
    return create_detector(detection.detector, weights, settings)


def _landmark_detector(name: str, weights: WeightsStore, settings: DetectorSettings) -> Detector | None:
    """For --aligned input: the run's detector finds the landmarks of the one face and counts the faces (auto and ensemble:
    RetinaFace, never downloaded here); if it cannot be built (missing weights), dlib's HOG (weights in
    an installed package); else None (CelebA template)."""
    first = "retinaface" if name in ("auto", "ensemble") else name
    for candidate in dict.fromkeys([first, "dlib-hog"]):
        try:
            return create_detector(candidate, weights, settings)
        except Exception:  # noqa: BLE001 - landmarks are optional here: the template stands in
            continue
    return None
