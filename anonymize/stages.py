"""The run's stages as plain functions over explicit inputs: prepare, anonymize, finish, record.

Every executor (serial, the local worker pool, Ray) composes these same functions; none keeps
anything between calls except model caches, so any stage of any image can run in any thread,
process or node, and a stage that is run twice (a retried Ray task) gives the same result:

- :meth:`Stages.prepare` (CPU): hash, resume check, decode, detect, align -> :class:`Prepared`;
- :meth:`Stages.anonymize` (the method's device): a batch of prepared images -> anonymized crops;
- :meth:`Stages.finish` (CPU): paste back, encode, write atomically -> :class:`Finished` (its rows);
- record: the executor appends a batch's rows as one manifest part and adds up the counts.

:class:`RunFacts` is everything the stages need besides the models; it is small and picklable, so
a Ray worker rebuilds its detector and method from it once and keeps them (``model cache``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from anonymize.faces.align import AlignedFace, align_aligned_input, align_face
from anonymize.faces.detect import Detector, DetectorSettings, create_detector
from anonymize.faces.paste import Region, paste_face, replace_whole
from anonymize.faces.types import Face
from anonymize.io.decode import DecodedImage, ImageDecodeError, decode_image
from anonymize.io.manifest import FINISHED_STATUSES, STATUS_DONE, STATUS_ERROR, STATUS_NO_FACE, WORK_DIR_NAME, readable
from anonymize.io.store import Location
from anonymize.io.walk import ImageFile
from anonymize.io.write import is_regular_file_in, output_path_for, render_relpath, write_image
from anonymize.methods import FaceCrop, Method, MethodContext, create_method
from anonymize.weights import WeightsStore

if TYPE_CHECKING:
    from anonymize.pipeline import RunConfig

MAX_IMAGES_PER_BATCH = 64  # bounds memory when images have few faces
PLANS_DIR_NAME = "plan"  # <out>/.anonymize/plan/<method>/: dataset-level methods' plans


@dataclass(frozen=True)
class RunFacts:
    """What every stage needs to know about the run, fixed before the first image (picklable)."""

    config: RunConfig
    run_id: str
    method_params: str  # the method's describe() as JSON, for every manifest row
    device: str  # where the models run in this process
    crop_size: int  # the method's aligned crop size
    replaces_aligned_image: bool  # the method's choice for --aligned input
    expected_faces: int | None = None  # the size hint every copy of the method is built with
    default_region: str = "ellipse"  # the method's region when --region is not given


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

    @property
    def needs_method(self) -> bool:
        return self.error is None and not self.resumed and bool(self.faces)

    def crops(self) -> list[FaceCrop]:
        return [FaceCrop(aligned.crop, aligned.landmarks, f"{self.file.relpath}#{index}")
                for index, aligned in enumerate(self.aligned)]


# What the method gives an image: its anonymized faces (in face order), or why it failed.
MethodOutcome = list[Any] | str | None


@dataclass
class Finished:
    """One image after finish: its manifest rows and what it adds to the run's counts."""

    rows: list[dict[str, Any]]
    status: str  # "resumed", STATUS_DONE, STATUS_NO_FACE or STATUS_ERROR
    faces: int = 0
    error: str | None = None
    seconds: float = 0.0  # time spent in finish


class Stages:
    """The stage functions of one run; models are built lazily, once per thread (their caches)."""

    def __init__(self, facts: RunFacts, method: Method | None = None, detector: Detector | None = None) -> None:
        self.facts = facts
        self.config = facts.config
        self._given = (method, detector)  # the driver's own models, used by its first thread
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"facts": self.facts}  # models never travel: each process builds its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["facts"])  # type: ignore[misc]

    # -- model caches -----------------------------------------------------------------------------------
    def _cached(self, name: str, build: Callable[[], Any]) -> Any:
        if not hasattr(self._local, name):
            setattr(self._local, name, build())
        return getattr(self._local, name)

    def method(self) -> Method:
        """The method of this process (one per process: it may hold a device's memory and a fake bank)."""
        given = self._given[0]
        if given is not None:
            return given
        with _BUILD_LOCK:
            if self._given[0] is None:
                self._given = (build_method(self.config, self.facts.device, self.facts.expected_faces), self._given[1])
        return self._given[0]  # type: ignore[return-value]

    def detector(self) -> Detector | None:
        """This thread's detector (detectors keep per-call state, so threads never share one)."""
        if self._given[1] is not None and threading.current_thread() is threading.main_thread():
            return self._given[1]
        return self._cached("detector", lambda: build_detector(self.facts))

    def _recognizer(self) -> Any:
        from anonymize.metrics.identity import DlibRecognizer

        return self._cached("recognizer", lambda: DlibRecognizer(WeightsStore(self.config.weights_dir)))

    def region(self) -> Region:
        """What is pasted back: --region, else the method's default kind."""
        config = self.config
        return Region(config.region or self.facts.default_region, config.region_scale, config.feather)  # type: ignore[arg-type]

    # -- prepare ----------------------------------------------------------------------------------------
    def prepare(self, file: ImageFile, previous: list[dict[str, Any]] | None = None) -> Prepared:
        """Hash, decode, detect and align one image; ``previous``: its rows from earlier runs (resume)."""
        started = time.perf_counter()
        shown = readable(str(file.relpath))
        crop_size = self.facts.crop_size
        try:
            data = file.path.read_bytes()  # read once: hashed and decoded from the same bytes (local or URI)
        except OSError as exc:
            return Prepared(file, error=f"{shown}: cannot read ({exc.strerror or exc})", seconds=time.perf_counter() - started)
        digest = hashlib.sha256(data).hexdigest()
        if self.config.resume and previous and self._already_done(digest, previous):
            return Prepared(file, digest, resumed=True)
        try:
            image = decode_image(data, self.config.max_pixels, display_name=shown)
            detector = self.detector()
            if self.config.aligned:
                face, single = align_aligned_input(image.rgb, detector, crop_size, self.config.aligned_framing)
                faces, aligned = [face], [single]
            else:
                faces = detector.detect(image.rgb)  # type: ignore[union-attr]
                aligned = [align_face(image.rgb, face.landmarks, crop_size) for face in faces]
        except ImageDecodeError as exc:
            return Prepared(file, digest, error=str(exc), seconds=time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - any failure of one image must not stop the run
            return Prepared(file, digest, error=f"{shown}: detection failed ({type(exc).__name__}: {exc})",
                            seconds=time.perf_counter() - started)
        return Prepared(file, digest, image, faces, aligned, time.perf_counter() - started)

    def _already_done(self, digest: str, rows: list[dict[str, Any]]) -> bool:
        if any(row["status"] not in FINISHED_STATUSES or row["source_sha256"] != digest for row in rows):
            return False
        out = self.config.output_dir
        outputs = {row["output_path"] for row in rows if row["output_path"]}
        return all(is_regular_file_in(out, output_path_for(out, PurePosixPath(output))) for output in outputs)

    # -- anonymize --------------------------------------------------------------------------------------
    def anonymize(self, batch: list[Prepared]) -> list[MethodOutcome]:
        """The method on every face of the batch at once; if that fails, image by image to isolate the culprit."""
        return self.anonymize_crops([item.crops() for item in batch])

    def anonymize_crops(self, crops: list[list[FaceCrop]]) -> list[MethodOutcome]:
        """:meth:`anonymize` on the crops alone (what a Ray method actor receives: no decoded images)."""
        if self.config.dry_run:
            return [None for _ in crops]
        try:
            return _split(self._call_method([crop for image in crops for crop in image]), [len(image) for image in crops])
        except Exception:  # noqa: BLE001 - fall through to the image-by-image retry
            pass
        outcome: list[MethodOutcome] = []
        for image in crops:
            try:
                outcome.append(self._call_method(image))
            except Exception as exc:  # noqa: BLE001
                name = image[0].key.rpartition("#")[0]  # "<relative path>#<face index>"
                outcome.append(f"{readable(name)}: {self.config.method} failed ({type(exc).__name__}: {exc})")
        return outcome

    def _call_method(self, crops: list[FaceCrop]) -> list[Any]:
        method = self.method()
        size = self.config.batch_size or method.default_batch_size()
        results: list[Any] = []
        for start in range(0, len(crops), size):
            chunk = crops[start:start + size]
            out = method.anonymize(chunk)
            if len(out) != len(chunk):
                raise RuntimeError(f"method returned {len(out)} faces for {len(chunk)}")
            results.extend(out)
        return results

    # -- finish -----------------------------------------------------------------------------------------
    def finish(self, item: Prepared, outcome: MethodOutcome, method_seconds: float = 0.0) -> Finished:
        """Paste back, encode and write one image (or record why not) -> its rows."""
        started = time.perf_counter()
        shown = readable(str(item.file.relpath))
        if item.resumed:
            return Finished([], "resumed")
        if item.error is not None:
            return self._error(item, item.error, item.seconds)
        if not item.faces:
            return self._finish_without_face(item, started)
        if isinstance(outcome, str):
            return self._error(item, outcome, item.seconds + method_seconds)
        if self.config.dry_run or outcome is None:
            rows = self._face_rows(item, None, [{} for _ in item.faces], item.seconds / len(item.faces))
            return Finished(rows, STATUS_DONE, faces=len(item.faces))
        try:
            metrics = [dict(face.metrics) for face in outcome]
            composite = self._composite(item, [face.crop for face in outcome])
            if self.config.adversarial is not None:
                composite = self._perturb(item, composite, metrics)
            if self.config.identity_metric:
                self._add_identity_distance(item, composite, metrics)
            output = self._write(item, composite)
            self._write_renders(item, outcome)
        except Exception as exc:  # noqa: BLE001 - a write that fails is this image's error, not the run's
            return self._error(item, _write_failure(shown, exc), item.seconds + method_seconds)
        finish_seconds = time.perf_counter() - started
        seconds = item.seconds + method_seconds + finish_seconds
        rows = self._face_rows(item, output, metrics, seconds / len(item.faces))
        return Finished(rows, STATUS_DONE, faces=len(item.faces), seconds=finish_seconds)

    def _finish_without_face(self, item: Prepared, started: float) -> Finished:
        shown = readable(str(item.file.relpath))
        if self.config.on_no_face == "fail":
            return self._error(item, f"{shown}: no face detected (--on-no-face fail)", item.seconds)
        output = None
        if self.config.on_no_face == "copy" and not self.config.dry_run:
            try:
                output = self._write(item, item.image.rgb)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001
                return self._error(item, _write_failure(shown, exc), item.seconds + time.perf_counter() - started)
        finish_seconds = time.perf_counter() - started
        return Finished([self.row(item.file, item.sha256, item.image, STATUS_NO_FACE, output, item.seconds + finish_seconds)],
                        STATUS_NO_FACE, seconds=finish_seconds)

    def _error(self, item: Prepared, message: str, seconds: float) -> Finished:
        return Finished([self.row(item.file, item.sha256, item.image, STATUS_ERROR, None, seconds, error=message)],
                        STATUS_ERROR, error=message)

    def _composite(self, item: Prepared, crops: list[np.ndarray]) -> np.ndarray:
        result = item.image.rgb  # type: ignore[union-attr]
        region = self.region()
        for face, aligned, crop in zip(item.faces, item.aligned, crops):
            if aligned.whole_image and self.facts.replaces_aligned_image:
                return replace_whole(result, crop)
            box = face.box if len(face.landmarks) else None  # no box to cover when nothing was detected
            result = paste_face(result, crop, aligned, region, box)
        return result

    def _perturb(self, item: Prepared, composite: np.ndarray, metrics: list[dict[str, Any]]) -> np.ndarray:
        """Stage IV (``-p adversarial=``): perturb the final image against dlib's recogniser, before the write."""
        perturbed, added = self._cached("perturber", self._build_perturber).perturb(
            item.image.rgb, composite, [face.box for face in item.faces])  # type: ignore[union-attr]
        for face_metrics, figures in zip(metrics, added):
            face_metrics.update(figures)
        return perturbed

    def _build_perturber(self) -> Any:
        from anonymize.adversarial.attack import EnsembleAttack, Perturber
        from anonymize.adversarial.members import Geometry, open_members
        from anonymize.adversarial.plan import read_universal
        from anonymize.metrics.identity import DlibRecognizer

        settings = self.config.adversarial
        assert settings is not None
        weights = WeightsStore(self.config.weights_dir)
        recognizer = DlibRecognizer(weights, device=self.facts.device)
        universal = read_universal(adversarial_plan_dir(self.config), settings) if settings.kind == "uap" else None
        if settings.kind == "uap" and universal is None:
            raise RuntimeError("no universal perturbation stored for this run (pass 1 did not finish)")
        attack = EnsembleAttack(open_members(settings.ensemble, weights, self.facts.device), Geometry(weights), settings,
                                self.config.jpeg_quality)
        return Perturber(recognizer, attack, settings, universal, aligned=self.config.aligned)

    def _add_identity_distance(self, item: Prepared, composite: np.ndarray, metrics: list[dict[str, Any]]) -> None:
        from anonymize.metrics.identity import distance

        recognizer = self._recognizer()
        boxes = [face.box for face in item.faces]
        before = recognizer.descriptors(item.image.rgb, boxes)  # type: ignore[union-attr]
        after = recognizer.descriptors(composite, boxes)
        for face_metrics, value in zip(metrics, distance(before, after)):
            face_metrics["identity_distance_dlib"] = float(value)

    def _write(self, item: Prepared, rgb: np.ndarray) -> str:
        out = self.config.output_dir
        write_image(item.image, rgb, output_path_for(out, item.file.relpath), self.config.jpeg_quality, root=out)
        return str(item.file.relpath)

    def _write_renders(self, item: Prepared, outcome: list[Any]) -> None:
        """Each further rendering (label) of the image's faces, beside the main output; a face without
        that label keeps its main crop."""
        labels = list(dict.fromkeys(label for face in outcome for label in face.renders))
        out = self.config.output_dir
        for label in labels:
            composite = self._composite(item, [face.renders.get(label, face.crop) for face in outcome])
            relpath = render_relpath(item.file.relpath, label)
            write_image(item.image, composite, output_path_for(out, relpath), self.config.jpeg_quality, root=out)  # type: ignore[arg-type]

    # -- manifest rows ----------------------------------------------------------------------------------
    def row(self, file: ImageFile, digest: str | None, image: DecodedImage | None, status: str,
            output: str | None, seconds: float, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": self.facts.run_id,
            "source_path": str(file.relpath),
            "output_path": output,
            "source_sha256": digest,
            "width": int(image.rgb.shape[1]) if image is not None else None,
            "height": int(image.rgb.shape[0]) if image is not None else None,
            "method": self.config.method,
            "method_params": self.facts.method_params,
            "status": status,
            "seconds": round(seconds, 4),
            "note": image.note if image is not None else None,
            **extra,
        }

    def _face_rows(self, item: Prepared, output: str | None, metrics: list[dict[str, Any]],
                   seconds: float) -> list[dict[str, Any]]:
        return [
            self.row(item.file, item.sha256, item.image, STATUS_DONE, output, seconds, face_index=index,
                     box=[float(v) for v in face.box], det_score=float(face.score),
                     landmarks=[float(v) for v in np.asarray(face.landmarks).reshape(-1)], **face_metrics)
            for index, (face, face_metrics) in enumerate(zip(item.faces, metrics))
        ]


_BUILD_LOCK = threading.Lock()


def build_method(config: RunConfig, device: str, expected_faces: int | None = None) -> Method:
    """The run's method on ``device`` (the driver builds it before the stage facts exist)."""
    context = MethodContext(
        weights=WeightsStore(config.weights_dir),
        device=device,
        seed=config.seed,
        margin=config.margin,
        batch_size=config.batch_size,
        aligned_input=config.aligned,
        output_dir=None if config.dry_run else config.output_dir,
        expected_faces=expected_faces,
        plan_dir=None if config.dry_run else config.output_dir / WORK_DIR_NAME / PLANS_DIR_NAME / config.method,
        identity_from=config.identity_from,
    )
    return create_method(config.method, context, config.method_options)


def adversarial_plan_dir(config: RunConfig) -> Location:
    """Where ``-p adversarial=uap`` keeps the run's universal perturbation (a resumed run reuses it)."""
    return config.output_dir / WORK_DIR_NAME / PLANS_DIR_NAME / "adversarial-uap"


def build_detector(facts: RunFacts) -> Detector | None:
    """The run's detector (``config.detector`` is already the one chosen), or --aligned's landmark detector."""
    config = facts.config
    weights = WeightsStore(config.weights_dir)
    if config.aligned:
        if config.aligned_framing == "ffhq":
            return None
        return _landmark_detector(config.detector, weights, DetectorSettings(config.det_threshold, config.min_face, facts.device))
    settings = DetectorSettings(config.det_threshold, config.min_face, facts.device, config.recall_first)
    return create_detector(config.detector, weights, settings)


def _landmark_detector(name: str, weights: WeightsStore, settings: DetectorSettings) -> Detector | None:
    """For --aligned input: the run's detector finds the landmarks of the one face (auto and ensemble:
    RetinaFace, never downloaded here); if it cannot be built (missing weights), dlib's HOG (weights in
    an installed package); else None (CelebA template)."""
    first = "retinaface" if name in ("auto", "ensemble") else name
    for candidate in dict.fromkeys([first, "dlib-hog"]):
        try:
            return create_detector(candidate, weights, settings)
        except Exception:  # noqa: BLE001 - landmarks are optional here: the template stands in
            continue
    return None


def _write_failure(shown: str, exc: Exception) -> str:
    """One line for an output that could not be written (disk full, name too long, a link in the way)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{shown}: writing the output failed ({exc.strerror})"
    return f"{shown}: writing the output failed ({type(exc).__name__}: {exc})"


def _split(results: list[Any], counts: list[int]) -> list[MethodOutcome]:
    out: list[MethodOutcome] = []
    start = 0
    for count in counts:
        out.append(results[start:start + count])
        start += count
    return out
